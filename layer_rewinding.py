"""Layer rewinding - put an earlier epoch's weights into one layer group of the final model.

python layer_rewinding.py [--config F] [section.key=value ...]
"""

from utils.cli import run_script
from utils.localization.methods import run_layer_rewinding

if __name__ == "__main__":
    run_script(run_layer_rewinding, "configs/localization/digits.yaml", __doc__)

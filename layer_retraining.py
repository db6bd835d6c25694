"""Layer retraining - reset one layer group and retrain it alone on the clean examples.

python layer_retraining.py [--config F] [section.key=value ...]
"""

from utils.cli import run_script
from utils.localization.methods import run_layer_retraining

if __name__ == "__main__":
    run_script(run_layer_retraining, "configs/localization/digits.yaml", __doc__)

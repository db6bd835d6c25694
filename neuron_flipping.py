"""Neuron flipping - zero units until a training example's prediction leaves its given label.

python neuron_flipping.py [--config F] [section.key=value ...]
"""

from utils.cli import run_script
from utils.localization.flipping import run_neuron_flipping

if __name__ == "__main__":
    run_script(run_neuron_flipping, "configs/localization/digits.yaml", __doc__)

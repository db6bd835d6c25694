"""Example-tied dropout - train with per-example memorization units, evaluate in test and drop modes.

python example_tied_dropout.py [--config F] [section.key=value ...]
"""

import utils.curvature.scoring  # noqa: F401  (registers the online scorer: score.online=true)
from utils.cli import run_script
from utils.localization.methods import run_example_tied_dropout

if __name__ == "__main__":
    run_script(run_example_tied_dropout, "configs/localization/digits_etd.yaml", __doc__)

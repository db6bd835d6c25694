"""The regime curve of a scored run (mislabel AUROC of curvature, cumulative loss and Confident Learning up to each
epoch, with the clean / memorized / test accuracy): python regime_curve.py run=NAME [analysis.key=value ...]"""

import utils.localization  # noqa: F401  (registers example-tied dropout: runs with model.etd_p_mem > 0)
from utils.cli import run_script
from utils.curvature.regime import main

if __name__ == "__main__":
    run_script(main, "configs/digits.yaml", __doc__)

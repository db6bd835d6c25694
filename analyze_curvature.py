"""AUROC/AUPRC of curvature vs baselines + figures: python analyze_curvature.py run=NAME [section.key=value ...]"""

import utils.localization  # noqa: F401  (registers example-tied dropout: runs with model.etd_p_mem > 0)
from utils.cli import run_script
from utils.curvature.analysis import main

if __name__ == "__main__":
    run_script(main, "configs/digits.yaml", __doc__)

"""Feldman–Zhang memorization (M models on random subsets): python fz_memorization.py run=NAME [analysis.fz_models=200 ...]"""

import utils.localization  # noqa: F401  (registers example-tied dropout: runs with model.etd_p_mem > 0)
from utils.cli import run_script
from utils.curvature.memorization import main

if __name__ == "__main__":
    run_script(main, "configs/digits.yaml", __doc__)

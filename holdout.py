"""Out-of-sample probabilities of a trained run: models of its recipe trained on part of the data predict the rest.
python holdout.py run=<run> [holdout.key=value ...]   (torchrun-able; resumable: killed and rerun, it continues)"""

import utils.localization  # noqa: F401  (registers example-tied dropout: runs with model.etd_p_mem > 0)
from utils.cli import run_script
from utils.holdout.stage import main

if __name__ == "__main__":
    run_script(main, "configs/digits.yaml", __doc__)

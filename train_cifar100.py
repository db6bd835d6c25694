"""Train on cifar100 with per-epoch checkpoints: python train_cifar100.py [--config F] [section.key=value ...]"""

import utils.curvature.scoring  # noqa: F401  (registers the online scorer: score.online=true)
import utils.localization  # noqa: F401  (registers example-tied dropout: runs with model.etd_p_mem > 0)
from utils.cli import run_script
from utils.train import main

if __name__ == "__main__":
    run_script(main, "configs/cifar100.yaml", __doc__)

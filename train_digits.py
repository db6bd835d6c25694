"""Train on digits with per-epoch checkpoints: python train_digits.py [--config F] [section.key=value ...]"""

from utils.cli import run_script
from utils.train import main

if __name__ == "__main__":
    run_script(main, "configs/digits.yaml", __doc__)

"""Train on cifar100 with per-epoch checkpoints: python train_cifar100.py [--config F] [section.key=value ...]"""

from utils.cli import run_script
from utils.train import main

if __name__ == "__main__":
    run_script(main, "configs/cifar100.yaml", __doc__)

"""Train on cifar10 with per-epoch checkpoints: python train_cifar10.py [--config F] [section.key=value ...]"""

from utils.cli import run_script
from utils.train import main

if __name__ == "__main__":
    run_script(main, "configs/cifar10.yaml", __doc__)

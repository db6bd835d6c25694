"""Train on MNIST with per-epoch checkpoints: python train_mnist.py [--config F] [section.key=value ...]"""

from utils.cli import run_script
from utils.train import main

if __name__ == "__main__":
    run_script(main, "configs/mnist.yaml", __doc__)

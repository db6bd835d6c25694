"""Score the input-loss curvature of every training sample at every saved epoch of a imagenet run:
python score_imagenet_checkpoint.py [--config F] [section.key=value ...]  (score.* keys; torchrun for several GPUs)"""

import utils.localization  # noqa: F401  (registers example-tied dropout: runs with model.etd_p_mem > 0)
from utils.cli import run_script
from utils.curvature.scoring import main

if __name__ == "__main__":
    run_script(main, "configs/imagenet.yaml", __doc__)

"""Gradient accounting - train a run recording the clean vs noisy gradient per layer group.

python gradient_accounting.py [--config F] [section.key=value ...]
"""

import utils.curvature.scoring  # noqa: F401  (registers the online scorer: score.online=true)
from utils.cli import run_script
from utils.localization.accounting import run_gradient_accounting

if __name__ == "__main__":
    run_script(run_gradient_accounting, "configs/localization/digits.yaml", __doc__)

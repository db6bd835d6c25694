"""Early spectral memorization grid: train every (label condition, seed) of `esm` and capture the
Hessian spectrum at `esm.steps` into <paths.scores>/esm/<run>/step_XXXXX.npz.

python esm_experiment.py [--config configs/esm/digits_mlp.yaml] [section.key=value ...]"""

from utils.cli import run_script
from utils.esm import run_grid

if __name__ == "__main__":
    run_script(run_grid, "configs/esm/digits_mlp.yaml", __doc__)

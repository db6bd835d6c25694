"""Early spectral memorization grid: train every (label condition, seed) of `esm` and capture the
Hessian spectrum at `esm.steps` into <paths.scores>/esm/<grid>/<condition>_s<seed>/step_XXXXX.npz, where
<grid> = <data set>[_sub<n>]_<model>[_w<width>][_<esm.name>]. Ends with the AUC of ESM, the threshold of the one
clean / memorizing rule (utils.spectral.rmt.classify) and its accuracy per step, and the paths written.

python esm_experiment.py [--config configs/esm/digits_mlp.yaml] [section.key=value ...]"""

import utils.curvature.scoring  # noqa: F401  (registers the online scorer: score.online=true)
import utils.localization  # noqa: F401  (registers example-tied dropout: runs with model.etd_p_mem > 0)
from utils.cli import run_script
from utils.spectral.esm import main_grid

if __name__ == "__main__":
    run_script(main_grid, "configs/esm/digits_mlp.yaml", __doc__)

"""ESM metric, AUC and the one clean / memorizing rule (utils.spectral.rmt.classify: top-3K participation
<= 1.3 K) of every captured spectrum under <paths.scores>/esm/ (every grid): writes summary.csv/.md,
esm_values.csv and figures there, prints the AUC of ESM, the threshold and its accuracy per (grid, step) and
the paths written.

python analyse_esm.py [--config configs/esm/digits_mlp.yaml] [section.key=value ...]"""

from utils.cli import run_script
from utils.spectral.esm import main_analyse

if __name__ == "__main__":
    run_script(main_analyse, "configs/esm/digits_mlp.yaml", __doc__)

"""ESM metric, null threshold and AUC of every captured spectrum under <paths.scores>/esm/:
writes summary.csv, esm_values.csv and figures there and prints the summary.

python analyse_esm.py [--config configs/esm/digits_mlp.yaml] [section.key=value ...]"""

from utils.cli import run_script
from utils.esm import main_analyse

if __name__ == "__main__":
    run_script(main_analyse, "configs/esm/digits_mlp.yaml", __doc__)

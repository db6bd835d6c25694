"""Which training examples did the network memorize? python memorization_report.py run=NAME [report.key=value ...]

Ranks every training sample of a trained and scored run, categorizes the suspects and writes
curv_scores/<run>/report/ (suspects.csv, figures, report.html); docs/report.md."""

from utils.cli import run_script
from utils.report.build import main

if __name__ == "__main__":
    run_script(main, "configs/digits.yaml", __doc__)

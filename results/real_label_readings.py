"""Where every score ranks the samples read by eye in a real-label run's report.

    python results/real_label_readings.py RUN results/<RUN>_top64.csv [--out results/<RUN>_readings]

The CSV holds the report's top suspects with a `reading` column written by a person (mislabeled / ambiguous /
unusual writing / clearly fine). For each score of the run (suspects.csv's score columns) this prints how many
of each reading sit in that score's top 1 % and their median rank. The readings were taken from the top of the
report's own ranking, so that ranking finds all of them by construction: the table says where the *other* scores
put the same images (e.g. the curvature paper's mean), not which score is best.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from utils.io import markdown_table, write_table  # noqa: E402
from utils.report.ranking import order  # noqa: E402
from utils.report.table import SCORE_COLUMNS  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run")
    ap.add_argument("readings")
    ap.add_argument("--scores", default=str(ROOT / "curv_scores"))
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    table = pd.read_csv(Path(args.scores) / args.run / "report" / "suspects.csv")
    with open(args.readings) as f:
        read = {int(r["index"]): r["reading"] for r in csv.DictReader(f)}
    kinds = [k for k in ("mislabeled", "ambiguous", "unusual writing", "unusual", "clearly fine") if k in read.values()]
    n = len(table)
    top = max(1, round(0.01 * n))
    pos = {i: p for p, i in enumerate(table["index"].to_numpy())}
    rows = []
    for score in ["report_score", *[s for s in SCORE_COLUMNS if s in table]]:
        v = table[score].to_numpy(np.float64)
        rank = np.empty(n, np.int64)
        rank[order(v)] = np.arange(1, n + 1)
        row = {"score": score}
        for k in kinds:
            r = np.array([rank[pos[i]] for i, kk in read.items() if kk == k])
            row[f"{k} in top 1%"] = f"{int((r <= top).sum())}/{len(r)}"
            row[f"{k} median rank"] = int(np.median(r))
        rows.append(row)
    print(f"{args.run}: {n} samples, top 1 % = {top}")
    print(markdown_table(rows))
    if args.out:
        print("written: " + ", ".join(str(p) for p in write_table(args.out, rows)))


if __name__ == "__main__":
    main()

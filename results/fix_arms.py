"""Decision files for the fix table (RESULTS.md "Retrain on the fix"), in report.html's export format.

    python results/fix_arms.py --run ev_c10n_aggre [--out results/fix] [--seed 0]

From the run's report (curv_scores/<run>/report/suspects.csv), its top k suspects (k = report.top, 200, the page's
list):
- accept.csv: relabel each to its suggested class, blindly (those whose suggestion is the given label are kept);
- remove.csv: remove each;
- random.csv: k samples drawn at random, each relabelled to a random other class (the control).
Every file names the run (`from_run`), so data.labels keeps that run's labels elsewhere. The oracle arm needs no file:
the data set's own labels (noise.kind=none, no data.labels).
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

HEADER = ("index", "file", "label", "remove", "decision", "from_run", "from_identity")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True)
    ap.add_argument("--out", default="results/fix")
    ap.add_argument("--scores", default="curv_scores")
    ap.add_argument("--pretrained", default="pretrained")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--k", type=int, default=200)
    a = ap.parse_args()
    with open(Path(a.scores) / a.run / "report" / "suspects.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    ident = json.loads((Path(a.pretrained) / a.run / "run.json").read_text())["identity"]
    classes = json.loads((Path(a.pretrained) / a.run / "run.json").read_text())["data"]["classes"]
    chosen = sorted(rows, key=lambda r: int(r["rank"]))[:a.k]
    k = len(chosen)
    rng = np.random.default_rng(a.seed)
    by_index = sorted(rows, key=lambda r: int(r["index"]))
    rand = [by_index[i] for i in np.sort(rng.choice(len(rows), k, replace=False))]
    arms = {
        "accept": [(r, r["suggested_class"], 0, "relabel" if r["suggested_class"] != r["given_class"] else "keep")
                   for r in chosen],
        "remove": [(r, r["given_class"], 1, "remove") for r in chosen],
        "random": [(r, classes[(classes.index(r["given_class"]) + int(rng.integers(1, len(classes)))) % len(classes)],
                    0, "relabel") for r in rand],
    }
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, arm in arms.items():
        with open(out / f"{name}.csv", "w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(HEADER)
            w.writerows([(r["index"], r["source"], label, rm, d, a.run, ident) for r, label, rm, d in arm])
    wrong = sum(r["given_label"] != r.get("true_label", r["given_label"]) for r in chosen)
    fixed = sum(r.get("true_label") == r["suggested_label"] for r in chosen)
    changed = sum(r["suggested_class"] != r["given_class"] for r in chosen)
    print(f"top {k} of {a.run}'s report: {wrong} true errors, {changed} suggestions differ from the given label, "
          f"{fixed} equal the true label; "
          f"written: {', '.join(str(out / f'{n}.csv') for n in arms)}")


if __name__ == "__main__":
    main()

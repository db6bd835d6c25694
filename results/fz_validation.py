"""The memorization score p_in - p_out against Feldman & Zhang's 200-model estimate on digits (the ground truth the
curvature paper validates against), beside curvature's and the training-dynamics scores'.

    python fz_memorization.py run=ev_digits_symmetric_s0
    python holdout.py run=ev_digits_symmetric_s0 holdout.name=s8 holdout.scheme=subsets holdout.models=8 holdout.fraction=0.7
    python results/fz_validation.py --run ev_digits_symmetric_s0     # -> results/fz_validation.csv / .md

Spearman correlation over all samples and the overlap of the top-k sets (k = 50, 135 = the number of noisy labels,
300) with FZ's mem (p_in - p_out of correctness, 200 MLPs on random 70 % subsets).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from utils.config import load_config  # noqa: E402
from utils.curvature.memorization import similarity  # noqa: E402
from utils.io import load_npz, markdown_table, write_table  # noqa: E402
from utils.metrics import ranked  # noqa: E402
from utils.report.build import load_inputs  # noqa: E402
from utils.runs import open_run  # noqa: E402

SHOWN = ("memorization", "curvature", "cumulative_loss", "in_confidence", "learning_time", "confident_learning")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="ev_digits_symmetric_s0")
    ap.add_argument("--out", default=str(ROOT / "results/fz_validation"))
    a = ap.parse_args()
    rows = []
    for name, label in (("", "2 folds (default)"), ("s8", "8 subsets of 70 %")):
        cfg = load_config(None, [f"run={a.run}", f"report.holdout={name}"])
        run = open_run(cfg)
        got = load_inputs(run, progress=False)
        fz = load_npz(run.scores / "fz_memorization.npz")["mem"][np.asarray(got["curv"]["index"])]
        for sid in SHOWN:
            if name and sid not in ("memorization", "confident_learning"):
                continue
            v = got["scores"][sid]
            sim = similarity(fz, v)
            row = {"score": sid, "holdout": label if from_holdout(sid) else "-", "spearman": sim["spearman"],
                   "pearson": sim["pearson"]}
            for k in (50, 135, 300):
                top_fz, top_v = set(ranked(np.nan_to_num(fz, nan=-1))[:k]), set(ranked(v)[:k])
                row[f"top{k}_overlap"] = len(top_fz & top_v) / k
            rows.append(row)
    paths = write_table(a.out, rows)
    print(markdown_table(rows))
    print("written: " + ", ".join(str(p) for p in paths))


def from_holdout(sid: str) -> bool:
    return sid in ("memorization", "confident_learning")


if __name__ == "__main__":
    main()

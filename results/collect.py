"""Collect analysed runs into one machine-readable table and copy their figures into results/.

    python results/collect.py --out results/cifar10_dev_paper.csv RUN [RUN ...] [--scores curv_scores]

For every run: its `curv_scores/<run>/analysis/auroc.csv` (written by analyze_curvature.py) becomes rows
`run,noise_kind,noise_rate,noise_seed,score,auroc,auprc,target` (score rows only, not the per-epoch rows; `score`
is the stable identifier: `curvature` is the default curvature score, `confident_learning` Confident Learning;
`noise_kind` is `duplicates` for a run with injected duplicates and no other noise, where `target` is `duplicate`
or `duplicate_pair`), and its figures are copied to results/<run>_<figure>.png.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from utils.io import load_npz, read_table, write_table  # noqa: E402

FIGURES = ("roc", "roc_duplicates", "auroc_vs_epoch", "curvature_epochs", "curvature_hist", "topk_curvature", "regime",
           "duplicate_pairs")


def rows_of(scores: Path, run: str) -> list[dict]:
    sc = load_npz(scores / run / "curvature.npz", f"score {run} first")
    dup_only = bool(sc["is_duplicate"].any()) and str(sc["noise_kind"]) == "none"
    kind = "duplicates" if dup_only else str(sc["noise_kind"])
    out = []
    for r in read_table(scores / run / "analysis" / "auroc.csv"):
        if r["group"] != "score":
            continue
        out.append({"run": run, "noise_kind": kind, "noise_rate": float(sc["noise_rate"]),
                    "noise_seed": int(sc["noise_seed"]), "score": r["score"], "auroc": float(r["auroc"]),
                    "auprc": float(r["auprc"]), "target": r["target"]})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--out", required=True)
    ap.add_argument("--scores", default=str(ROOT / "curv_scores"))
    a = ap.parse_args()
    scores, rows, copied = Path(a.scores), [], []
    for run in a.runs:
        rows += rows_of(scores, run)
        for f in FIGURES:
            src = scores / run / "analysis" / f"{f}.png"
            if src.is_file():
                dst = ROOT / "results" / f"{run}_{f}.png"
                shutil.copyfile(src, dst)
                copied.append(dst)
    paths = write_table(Path(a.out).with_suffix(""), rows)
    print(f"{len(rows)} rows from {len(a.runs)} runs\nwritten: " + ", ".join(str(p) for p in paths + copied))


if __name__ == "__main__":
    main()

"""Collect analysed runs into one machine-readable table and copy their figures into results/.

    python results/collect.py --out results/cifar10_dev_paper.csv RUN [RUN ...] [--scores curv_scores]

For every run: its `curv_scores/<run>/analysis/auroc.csv` (written by analyze_curvature.py) becomes rows
`run,noise_kind,noise_rate,noise_seed,score,auroc,auprc,target` (score rows only, not the per-epoch rows; `score`
is the stable identifier: `curvature` is the default curvature score, `confident_learning` Confident Learning;
`noise_kind` is `duplicates` for a run with injected duplicates and no other noise, where `target` is `duplicate`
or `duplicate_pair`), and its figures are copied to results/<run>_<figure>.png.

`--variant NAME=DIR` (repeatable) adds the curvature rows of a second scoring of the same runs, e.g. the `exact`
estimator scored into another directory (`score_<dataset>_checkpoint.py run=R score.method=exact
paths.scores=curv_scores/exact`, then `analyze_curvature.py run=R paths.scores=curv_scores/exact`): its
`curvature*` rows enter as `curvature_<NAME>*` (`curvature` -> `curvature_exact`, `curvature_official` ->
`curvature_exact_official`), for the runs that DIR holds.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from utils.cli import report_error  # noqa: E402
from utils.errors import UserError  # noqa: E402
from utils.io import load_npz, read_table, write_table  # noqa: E402

FIGURES = ("roc", "roc_duplicates", "auroc_vs_epoch", "curvature_epochs", "curvature_hist", "topk_curvature", "regime",
           "duplicate_pairs")


def rows_of(scores: Path, run: str, variant: str = "") -> list[dict]:
    """The run's score rows; with `variant`, only its curvature rows, renamed curvature_<variant>*."""
    sc = load_npz(scores / run / "curvature.npz", f"score {run} first")
    dup_only = bool(sc["is_duplicate"].any()) and str(sc["noise_kind"]) == "none"
    kind = "duplicates" if dup_only else str(sc["noise_kind"])
    table = scores / run / "analysis" / "auroc.csv"
    if not table.is_file():
        raise UserError(f"{table} is missing: run `python analyze_curvature.py run={run} paths.scores={scores}` first")
    out = []
    for r in read_table(table):
        if r["group"] != "score" or (variant and not r["score"].startswith("curvature")):
            continue
        score = r["score"].replace("curvature", f"curvature_{variant}", 1) if variant else r["score"]
        out.append({"run": run, "noise_kind": kind, "noise_rate": float(sc["noise_rate"]),
                    "noise_seed": int(sc["noise_seed"]), "score": score, "auroc": float(r["auroc"]),
                    "auprc": float(r["auprc"]), "target": r["target"]})
    return out


def fail(msg: str) -> None:
    report_error(msg)
    sys.exit(2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--out", required=True)
    ap.add_argument("--scores", default=str(ROOT / "curv_scores"))
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=DIR")
    a = ap.parse_args()
    if any("=" not in v for v in a.variant):
        fail("--variant takes NAME=DIR, e.g. --variant exact=curv_scores/exact")
    variants = [tuple(v.split("=", 1)) for v in a.variant]
    scores, rows, copied = Path(a.scores), [], []
    for run in a.runs:
        try:
            rows += rows_of(scores, run)
            rows += [r for name, d in variants if (Path(d) / run / "curvature.npz").is_file()
                     for r in rows_of(Path(d), run, name)]
        except UserError as e:
            fail(str(e))
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

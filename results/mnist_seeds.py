"""Seed stability and conflicting duplicates on the MNIST recipe: one table over scored runs.

    python results/mnist_seeds.py RUN [RUN ...] [--epochs 0,4,8,12,16] [--out results/mnist_seeds]

Every RUN is scored (`curvature.npz`) and trained by this toolkit. So that runs scored at different strides compare,
the curvature scores are recomputed from the per-epoch estimates of the epochs in `--epochs` that every run scored
(the mean, the paper's score, and the median). Targets: `mislabeled` = symmetric-noise labels, with injected
duplicates left out of the evaluation (neither positive nor negative); `duplicate` = the injected conflicting copies
against the clean, non-duplicated samples (mislabeled samples left out: they are another target, and on a run with
both they would count as false positives of a duplicate detector that is right about them); `duplicate_all` = the
copies against every other sample. Writes <out>.csv / .md (run, noise_seed, model_seed, test_acc, noisy_acc,
target, score, n_pos, n_neg, auroc, auprc).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from utils.cli import report_error  # noqa: E402
from utils.config import load_config  # noqa: E402
from utils.curvature.analysis import baseline_scores, load_scores, stats_columns  # noqa: E402
from utils.errors import UserError  # noqa: E402
from utils.io import write_table  # noqa: E402
from utils.metrics import auprc, auroc  # noqa: E402
from utils.runs import open_run  # noqa: E402

BASELINES = ("cumulative_loss", "in_confidence", "loss_final")


def run_rows(name: str, epochs: list[int], paths: list[str]) -> list[dict]:
    run = open_run(load_config(None, [f"run={name}", *paths], explicit=False))
    sc, st = load_scores(run), run.stats()
    cols = stats_columns(st, sc["index"])
    ep = [int(e) for e in sc["epochs"]]
    missing = [e for e in epochs if e not in ep]
    if missing:
        raise UserError(f"run {name} has no curvature for epochs {missing}; pick --epochs from {ep}")
    pe = np.asarray(sc["per_epoch"], np.float64)[[ep.index(e) for e in epochs]]
    scores = {"curvature": pe.mean(0), "curvature_median": np.median(pe, 0)}
    scores.update({k: v for k, v in baseline_scores(st, cols).items() if k in BASELINES})
    dup = sc["is_duplicate"].astype(bool) if "is_duplicate" in sc else np.zeros(len(cols), bool)
    noisy = sc["is_noisy"].astype(bool) & ~dup
    targets = {}
    if noisy.any():
        targets["mislabeled"] = (noisy, ~dup)
    if dup.any():
        targets["duplicate"] = (dup, ~noisy)
        targets["duplicate_all"] = (dup, np.ones_like(dup))
    correct = np.asarray(st["correct"][-1], bool)[cols]
    head = {"run": name, "noise_seed": int(run.cfg["noise"]["seed"]), "model_seed": int(run.cfg["train"]["seed"]),
            "test_acc": round(float(st["test_acc"][-1]), 4), "noisy_acc": round(float(correct[noisy].mean()), 4)}
    rows = []
    for tid, (target, keep) in targets.items():
        for sid, s in scores.items():
            t, v = target[keep], s[keep]
            rows.append({**head, "target": tid, "score": sid, "n_pos": int(t.sum()), "n_neg": int((~t).sum()),
                         "auroc": round(auroc(v, t), 4), "auprc": round(auprc(v, t), 4)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--epochs", default="0,4,8,12,16")
    ap.add_argument("--out", default=str(ROOT / "results" / "mnist_seeds"))
    ap.add_argument("--pretrained", default="pretrained")
    ap.add_argument("--scores", default="curv_scores")
    a = ap.parse_args()
    epochs = [int(e) for e in a.epochs.split(",")]
    try:
        rows = [r for name in a.runs
                for r in run_rows(name, epochs, [f"paths.pretrained={a.pretrained}", f"paths.scores={a.scores}"])]
    except UserError as e:
        report_error(str(e))
        sys.exit(2)
    paths = write_table(Path(a.out), rows)
    for r in rows:
        if r["score"] == "curvature" or r["target"] != "duplicate_all":
            print(f"{r['run']:>16} {r['target']:>14} {r['score']:>17}: AUROC {r['auroc']:.4f}  AUPRC {r['auprc']:.4f}")
    print("written:", ", ".join(str(p) for p in paths))


if __name__ == "__main__":
    main()

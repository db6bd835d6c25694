"""MNIST beside CIFAR-10 dev: mislabel AUROC of curvature and of cumulative loss against test accuracy.

    python results/mnist_vs_cifar.py RUN [RUN ...] [--points results/regime_points.csv] [--out results/mnist_vs_cifar]

The test of the explanation of the CIFAR-10 gap (RESULTS.md): if curvature trails cumulative loss on CIFAR-10 dev
because the network does not generalize there, then where it generalizes *and* memorizes (full MNIST) the gap
should close. CIFAR-10 dev points come from `--points` (the regime points A-G: final test accuracy, noisy labels
memorized, AUROC per score); each RUN (an analysed MNIST run) adds its final point from its training statistics
and `curv_scores/<run>/analysis/auroc.csv`. Points with >= 90 % of the noisy labels memorized ("in the regime")
are filled, the others hollow. Writes <out>.csv / .md (dataset,run,test_acc,noisy_acc,score,auroc) and <out>.png.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from utils.config import load_config  # noqa: E402
from utils.io import plt, read_table, save_figure, write_table  # noqa: E402
from utils.runs import open_run  # noqa: E402

SCORES = {"curvature": "curvature (mean over epochs)", "cumulative_loss": "cumulative sample loss"}
REGIME = 0.9  # memorized fraction of the noisy labels that counts as "in the regime"


def run_rows(name: str, paths: list[str]) -> list[dict]:
    run = open_run(load_config(None, [f"run={name}", *paths], explicit=False))
    st = run.stats()
    noisy = np.asarray(st["is_noisy"], bool)
    test_acc, noisy_acc = float(st["test_acc"][-1]), float(np.asarray(st["correct"][-1], bool)[noisy].mean())
    table = {r["score"]: float(r["auroc"]) for r in read_table(run.scores / "analysis" / "auroc.csv")
             if r["group"] == "score" and r["target"] == "mislabeled"}
    return [{"dataset": str(run.record["dataset"]), "run": name, "test_acc": round(test_acc, 4),
             "noisy_acc": round(noisy_acc, 4), "score": s, "auroc": table[s]} for s in SCORES if s in table]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--points", default=str(ROOT / "results" / "regime_points.csv"))
    ap.add_argument("--out", default=str(ROOT / "results" / "mnist_vs_cifar"))
    ap.add_argument("--pretrained", default="pretrained")
    ap.add_argument("--scores", default="curv_scores")
    a = ap.parse_args()
    rows = [{"dataset": "cifar10_dev", "run": r["run"], "test_acc": float(r["test_acc"]),
             "noisy_acc": float(r["noisy_acc"]), "score": r["score"], "auroc": float(r["auroc"])}
            for r in read_table(Path(a.points)) if r["score"] in SCORES]
    for name in a.runs:
        rows += run_rows(name, [f"paths.pretrained={a.pretrained}", f"paths.scores={a.scores}"])
    fig, axes = plt().subplots(1, 3, figsize=(16, 4.4))
    colours = {"cifar10_dev": "tab:red", "mnist": "tab:blue", "digits": "tab:gray"}
    by = {(r["run"], r["score"]): r for r in rows}
    gaps = [{**r, "auroc": by[(r["run"], "cumulative_loss")]["auroc"] - r["auroc"]} for r in rows
            if r["score"] == "curvature" and (r["run"], "cumulative_loss") in by]
    panels = [(f"mislabel AUROC of {t}", [r for r in rows if r["score"] == s]) for s, t in SCORES.items()]
    panels.append(("gap: cumulative loss minus curvature (AUROC)", gaps))
    for ax, (title, pts) in zip(axes, panels):
        for r in pts:
            c = colours.get(r["dataset"], "tab:gray")
            inside = r["noisy_acc"] >= REGIME
            ax.scatter(r["test_acc"] * 100, r["auroc"], s=60, color=c if inside else "white", edgecolor=c, lw=1.5,
                       zorder=3)
            ax.annotate(r["run"].split(":")[0] if r["dataset"] != "mnist" else r["run"],
                        (r["test_acc"] * 100, r["auroc"]), textcoords="offset points", xytext=(5, 4), fontsize=7)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("test accuracy at the end of training (%)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("AUROC")
    axes[1].sharey(axes[0])
    for d in sorted({r["dataset"] for r in rows}):
        axes[2].scatter([], [], color=colours.get(d, "tab:gray"), label=d)
    axes[2].scatter([], [], color="white", edgecolor="k", label=f"hollow: < {REGIME:.0%} of noisy labels memorized")
    axes[2].legend(fontsize=7, loc="lower left")
    fig.suptitle("Does curvature catch up with the loss baseline where the network generalizes and memorizes?",
                 fontsize=10)
    paths = write_table(Path(a.out), rows) + [save_figure(fig, Path(a.out).with_suffix(".png"))]
    for r in rows:
        if r["dataset"] == "mnist":
            print(f"{r['run']}: test {r['test_acc']:.4f}, memorized {r['noisy_acc']:.4f}, {r['score']} AUROC "
                  f"{r['auroc']:.4f}")
    print("written: " + ", ".join(str(p) for p in paths))


if __name__ == "__main__":
    main()

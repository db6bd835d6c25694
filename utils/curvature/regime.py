"""The regime curve: in which training regime can curvature be trusted?

For every scored epoch e of a run: the mislabel AUROC of
- curvature as the running mean over the scored epochs 0..e (what `curvature.npz` would hold if training had
  stopped at e),
- cumulative sample loss over the epochs 1..e (the training statistics),
- Confident Learning with the softmax probabilities of the checkpoint of epoch e (where one is saved),
next to the clean accuracy and the memorized fraction (noisy examples predicted as their given label) and the test
accuracy at e. Writes `curv_scores/<run>/analysis/regime.csv` and `regime.png`; an optional table of other runs'
final points (`analysis.regime_points`: a CSV with columns run,test_acc,noisy_acc,score,auroc) is drawn in a
second panel.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..io import read_table, save_figure, write_table
from ..metrics import auroc
from ..runs import Run, open_run
from . import plots
from .analysis import SCORE_FILE, checkpoint_probabilities, confident_learning, load_scores

SERIES = {"curvature": "curvature (running mean)", "cumulative_loss": "cumulative sample loss",
          "confident_learning": "Confident Learning (probabilities of epoch e)"}


def regime_rows(run: Run, cl: bool = True) -> list[dict[str, Any]]:
    """One row per scored epoch: epoch, AUROC of each series (ids of `SERIES`), clean_acc, noisy_acc, test_acc."""
    sc = load_scores(run)
    stats = run.stats()
    noisy = sc["is_noisy"].astype(bool)
    per_epoch, epochs = sc["per_epoch"].astype(np.float64), sc["epochs"]
    running = np.cumsum(per_epoch, 0) / np.arange(1, len(epochs) + 1)[:, None]
    loss_cum = np.cumsum(stats["loss"].astype(np.float64), 0)
    saved = set(run.epochs)
    rows = []
    for k, e in enumerate(epochs):
        e = int(e)
        row: dict[str, Any] = {"epoch": e, "curvature": auroc(running[k], noisy)}
        s = np.flatnonzero(stats["epochs"] <= e)
        if len(s):
            i = s[-1]
            corr = stats["correct"][i]
            row.update(cumulative_loss=auroc(loss_cum[i], noisy), clean_acc=float(corr[~noisy].mean()),
                       noisy_acc=float(corr[noisy].mean()), test_acc=float(stats["test_acc"][i]))
        if cl and e in saved and e > 0:
            probs = checkpoint_probabilities(run, e, run.data.train_eval)
            row["confident_learning"] = auroc(confident_learning(sc["given_label"], probs[sc["index"]])["score"], noisy)
        rows.append(row)
    return rows


def figure(rows: list[dict[str, Any]], title: str, points: list[dict[str, Any]] | None = None):
    """Left: AUROC of each series vs epoch with clean / memorized / test accuracy on a second axis. Right (with
    `points`): final AUROC of each score against the memorized fraction, one marker per run."""
    plt = plots.plt
    ncols = 2 if points else 1
    fig, axes = plt.subplots(1, ncols, figsize=(7.5 * ncols, 4.8), squeeze=False, gridspec_kw={"wspace": 0.35})
    ax = axes[0, 0]
    for j, (sid, lab) in enumerate(SERIES.items()):
        pts = [(r["epoch"], r[sid]) for r in rows if sid in r and np.isfinite(r[sid])]
        if pts:
            e, a = zip(*pts)
            ax.plot(e, a, lw=2 if sid == "curvature" else 1.4, color=f"C{j}", label=lab)
    ax.set(xlabel="epoch e (scores computed from epochs <= e)", ylabel="mislabel AUROC", ylim=(0.45, 1.005), title=title)
    ax.axhline(0.5, ls=":", c="grey", lw=1)
    ax2 = ax.twinx()
    for key, lab, st in (("clean_acc", "clean train acc", "--"), ("noisy_acc", "noisy memorized", ":"),
                         ("test_acc", "test acc", "-.")):
        pts = [(r["epoch"], r[key]) for r in rows if key in r]
        if pts:
            e, a = zip(*pts)
            ax2.plot(e, a, ls=st, c="k", lw=1, alpha=0.7, label=lab)
    ax2.set(ylabel="accuracy", ylim=(0, 1.02))
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="lower right")
    if points:
        bx = axes[0, 1]
        markers = {"curvature": "o", "cumulative_loss": "s", "confident_learning": "^"}
        runs = list(dict.fromkeys(p["run"] for p in points))
        for i, name in enumerate(runs):
            for p in points:
                if p["run"] == name and p["score"] in markers:
                    bx.scatter(p["noisy_acc"], p["auroc"], marker=markers[p["score"]], color=f"C{i}", s=40)
            first = next(p for p in points if p["run"] == name)
            bx.annotate(f"{name}\n(test {first['test_acc']:.2f})", (first["noisy_acc"], first["auroc"]), fontsize=6,
                        xytext=(4, -10), textcoords="offset points")
        for sid, m in markers.items():
            bx.scatter([], [], marker=m, color="grey", label=SERIES[sid].split(" (")[0])
        bx.set(xlabel="noisy labels memorized at the end", ylabel="final mislabel AUROC", ylim=(0.45, 1.005),
               xlim=(-0.02, 1.02), title="one point per run (colour) and score (marker)")
        bx.legend(fontsize=7, loc="lower right")
    return fig


def write_regime(cfg: dict[str, Any]) -> tuple[list[dict[str, Any]], list[Path]]:
    """regime.csv + regime.png under curv_scores/<run>/analysis/; returns the rows and the paths."""
    run = open_run(cfg)
    a = run.cfg["analysis"]
    out = run.scores / "analysis"
    cached = out / "regime.csv"
    scores = run.scores / SCORE_FILE
    fresh = cached.is_file() and scores.is_file() and cached.stat().st_mtime > scores.stat().st_mtime
    rows = read_table(cached) if fresh else None  # newer than the scores: reuse (Confident Learning is slow)
    if rows is None or (a["regime_cl"] and not any("confident_learning" in r and r["confident_learning"] != ""
                                                      for r in rows)):
        rows = regime_rows(run, a["regime_cl"])
    rows = [{k: v for k, v in r.items() if v != ""} for r in rows]
    pts = read_table(a["regime_points"]) if a["regime_points"] else None
    paths = write_table(out / "regime", rows)
    paths.append(save_figure(figure(rows, f"regime curve: {run.name}", pts), out / "regime.png"))
    return rows, paths


def main(cfg: dict[str, Any]) -> None:
    """Entry point of regime_curve.py: the last epoch's AUROCs and accuracies, then the paths written."""
    rows, paths = write_regime(cfg)
    last = rows[-1]
    print(f"epoch {last['epoch']}: " + ", ".join(f"{k} {last[k]:.4f}" for k in (*SERIES, "clean_acc", "noisy_acc",
                                                                                   "test_acc") if k in last))
    print("written: " + ", ".join(str(p) for p in paths))

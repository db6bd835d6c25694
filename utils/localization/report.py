"""Figures (.png via `utils.io.save_figure`) of the localization methods, the markdown summary of
gradient accounting, and `load_results` for notebooks. Tables go through `utils.io.write_table`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..io import load_npz, markdown_table, plt, read_table, save_figure, write_text
from .selection import NAMES

if TYPE_CHECKING:
    from matplotlib.figure import Figure



def metrics(names: tuple[str, str] = NAMES) -> list[tuple[str, str]]:
    """(row key, label) of the three accuracies the figures show; `names` = (studied, reference)."""
    return [("noisy_acc", f"{names[0]} (given label)"), ("clean_acc", f"{names[1]} train"), ("test_acc", "test")]


METRICS = metrics()


def _symbols(names: tuple[str, str]) -> tuple[str, str]:
    """Subscripts of the two gradients: g_noisy / g_clean, or g_studied / g_reference under another selection."""
    return ("noisy", "clean") if tuple(names) == NAMES else ("studied", "reference")


def write_accounting_md(rows: list[dict[str, Any]], path: Path, n_epochs: int = 6, names: tuple[str, str] = NAMES,
                        head: str = "") -> Path:
    """Markdown summary of gradient accounting: per group, the noisy (studied) share of the gradient norm and
    the clean/noisy cosine at about `n_epochs` evenly spaced epochs; `head`: a line above the tables."""
    epochs = sorted({r["epoch"] for r in rows})
    pick = sorted({epochs[int(round(i))] for i in np.linspace(0, len(epochs) - 1, min(n_epochs, len(epochs)))})
    groups = list(dict.fromkeys(r["group"] for r in rows))
    at = {(r["group"], r["epoch"]): r for r in rows}
    share = {r["epoch"]: r["data_share"] for r in rows}
    text = head
    sn, rn = _symbols(names)
    for key, label in (("noisy_share", f"{sn} share |g_{sn}| / (|g_{rn}| + |g_{sn}|)"), ("cosine", f"cos(g_{rn}, g_{sn})")):
        table = [{"group": g, **{f"ep {e}": at[(g, e)][key] for e in pick}} for g in groups]
        if key == "noisy_share":
            table.append({"group": f"({names[0]} share of examples)", **{f"ep {e}": share[e] for e in pick}})
        text += f"**{label}**\n\n" + markdown_table(table) + "\n"
    return write_text(Path(path), text)


def plot_accounting(rows: list[dict[str, Any]], path: Path, names: tuple[str, str] = NAMES) -> Path:
    """Left: noisy (studied) examples' share of each group's gradient norm vs their share of the data, per epoch.
    Right: cosine between the clean (reference) and the noisy gradient."""
    sn, rn = _symbols(names)
    pyplot = plt()
    groups = list(dict.fromkeys(r["group"] for r in rows))
    fig, ax = pyplot.subplots(1, 2, figsize=(11, 4))
    cmap = pyplot.get_cmap("viridis")
    for j, g in enumerate(groups):
        rs = [r for r in rows if r["group"] == g]
        c = cmap(j / max(1, len(groups) - 1))
        ax[0].plot([r["epoch"] for r in rs], [r["noisy_share"] for r in rs], color=c, label=g)
        ax[1].plot([r["epoch"] for r in rs], [r["cosine"] for r in rs], color=c, label=g)
    ep = sorted({r["epoch"] for r in rows})
    share = {r["epoch"]: r["data_share"] for r in rows}
    ax[0].plot(ep, [share[e] for e in ep], "k--", label=f"{names[0]} share of examples")
    ax[0].set(xlabel="epoch", ylabel=f"|g_{sn}| / (|g_{rn}| + |g_{sn}|)", title=f"{names[0]} share of the gradient per layer")
    ax[1].axhline(0, color="k", lw=0.5)
    ax[1].set(xlabel="epoch", ylabel=f"cos(g_{rn}, g_{sn})", title=f"{names[1]} vs {names[0]} gradient direction")
    ax[0].legend(fontsize=6, ncol=2 if len(groups) > 8 else 1)
    return save_figure(fig, path)


def heatmap_figure(rows: list[dict[str, Any]], title: str, col_key: str = "epoch", col_label: str = "epoch",
                   names: tuple[str, str] = NAMES) -> Figure:
    """Heatmaps layer group x `col_key` of noisy (given label), clean-train and test accuracy (in %);
    `names` = (studied, reference) label the first two.

    Rows are labelled with the groups' layer names (`layer3.1.conv2`, `fc`), on every panel, columns
    with `col_label value`; the `(none)` row (the final model) goes into the panel titles."""
    pyplot = plt()
    body = [r for r in rows if r["group"] != "(none)"]
    base = next((r for r in rows if r["group"] == "(none)"), None)
    groups = [str(g) for g in dict.fromkeys(r["group"] for r in body)]
    cols = list(dict.fromkeys(r[col_key] for r in body))
    fig, axes = pyplot.subplots(1, 3, figsize=(3.2 * 3 + 1.5 * len(cols) + 1.5, 0.32 * len(groups) + 2),
                                constrained_layout=True)
    im = None
    for ax, (m, label) in zip(axes, metrics(names)):
        mat = np.full((len(groups), len(cols)), np.nan)
        for r in body:
            mat[groups.index(str(r["group"])), cols.index(r[col_key])] = r[m]
        im = ax.imshow(mat, vmin=0, vmax=1, cmap="magma", aspect="auto")
        for (i, j), v in np.ndenumerate(mat):
            if not math.isnan(v):
                ax.text(j, i, f"{100 * v:.0f}", ha="center", va="center", fontsize=6, color="w" if v < 0.6 else "k")
        ax.set_xticks(range(len(cols)), [f"{col_label} {c}" for c in cols], fontsize=7)
        ax.set_yticks(range(len(groups)), groups, fontsize=6)
        ref = f" (final {100 * base[m]:.0f}%)" if base else ""
        ax.set_title(f"{label}{ref}", fontsize=8)
    fig.colorbar(im, ax=axes, shrink=0.8, label="accuracy")
    fig.suptitle(title)
    return fig


def plot_rewinding(rows: list[dict[str, Any]], path: Path, title: str = "layer rewinding",
                   names: tuple[str, str] = NAMES) -> Path:
    """Heatmaps layer group x rewind epoch of noisy (given label), clean-train and test accuracy."""
    return save_figure(heatmap_figure(rows, title, names=names), path)


def retraining_figure(rows: list[dict[str, Any]], names: tuple[str, str] = NAMES) -> Figure:
    """Bars per layer group (labelled with its layer name): noisy examples still predicted with their given
    label after resetting the group and after retraining it alone on the clean examples; clean-train and
    test accuracy after retraining; the final model's noisy accuracy as a dashed line. `names` = (studied,
    reference): what "noisy" and "clean" stand for."""
    sn, rn = names
    pyplot = plt()
    body = [r for r in rows if r["group"] != "(none)"]
    base = next((r for r in rows if r["group"] == "(none)"), None)
    groups = [str(row["group"]) for row in body]
    x = np.arange(len(body))
    fig, ax = pyplot.subplots(figsize=(max(6, 0.45 * len(body) + 2), 4))
    w = 0.2
    ax.bar(x - 1.5 * w, [row["reset_noisy_acc"] for row in body], w, label=f"{sn} (given), group reset")
    ax.bar(x - 0.5 * w, [row["noisy_acc"] for row in body], w, label=f"{sn} (given), retrained")
    ax.bar(x + 0.5 * w, [row["clean_acc"] for row in body], w, label=f"{rn} train, retrained")
    ax.bar(x + 1.5 * w, [row["test_acc"] for row in body], w, label="test, retrained")
    if base:
        ax.axhline(base["noisy_acc"], color="k", ls="--", lw=0.8, label=f"{sn} (given), final model")
    ax.set_xticks(x, groups, rotation=60, ha="right", fontsize=7)
    ax.set(ylim=(0, 1.05), ylabel="accuracy", title=f"layer retraining on {rn} examples (other layers frozen)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    return fig


def plot_retraining(rows: list[dict[str, Any]], path: Path, names: tuple[str, str] = NAMES) -> Path:
    """The bars of `retraining_figure`."""
    return save_figure(retraining_figure(rows, names), path)


def plot_flipping(z: dict[str, np.ndarray], hist_path: Path, layers_path: Path, names: tuple[str, str] = NAMES) -> list[Path]:
    """Histogram of units needed to flip clean vs noisy examples; distribution of zeroed units over layers.
    `z["is_noisy"]` marks the studied examples; `names` = (studied, reference) label them."""
    pyplot = plt()
    cap = int(z["max_units"])
    fig, ax = pyplot.subplots(figsize=(6, 4))
    vals = {k: np.where(z["n_units"][s] < 0, cap + 1, z["n_units"][s]) for k, s in
            ((names[1], ~z["is_noisy"]), (names[0], z["is_noisy"]))}
    hi = max([1] + [int(v.max()) for v in vals.values() if len(v)])
    bins = np.unique(np.round(np.logspace(0, np.log10(hi + 1), 25)).astype(int))
    for k, v in vals.items():
        if len(v):
            ax.hist(v, bins=bins, alpha=0.6, label=f"{k} (median {np.median(v):g})")
    ax.set_xscale("log")
    ax.set(xlabel=f"units zeroed to flip the prediction ({cap + 1} = not flipped)", ylabel="examples",
           title="neuron flipping: units needed")
    ax.legend()
    paths = [save_figure(fig, hist_path)]

    names = [str(n) for n in z["group_names"]]
    fig, ax = pyplot.subplots(figsize=(max(6, 0.4 * len(names) + 2), 4))
    x = np.arange(len(names))
    for off, (k, sel) in zip((-0.2, 0.2), ((names[1], ~z["is_noisy"]), (names[0], z["is_noisy"]))):
        ex = np.flatnonzero(sel & z["flipped"])
        used = np.isin(z["unit_example"], ex)
        counts = np.bincount(z["unit_group"][used], minlength=len(names)).astype(float)
        ax.bar(x + off, counts / max(1.0, counts.sum()), 0.4, label=f"{k} ({int(counts.sum())} units, {len(ex)} examples)")
    ax.set_xticks(x, names, rotation=60, ha="right", fontsize=7)
    ax.set(ylabel="fraction of zeroed units", title="neuron flipping: layers of the zeroed units")
    ax.legend(fontsize=8)
    return paths + [save_figure(fig, layers_path)]


def plot_etd(rows: list[dict[str, Any]], path: Path, names: tuple[str, str] = NAMES) -> Path:
    """Grouped bars: clean-train, noisy (given label), noisy (true label) and test accuracy per mode."""
    pyplot = plt()
    bars_of = [("clean_acc", f"{names[1]} train"), ("noisy_acc", f"{names[0]} (given)"),
               ("noisy_true_acc", f"{names[0]} (true)"), ("test_acc", "test")]
    fig, ax = pyplot.subplots(figsize=(7, 4))
    x = np.arange(len(bars_of))
    w = 0.8 / len(rows)
    for i, r in enumerate(rows):
        vals = [r[m] for m, _ in bars_of]
        bars = ax.bar(x + (i - (len(rows) - 1) / 2) * w, vals, w, label=r["mode"])
        for b, v in zip(bars, vals):
            if not math.isnan(v):
                ax.text(b.get_x() + b.get_width() / 2, v + 0.01, f"{100 * v:.0f}", ha="center", fontsize=7)
    ax.set_xticks(x, [lab for _, lab in bars_of])
    ax.set(ylim=(0, 1.1), ylabel="accuracy", title="example-tied dropout: accuracy per evaluation mode")
    ax.legend(title="mode", loc="upper left", bbox_to_anchor=(1.01, 1))
    return save_figure(fig, path)


def load_results(directory: Path) -> dict[str, Any]:
    """Everything a run's localization folder holds: tables as row lists (by stem), arrays (by stem), and
    figure paths; a folder that does not exist (nothing computed yet) gives empty collections."""
    directory = Path(directory)
    out: dict[str, Any] = {"tables": {}, "arrays": {}, "figures": sorted(directory.glob("*.png"))}
    for p in sorted(directory.glob("*.csv")):
        out["tables"][p.stem] = read_table(p)
    for p in sorted(directory.glob("*.npz")):
        out["arrays"][p.stem] = load_npz(p)
    return out

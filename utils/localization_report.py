"""Tables (.csv + .md) and figures (.png, 150 dpi, matplotlib Agg) of the localization methods,
and `load_results` for notebooks."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import numpy as np

from .checkpoint import atomic_write

DPI = 150


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.2e}" if v != 0 and abs(v) < 1e-3 else f"{v:.4f}"
    return str(v)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """A GitHub markdown table of dict rows (columns: union of keys in first-seen order)."""
    if not rows:
        return "(no rows)\n"
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_table(stem: Path, rows: list[dict[str, Any]], markdown: bool = True) -> None:
    """Write `stem`.csv (and `stem`.md) atomically."""
    stem = Path(stem)
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    for r in rows:
        w.writerow({k: _fmt(v) if isinstance(v, float) else v for k, v in r.items()})
    text = buf.getvalue()
    atomic_write(stem.with_suffix(".csv"), lambda tmp: Path(tmp).write_text(text))
    if markdown:
        md = markdown_table(rows)
        atomic_write(stem.with_suffix(".md"), lambda tmp: Path(tmp).write_text(md))


def write_accounting_md(rows: list[dict[str, Any]], path: Path, n_epochs: int = 6) -> None:
    """Markdown summary of gradient accounting: per group, the noisy share of the gradient norm and the
    clean/noisy cosine at about `n_epochs` evenly spaced epochs."""
    epochs = sorted({r["epoch"] for r in rows})
    pick = sorted({epochs[int(round(i))] for i in np.linspace(0, len(epochs) - 1, min(n_epochs, len(epochs)))})
    groups = list(dict.fromkeys(r["group"] for r in rows))
    at = {(r["group"], r["epoch"]): r for r in rows}
    share = {r["epoch"]: r["data_share"] for r in rows}
    text = ""
    for key, label in (("noisy_share", "noisy share |g_noisy| / (|g_clean| + |g_noisy|)"), ("cosine", "cos(g_clean, g_noisy)")):
        table = [{"group": g, **{f"ep {e}": at[(g, e)][key] for e in pick}} for g in groups]
        if key == "noisy_share":
            table.append({"group": "(noisy share of examples)", **{f"ep {e}": share[e] for e in pick}})
        text += f"**{label}**\n\n" + markdown_table(table) + "\n"
    atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text))


def read_table(path: Path) -> list[dict[str, Any]]:
    """Rows of a .csv written by `write_table`, numbers parsed."""
    def conv(v: str) -> Any:
        for t in (int, float):
            try:
                return t(v)
            except ValueError:
                pass
        return {"True": True, "False": False}.get(v, v)

    with open(path, newline="") as f:
        return [{k: conv(v) for k, v in r.items()} for r in csv.DictReader(f)]


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    atomic_write(Path(path), lambda tmp: fig.savefig(tmp, dpi=DPI, format="png", bbox_inches="tight"))
    plt.close(fig)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_accounting(rows: list[dict[str, Any]], path: Path) -> None:
    """Left: noisy examples' share of each group's gradient norm vs their share of the data, per epoch.
    Right: cosine between the clean and the noisy gradient."""
    plt = _plt()
    groups = list(dict.fromkeys(r["group"] for r in rows))
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    cmap = plt.get_cmap("viridis")
    for j, g in enumerate(groups):
        rs = [r for r in rows if r["group"] == g]
        c = cmap(j / max(1, len(groups) - 1))
        ax[0].plot([r["epoch"] for r in rs], [r["noisy_share"] for r in rs], color=c, label=g)
        ax[1].plot([r["epoch"] for r in rs], [r["cosine"] for r in rs], color=c, label=g)
    ep = sorted({r["epoch"] for r in rows})
    share = {r["epoch"]: r["data_share"] for r in rows}
    ax[0].plot(ep, [share[e] for e in ep], "k--", label="noisy share of examples")
    ax[0].set(xlabel="epoch", ylabel="|g_noisy| / (|g_clean| + |g_noisy|)", title="noisy share of the gradient per layer")
    ax[1].axhline(0, color="k", lw=0.5)
    ax[1].set(xlabel="epoch", ylabel="cos(g_clean, g_noisy)", title="clean vs noisy gradient direction")
    ax[0].legend(fontsize=6, ncol=2 if len(groups) > 8 else 1)
    _save(fig, path)


def _heatmaps(rows: list[dict[str, Any]], path: Path, title: str, col_key: str = "epoch") -> None:
    plt = _plt()
    body = [r for r in rows if r["group"] != "(none)"]
    base = next((r for r in rows if r["group"] == "(none)"), None)
    groups = list(dict.fromkeys(r["group"] for r in body))
    cols = list(dict.fromkeys(r[col_key] for r in body))
    metrics = [("noisy_acc", "noisy (given label)"), ("clean_acc", "clean train"), ("test_acc", "test")]
    fig, axes = plt.subplots(1, 3, figsize=(3.2 * 3 + 1.5 * len(cols), 0.32 * len(groups) + 2))
    for ax, (m, label) in zip(axes, metrics):
        mat = np.full((len(groups), len(cols)), np.nan)
        for r in body:
            mat[groups.index(r["group"]), cols.index(r[col_key])] = r[m]
        im = ax.imshow(mat, vmin=0, vmax=1, cmap="magma", aspect="auto")
        for (i, j), v in np.ndenumerate(mat):
            ax.text(j, i, f"{100 * v:.0f}", ha="center", va="center", fontsize=6, color="w" if v < 0.6 else "k")
        ax.set_xticks(range(len(cols)), [f"{col_key} {c}" for c in cols], fontsize=7)
        ax.set_yticks(range(len(groups)), groups if ax is axes[0] else [""] * len(groups), fontsize=6)
        ref = f" (final {100 * base[m]:.0f}%)" if base else ""
        ax.set_title(f"{label}{ref}", fontsize=8)
    fig.colorbar(im, ax=axes, shrink=0.8, label="accuracy")
    fig.suptitle(title, y=1.04)
    _save(fig, path)


def plot_rewinding(rows: list[dict[str, Any]], path: Path, title: str = "layer rewinding") -> None:
    """Heatmaps group x rewind epoch of noisy (given label), clean-train and test accuracy."""
    _heatmaps(rows, path, title)


def plot_retraining(rows: list[dict[str, Any]], path: Path) -> None:
    """Bars per group: noisy examples still predicted with their given label after resetting the group
    and after retraining it alone on the clean examples; clean-train and test accuracy after retraining."""
    plt = _plt()
    body = [r for r in rows if r["group"] != "(none)"]
    base = next((r for r in rows if r["group"] == "(none)"), None)
    x = np.arange(len(body))
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(body) + 2), 4))
    w = 0.2
    ax.bar(x - 1.5 * w, [r["reset_noisy_acc"] for r in body], w, label="noisy (given), group reset")
    ax.bar(x - 0.5 * w, [r["noisy_acc"] for r in body], w, label="noisy (given), retrained")
    ax.bar(x + 0.5 * w, [r["clean_acc"] for r in body], w, label="clean train, retrained")
    ax.bar(x + 1.5 * w, [r["test_acc"] for r in body], w, label="test, retrained")
    if base:
        ax.axhline(base["noisy_acc"], color="k", ls="--", lw=0.8, label="noisy (given), final model")
    ax.set_xticks(x, [r["group"] for r in body], rotation=60, ha="right", fontsize=7)
    ax.set(ylim=(0, 1.05), ylabel="accuracy", title="layer retraining on clean examples (other layers frozen)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    _save(fig, path)


def plot_flipping(z: dict[str, np.ndarray], hist_path: Path, layers_path: Path) -> None:
    """Histogram of units needed to flip clean vs noisy examples; distribution of zeroed units over layers."""
    plt = _plt()
    cap = int(z["max_units"])
    fig, ax = plt.subplots(figsize=(6, 4))
    vals = {k: np.where(z["n_units"][s] < 0, cap + 1, z["n_units"][s]) for k, s in
            (("clean", ~z["is_noisy"]), ("noisy", z["is_noisy"]))}
    hi = max([1] + [int(v.max()) for v in vals.values() if len(v)])
    bins = np.unique(np.round(np.logspace(0, np.log10(hi + 1), 25)).astype(int))
    for k, v in vals.items():
        if len(v):
            ax.hist(v, bins=bins, alpha=0.6, label=f"{k} (median {np.median(v):g})")
    ax.set_xscale("log")
    ax.set(xlabel=f"units zeroed to flip the prediction ({cap + 1} = not flipped)", ylabel="examples",
           title="neuron flipping: units needed")
    ax.legend()
    _save(fig, hist_path)

    names = [str(n) for n in z["group_names"]]
    fig, ax = plt.subplots(figsize=(max(6, 0.4 * len(names) + 2), 4))
    x = np.arange(len(names))
    for off, (k, sel) in zip((-0.2, 0.2), (("clean", ~z["is_noisy"]), ("noisy", z["is_noisy"]))):
        ex = np.flatnonzero(sel & z["flipped"])
        used = np.isin(z["unit_example"], ex)
        counts = np.bincount(z["unit_group"][used], minlength=len(names)).astype(float)
        ax.bar(x + off, counts / max(1.0, counts.sum()), 0.4, label=f"{k} ({int(counts.sum())} units, {len(ex)} examples)")
    ax.set_xticks(x, names, rotation=60, ha="right", fontsize=7)
    ax.set(ylabel="fraction of zeroed units", title="neuron flipping: layers of the zeroed units")
    ax.legend(fontsize=8)
    _save(fig, layers_path)


def plot_etd(rows: list[dict[str, Any]], path: Path) -> None:
    """Grouped bars: clean-train, noisy (given label), noisy (true label) and test accuracy per mode."""
    plt = _plt()
    metrics = [("clean_acc", "clean train"), ("noisy_acc", "noisy (given)"), ("noisy_true_acc", "noisy (true)"),
               ("test_acc", "test")]
    fig, ax = plt.subplots(figsize=(7, 4))
    x = np.arange(len(metrics))
    w = 0.8 / len(rows)
    for i, r in enumerate(rows):
        vals = [r[m] for m, _ in metrics]
        bars = ax.bar(x + (i - (len(rows) - 1) / 2) * w, vals, w, label=r["mode"])
        for b, v in zip(bars, vals):
            if not math.isnan(v):
                ax.text(b.get_x() + b.get_width() / 2, v + 0.01, f"{100 * v:.0f}", ha="center", fontsize=7)
    ax.set_xticks(x, [lab for _, lab in metrics])
    ax.set(ylim=(0, 1.1), ylabel="accuracy", title="example-tied dropout: accuracy per evaluation mode")
    ax.legend(title="mode", loc="upper left", bbox_to_anchor=(1.01, 1))
    _save(fig, path)


def load_results(directory: Path) -> dict[str, Any]:
    """Everything a run's localization folder holds: tables as row lists (by stem), arrays (by stem),
    and figure paths."""
    directory = Path(directory)
    out: dict[str, Any] = {"tables": {}, "arrays": {}, "figures": sorted(directory.glob("*.png"))}
    for p in sorted(directory.glob("*.csv")):
        out["tables"][p.stem] = read_table(p)
    for p in sorted(directory.glob("*.npz")):
        with np.load(p, allow_pickle=False) as z:
            out["arrays"][p.stem] = dict(z)
    return out

"""Every figure of the analysis: one function per figure, matplotlib Agg, PNG at 150 dpi, written atomically.

Images passed to the grid functions are float arrays in [0, 1], (n, H, W) grey or (n, H, W, 3) RGB.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..io import plt as _pyplot
from ..io import save_figure as _save
from ..metrics import roc

plt = _pyplot()


def _positive(v: np.ndarray) -> np.ndarray:
    """Clip to the smallest positive value so that log axes can show zeros."""
    v = np.asarray(v, float)
    pos = v[v > 0]
    return np.maximum(v, pos.min() if pos.size else 1e-12)


def roc_curves(scores: dict[str, np.ndarray], target: np.ndarray, path: Path, title: str = "", main: str = "") -> Path:
    """ROC curve of every score ({display label: (N,)}, higher = more suspicious) for the boolean target (N,);
    AUROC in the legend; the `main` score drawn thicker."""
    fig, ax = plt.subplots(figsize=(6, 5.5))
    colors = plt.get_cmap("tab20").colors  # 20 distinct colours: no two scores share one
    for k, (name, s) in enumerate(scores.items()):
        fpr, tpr, _, area = roc(s, target)
        ax.plot(fpr, tpr, lw=2.4 if name == main else 1.1, color="black" if name == main else colors[(2 * k) % 20
                + (2 * k) // 20], ls="-" if k % 2 == 0 else "--", label=f"{name} ({area:.3f})")
    ax.plot([0, 1], [0, 1], ls=":", c="grey", lw=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01),
           title=title or "ROC (AUROC in brackets)")
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def curvature_hist(curv: np.ndarray, target: np.ndarray, path: Path, names: tuple[str, str] = ("clean", "noisy"),
                   bins: int = 50) -> Path:
    """Histograms of curvature (N,) for target False / True on log-spaced bins (each group sums to 1)."""
    c = _positive(curv)
    edges = np.logspace(np.log10(c.min()), np.log10(c.max()) + 1e-9, bins + 1)
    fig, ax = plt.subplots(figsize=(6, 4))
    for mask, name, col in ((~target, names[0], "tab:blue"), (target, names[1], "tab:red")):
        if mask.any():
            ax.hist(c[mask], bins=edges, alpha=0.55, color=col, weights=np.full(int(mask.sum()), 1.0 / mask.sum()),
                    label=f"{name} (n={int(mask.sum())})")
    ax.set_xscale("log")
    ax.set(xlabel="input-loss curvature (mean over epochs, log scale)", ylabel="fraction of the group per bin",
           title="Curvature of clean vs mislabeled samples")
    ax.legend()
    return _save(fig, path)


def curvature_over_epochs(epochs: np.ndarray, per_epoch: np.ndarray, target: np.ndarray, path: Path,
                          names: tuple[str, str] = ("clean", "noisy")) -> Path:
    """Mean curvature per epoch (line) with the 25-75 % band (shaded) for the two groups; per_epoch (E, N)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    pe = _positive(per_epoch)
    for mask, name, col in ((~target, names[0], "tab:blue"), (target, names[1], "tab:red")):
        if not mask.any():
            continue
        v = pe[:, mask]
        lo, hi = np.percentile(v, [25, 75], axis=1)
        ax.plot(epochs, v.mean(1), color=col, lw=2, label=f"{name}: mean")
        ax.fill_between(epochs, lo, hi, color=col, alpha=0.2, label=f"{name}: 25-75 %")
    ax.set_yscale("log")
    ax.set(xlabel="epoch", ylabel="curvature (log scale)", title="Curvature during training")
    ax.legend(fontsize=8)
    return _save(fig, path)


def image_grid(images: np.ndarray, titles: list[str], path: Path, ncols: int = 8, suptitle: str = "",
               title_colors: list[str] | None = None) -> Path:
    """A grid of images (n, H, W[, 3]) in [0, 1] with one short title each."""
    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = max(1, -(-n // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.35 * ncols, 1.75 * nrows), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= n:
            continue
        img = images[k]
        ax.imshow(img, cmap="gray_r" if img.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(titles[k], fontsize=6.5, color=(title_colors or ["black"] * n)[k])
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def topk_grid(images: np.ndarray, given: np.ndarray, true: np.ndarray, scores: np.ndarray, classes: list[str],
              path: Path, ncols: int = 8) -> Path:
    """Highest-curvature images with given / true label; red title = label differs from the truth."""
    titles = [f"#{r + 1} ({s:.3g})\ngiven {classes[g][:10]}\ntrue {classes[t][:10]}"
              for r, (g, t, s) in enumerate(zip(given, true, scores))]
    colors = ["tab:red" if g != t else "black" for g, t in zip(given, true)]
    return image_grid(images, titles, path, ncols, "Highest curvature (rank, curvature); red = given label is wrong", colors)


def auroc_vs_epoch(series: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, hlines: dict[str, float] | None = None,
                   title: str = "AUROC for mislabeled samples vs epoch") -> Path:
    """AUROC per epoch for each named (epochs, auroc) series; `hlines` draws epoch-free scores as dashed lines."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, (ep, au) in series.items():
        ax.plot(ep, au, marker="o" if len(ep) < 25 else None, ms=3, lw=1.8, label=name)
    for k, (name, v) in enumerate((hlines or {}).items()):
        ax.axhline(v, ls="--", lw=1, color=f"C{k + len(series)}", label=f"{name} ({v:.3f})")
    ax.set(xlabel="epoch", ylabel="AUROC", ylim=(min(0.45, ax.get_ylim()[0]), 1.005), title=title)
    ax.axhline(0.5, ls=":", c="grey", lw=1)
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def fz_binned(mem: np.ndarray, curv: np.ndarray, path: Path, bins: int = 10, stats: dict[str, float] | None = None) -> Path:
    """Mean curvature (with 25-75 % bars) per bin of Feldman–Zhang memorization score."""
    ok = np.isfinite(mem) & np.isfinite(curv)
    mem, curv = mem[ok], curv[ok]
    edges = np.linspace(min(mem.min(), 0.0), max(mem.max(), 1.0) + 1e-9, bins + 1)
    which = np.clip(np.digitize(mem, edges) - 1, 0, bins - 1)
    centers, means, lo, hi, counts = [], [], [], [], []
    for b in range(bins):
        v = curv[which == b]
        if v.size:
            centers.append((edges[b] + edges[b + 1]) / 2)
            means.append(v.mean())
            q = np.percentile(v, [25, 75])
            lo.append(q[0])
            hi.append(q[1])
            counts.append(v.size)
    fig, ax = plt.subplots(figsize=(6, 4))
    means, lo, hi = np.array(means), np.array(lo), np.array(hi)
    ax.bar(centers, means, width=(edges[1] - edges[0]) * 0.85, color="tab:purple", alpha=0.7, label="mean curvature")
    ax.errorbar(centers, means, yerr=[np.clip(means - lo, 0, None), np.clip(hi - means, 0, None)], fmt="none",
                ecolor="black", lw=1, capsize=2, label="25-75 %")
    for c, m, n in zip(centers, means, counts):
        ax.annotate(f"n={n}", (c, m), textcoords="offset points", xytext=(0, 3), ha="center", fontsize=6)
    ax.set_yscale("log")
    t = "Curvature per Feldman–Zhang memorization bin"
    if stats:
        t += f"\ncosine {stats['cosine']:.3f}, Pearson {stats['pearson']:.3f}"
    ax.set(xlabel="FZ memorization score mem(i)", ylabel="curvature (log scale)", title=t)
    ax.legend(fontsize=8)
    return _save(fig, path)


def duplicate_pairs(first: np.ndarray, second: np.ndarray, titles: list[tuple[str, str]], path: Path, ncols: int = 4) -> Path:
    """Pairs side by side (a | b), `ncols` pairs per row; titles[k] = (title of a, title of b)."""
    n = len(first)
    if n == 0:
        fig, ax = plt.subplots(figsize=(4, 1))
        ax.axis("off")
        ax.text(0.5, 0.5, "no conflicting near-duplicate pairs found", ha="center", va="center")
        return _save(fig, path)
    imgs, names = [], []
    for a, b, (ta, tb) in zip(first, second, titles):
        imgs += [a, b]
        names += [ta, tb]
    return image_grid(np.stack(imgs), names, path, 2 * min(ncols, n), "Near-identical pairs with different labels")

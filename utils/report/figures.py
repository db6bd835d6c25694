"""The report's figures: top-k gallery, duplicate pairs, suspects per class, memorization timeline (PNG, 150 dpi).

Images are float arrays in [0, 1], (n, H, W) grey or (n, H, W, 3) RGB (`utils.curvature.analysis.raw_images`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..curvature import plots
from ..io import plt as _pyplot
from ..io import save_figure
from ..scores.catalogue import CATEGORIES

plt = _pyplot()
COLORS = {name: c.colour for name, c in CATEGORIES.items()}  # the page's badge colours (utils.scores.catalogue)
SHORT = {name: c.short for name, c in CATEGORIES.items()}


def gallery(images: np.ndarray, table: dict[str, np.ndarray], path: Path, ncols: int = 8) -> Path:
    """The first len(images) rows of the ranked table: 'rank category / given -> suggested (p)'; title colour =
    category."""
    n = len(images)
    titles = [f"#{table['rank'][k]} {SHORT[table['category'][k]]}\n{table['given_class'][k][:9]} → "
              f"{table['suggested_class'][k][:9]}\n({table['suggested_prob'][k]:.2f})" for k in range(n)]
    colors = [COLORS[c] for c in table["category"][:n]]
    return plots.image_grid(images, titles, path, ncols, "Top suspects: rank, category, given → suggested label "
                                                         "(probability); colour = category", colors)


def duplicate_pairs(first: np.ndarray, second: np.ndarray, titles: list[tuple[str, str]], path: Path) -> Path:
    """Conflicting near-duplicate pairs side by side (the curvature line's figure)."""
    return plots.duplicate_pairs(first, second, titles, path)


def per_class(table: dict[str, np.ndarray], classes: list[str], top: int, path: Path, most: int = 40) -> Path:
    """Top-`top` suspects per given class, stacked by category, beside each class's share of the training set;
    with more than `most` classes, the `most` classes holding the most suspects."""
    head = {c: table[c][:top] for c in ("given_label", "category")}
    nk = len(classes)
    counts = np.stack([np.bincount(head["given_label"][head["category"] == c], minlength=nk) for c in CATEGORIES])
    share = np.bincount(table["given_label"], minlength=nk) / len(table["given_label"]) * min(top, len(table["rank"]))
    keep = np.arange(nk) if nk <= most else np.sort(np.argsort(-counts.sum(0), kind="stable")[:most])
    counts, share, classes = counts[:, keep], share[keep], [classes[i] for i in keep]
    k = len(classes)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.45 * k + 2), 3.2))
    bottom = np.zeros(k)
    for c, row in zip(CATEGORIES, counts):
        ax.bar(np.arange(k), row, bottom=bottom, color=COLORS[c], label=c, width=0.7)
        bottom += row
    ax.plot(np.arange(k), share, "k_", markersize=14, mew=2, label="expected if spread like the data")
    tilt = k > 10 or k * max(len(c[:10]) for c in classes) > 60  # names that would touch are tilted
    ax.set_xticks(np.arange(k), [c[:10] for c in classes], rotation=35 if tilt else 0, ha="right" if tilt else "center",
                  fontsize=7)
    ax.set_ylabel(f"suspects in the top {top}")
    ax.set_title("Top suspects per given class" + (f" (the {k} classes with most)" if nk > k else ""), fontsize=9)
    ax.legend(fontsize=6.5, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return save_figure(fig, path)


def timeline(epochs: np.ndarray, correct_top: np.ndarray, correct_all: np.ndarray, test_acc: np.ndarray,
             clean_acc: np.ndarray | None, top: int, path: Path) -> Path:
    """Fraction fitted (given label predicted) per epoch: the top suspects against all samples, with clean-sample
    accuracy (runs with injected noise) and test accuracy. epochs (E,), the rest (E,) fractions in [0, 1]."""
    fig, ax = plt.subplots(figsize=(5.2, 3.2))
    ax.plot(epochs, correct_all, "-o", ms=3, color="0.3", label="all training samples fitted")
    ax.plot(epochs, correct_top, "-o", ms=3, color="tab:red", label=f"top {top} suspects fitted")
    if clean_acc is not None:
        ax.plot(epochs, clean_acc, "--", color="tab:green", label="clean samples fitted")
    ax.plot(epochs, test_acc, ":", color="tab:blue", label="test accuracy")
    ax.set_xlabel("epoch")
    ax.set_ylabel("fraction")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Memorization timeline: when the suspects are fitted", fontsize=9)
    ax.legend(fontsize=7, frameon=False)
    return save_figure(fig, path)

"""Detection metrics, computed in one place (scikit-learn): AUROC, AUPRC, ROC curves, threshold accuracy.

Scores are oriented "higher = more likely positive"; targets are boolean arrays of the same length.
A target with a single class gives NaN (AUROC) instead of an exception.
"""

from __future__ import annotations

import numpy as np


def auroc(score: np.ndarray, target: np.ndarray) -> float:
    """Area under the ROC curve; NaN when the target has a single class."""
    from sklearn.metrics import roc_auc_score

    target = np.asarray(target, bool)
    if target.all() or not target.any():
        return float("nan")
    return float(roc_auc_score(target, np.asarray(score, np.float64)))


def auprc(score: np.ndarray, target: np.ndarray) -> float:
    """Average precision (step-wise area under precision-recall); NaN without positives."""
    from sklearn.metrics import average_precision_score

    target = np.asarray(target, bool)
    if not target.any():
        return float("nan")
    return float(average_precision_score(target, np.asarray(score, np.float64)))


def roc(score: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(fpr, tpr, thresholds, auroc); the diagonal and NaN when one class is missing."""
    from sklearn.metrics import roc_curve

    score, target = np.asarray(score, np.float64), np.asarray(target, bool)
    if target.all() or not target.any():
        return np.array([0.0, 1.0]), np.array([0.0, 1.0]), np.array([np.inf, -np.inf]), float("nan")
    fpr, tpr, thr = roc_curve(target, score)
    return fpr, tpr, thr, auroc(score, target)


def threshold_accuracy(score: np.ndarray, threshold: np.ndarray | float, target: np.ndarray) -> float:
    """Fraction classified right by `score > threshold` (one threshold, or one per item)."""
    pred = np.asarray(score) > np.asarray(threshold)
    return float((pred == np.asarray(target, bool)).mean())


def ranked(value: np.ndarray) -> np.ndarray:
    """Positions (N,) from the highest value down (stable: ties keep index order; NaN last)."""
    v = np.asarray(value, np.float64)
    return np.argsort(-np.where(np.isnan(v), -np.inf, v), kind="stable")


def precision_at_k(value: np.ndarray, target: np.ndarray, k: int | None = None) -> float:
    """Share of positives among the k highest (k defaults to the number of positives; recall at that k is equal)."""
    target = np.asarray(target, bool)
    k = int(target.sum()) if k is None else k
    return float(target[ranked(value)[:k]].mean()) if k > 0 else float("nan")


def bootstrap_precision_at_k(values: dict[str, np.ndarray], target: np.ndarray, n_boot: int = 1000,
                             seed: int = 0) -> dict[str, np.ndarray]:
    """Paired bootstrap of precision at k (k = the number of positives of each resample) for several rankings of the
    same N samples: every ranking is scored on the same resamples (multinomial counts over the samples), so their
    differences have intervals too. Returns {name: (n_boot,) precision at k per resample}.

    A resample's ranking is the ranking's order over the whole set with each sample repeated by its count; the top k
    take whole samples in that order, the last one partially (ties in the count are split evenly)."""
    target = np.asarray(target, bool)
    n = len(target)
    counts = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)  # (B, N)
    k = (counts * target).sum(1)  # (B,)
    out = {}
    for name, v in values.items():
        o = ranked(v)
        c = counts[:, o]
        cum = np.cumsum(c, axis=1)
        pos = np.cumsum(c * target[o], axis=1)
        j = np.array([np.searchsorted(cum[b], k[b]) for b in range(n_boot)])  # first position where cum >= k
        j = np.minimum(j, n - 1)
        rows = np.arange(n_boot)
        before = np.where(j > 0, cum[rows, np.maximum(j - 1, 0)], 0.0)
        pos_before = np.where(j > 0, pos[rows, np.maximum(j - 1, 0)], 0.0)
        partial = (k - before) * target[o][j]
        out[name] = np.where(k > 0, (pos_before + partial) / np.maximum(k, 1), np.nan)
    return out


def interval(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of bootstrap samples."""
    a = (1 - level) / 2
    s = np.asarray(samples, np.float64)
    s = s[np.isfinite(s)]
    return (float(np.quantile(s, a)), float(np.quantile(s, 1 - a))) if len(s) else (float("nan"), float("nan"))

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

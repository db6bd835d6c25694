"""Cross-validation folds of a training set: `data.folds`, `data.holdout_fold`, `data.fold_seed`.

A fold run (`utils.curvature.crossval`) is an ordinary run whose training set leaves out one of K stratified,
seeded folds of the whole training set (after noise and duplicates); its record keeps `parent_index`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import UserError


def fold_assignment(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Fold (N,) int64 in [0, folds) of each sample of `labels` (N,): stratified by label and seeded. The samples,
    ordered by label then by a seeded random key, are dealt round-robin, so every fold holds floor or ceil of
    N/folds samples, and of each class's count."""
    labels = np.asarray(labels, np.int64)
    key = np.random.default_rng(seed).random(len(labels))
    order = np.lexsort((key, labels))
    fold = np.empty(len(labels), np.int64)
    fold[order] = np.arange(len(labels)) % folds
    return fold


def holdout(arrays: dict[str, np.ndarray], d: dict[str, Any]) -> np.ndarray:
    """data.folds > 1: the positions (sorted) kept for training, every fold but `data.holdout_fold`, and
    `arrays` (source, given, true, dup, dup_of; (N,) each) restricted to them in place (dup_of remapped; -1 where the
    source image is held out)."""
    k, h = d["folds"], d["holdout_fold"]
    n = len(arrays["given"])
    if not 2 <= k <= n:
        raise UserError(f"data.folds={k} must be 0 (no folds) or between 2 and the {n} training samples")
    if not 0 <= h < k:
        raise UserError(f"data.holdout_fold={h} must be in 0..{k - 1} (data.folds={k})")
    keep = np.flatnonzero(fold_assignment(arrays["given"], k, d["fold_seed"]) != h)
    new_pos = np.full(n, -1, np.int64)
    new_pos[keep] = np.arange(len(keep))
    for name in arrays:
        arrays[name] = arrays[name][keep]
    of = arrays["dup_of"]
    arrays["dup_of"] = np.where(of >= 0, new_pos[np.maximum(of, 0)], -1)
    return keep

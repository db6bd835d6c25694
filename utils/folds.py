"""Which samples each out-of-sample model trains on: `data.folds`, `data.holdout_fold`, `data.fold_seed`,
`data.fold_scheme`, `data.fold_fraction`.

A model run of the holdout stage (`utils.holdout`) is an ordinary run whose training set is row `holdout_fold` of
`membership(...)` over the whole training set (after noise, duplicates and exclusions); its record keeps
`parent_index`. Two schemes:
- `folds`: K stratified, seeded folds; model k trains on every fold but k, so each sample is held out by exactly one;
- `subsets`: M seeded, class-stratified random subsets of `fold_fraction` of the samples (Feldman & Zhang's repeated
  subsets), so each sample is held out by about (1 - fraction) * M models.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import UserError

SCHEMES = ("folds", "subsets")


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


def membership(labels: np.ndarray, scheme: str, models: int, fraction: float = 0.5, seed: int = 0) -> np.ndarray:
    """(M, N) bool: row m is True where model m trains on the sample (False: it holds the sample out).

    folds: row k = every fold of `fold_assignment(labels, models, seed)` but k. subsets: row m keeps, in every class
    c of `labels`, round(fraction * n_c) samples with the smallest keys of a generator seeded (seed, m)."""
    labels = np.asarray(labels, np.int64)
    n = len(labels)
    if scheme == "folds":
        fold = fold_assignment(labels, models, seed)
        return fold[None, :] != np.arange(models)[:, None]
    if scheme != "subsets":
        raise UserError(f"data.fold_scheme / holdout.scheme must be one of {', '.join(SCHEMES)}, got {scheme!r}")
    if not 0.0 < fraction < 1.0:
        raise UserError(f"holdout.fraction={fraction} must be strictly between 0 and 1")
    out = np.zeros((models, n), bool)
    for m in range(models):
        key = np.random.default_rng([seed, m]).random(n)
        order = np.lexsort((key, labels))  # by class, then key
        rank = np.empty(n, np.int64)
        starts = np.searchsorted(labels[order], labels[order], side="left")
        rank[order] = np.arange(n) - starts  # position within its class
        counts = np.bincount(labels, minlength=labels.max() + 1 if n else 0)
        out[m] = rank < np.round(fraction * counts[labels])
    return out


def holdout(arrays: dict[str, np.ndarray], d: dict[str, Any]) -> np.ndarray:
    """data.folds > 1: the positions (sorted) model `data.holdout_fold` trains on (`membership` row), and `arrays`
    (source, given, true, dup, dup_of; (N,) each) restricted to them in place (dup_of remapped; -1 where the source
    image is held out)."""
    k, h = d["folds"], d["holdout_fold"]
    n = len(arrays["given"])
    scheme = d.get("fold_scheme", "folds")
    if not 2 <= k <= (n if scheme == "folds" else 10**6):
        raise UserError(f"data.folds={k} must be 0 (no folds) or between 2 and the {n} training samples")
    if not 0 <= h < k:
        raise UserError(f"data.holdout_fold={h} must be in 0..{k - 1} (data.folds={k})")
    keep = np.flatnonzero(membership(arrays["given"], scheme, k, d.get("fold_fraction", 0.5), d["fold_seed"])[h])
    restrict(arrays, keep)
    return keep


def restrict(arrays: dict[str, np.ndarray], keep: np.ndarray) -> None:
    """Restrict `arrays` (source, given, true, dup, dup_of; (N,) each) to the sorted positions `keep`, in place;
    dup_of is remapped (-1 where the source image is left out)."""
    n = len(arrays["given"])
    new_pos = np.full(n, -1, np.int64)
    new_pos[keep] = np.arange(len(keep))
    for name in arrays:
        arrays[name] = arrays[name][keep]
    of = arrays["dup_of"]
    arrays["dup_of"] = np.where(of >= 0, new_pos[np.maximum(of, 0)], -1)

"""Label noise and duplicate injection, each with its own seed (independent of the model seed).

All functions are pure numpy: labels in, labels out, so counts and distributions are testable.
"""

from __future__ import annotations

import numpy as np

from .errors import UserError

NOISE_KINDS = ("none", "symmetric", "asymmetric", "random")

# CIFAR-10's class-dependent noise (Patrini et al.): truck->automobile, bird->airplane,
# deer->horse, cat<->dog. Applied by class *name*, so the CIFAR-10 JPEG folders get it too.
ASYMMETRIC_BY_NAME = {"truck": "automobile", "bird": "airplane", "deer": "horse", "cat": "dog", "dog": "cat"}
# Handwritten digits (MNIST, digits; Patrini et al. 2017): the look-alikes 2->7, 3->8, 7->1, 5<->6.
ASYMMETRIC_DIGITS = {"2": "7", "3": "8", "7": "1", "5": "6", "6": "5"}


def asymmetric_map(classes: list[str]) -> np.ndarray:
    """Class map (K,) for asymmetric noise: the CIFAR-10 map or the digits map (classes '0'..'9') when the class
    names match, otherwise the cyclic map k -> k+1 (CIFAR-100's usual 'next class' convention)."""
    k = len(classes)
    mapping = np.arange(k)
    for by_name in (ASYMMETRIC_BY_NAME, ASYMMETRIC_DIGITS):
        if all(src in classes and dst in classes for src, dst in by_name.items()):
            for src, dst in by_name.items():
                mapping[classes.index(src)] = classes.index(dst)
            return mapping
    return (mapping + 1) % k


def corrupt_labels(
    labels: np.ndarray, num_classes: int, kind: str, rate: float, seed: int, classes: list[str] | None = None
) -> np.ndarray:
    """Return given labels (N,) int64 for true `labels` (N,).

    symmetric: exactly round(rate*N) samples get a label uniform over the K-1 *other* classes.
    asymmetric: exactly round(rate*N) samples (drawn from classes the map moves) get map[y].
    random: every label uniform over all K classes (rate ignored; ~1/K stay correct by chance).
    """
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    rng = np.random.default_rng(seed)
    given = labels.copy()
    if kind == "none":
        return given
    if kind == "random":
        return rng.integers(0, num_classes, size=n).astype(np.int64)
    if not 0.0 <= rate <= 1.0:
        raise UserError(f"noise.rate must be in [0, 1], got {rate}")
    count = int(round(rate * n))
    if kind == "symmetric":
        idx = rng.permutation(n)[:count]
        given[idx] = (labels[idx] + rng.integers(1, num_classes, size=count)) % num_classes
        return given
    if kind == "asymmetric":
        mapping = asymmetric_map(classes or [str(i) for i in range(num_classes)])
        movable = np.flatnonzero(mapping[labels] != labels)
        if count > len(movable):
            raise UserError(f"noise.rate={rate} asks for {count} asymmetric flips but only {len(movable)} samples "
                            "belong to classes the map moves; lower noise.rate")
        idx = rng.permutation(movable)[:count]
        given[idx] = mapping[labels[idx]]
        return given
    raise UserError(f"unknown noise.kind {kind!r}; known: {', '.join(NOISE_KINDS)}")


def pick_duplicates(
    true_labels: np.ndarray, given_labels: np.ndarray, num_classes: int, count: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Choose `count` clean source images to duplicate and a conflicting label for each copy.

    Returns (source_index (count,), copy_label (count,)); a copy's label is uniform over the
    classes other than the source's true label. Uses its own stream (seed + 1) so adding
    duplicates does not change which labels the noise flipped.
    """
    clean = np.flatnonzero(true_labels == given_labels)
    if count > len(clean):
        raise UserError(f"noise.duplicates={count} exceeds the {len(clean)} clean training images")
    rng = np.random.default_rng(seed + 1)
    src = np.sort(rng.permutation(clean)[:count])
    labels = (true_labels[src] + rng.integers(1, num_classes, size=count)) % num_classes
    return src.astype(np.int64), labels.astype(np.int64)

"""Label noise and duplicate injection, each with its own seed (independent of the model seed).

The noise functions are pure numpy: labels in, labels out, so counts and distributions are testable.
Instance-dependent noise (`noise.kind=instance`) needs a reference run's training statistics:
`reference_confusion` and `instance_labels` are its math (pure), `load_reference` reads and checks the
reference's files (`pretrained/<reference>/run.json`, `train_stats.npz`), `instance_noise` applies it to a config.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UserError
from .io import load_npz

NOISE_KINDS = ("none", "symmetric", "asymmetric", "random", "instance")
INSTANCE_RULE = ("instance: the round(rate*N) samples with the largest confusability (mean over the reference's "
                 "epochs of other_prob, the probability of its most probable class other than the clean label) get "
                 "the class they are confused with (among the reference's per-epoch other classes, the one with the "
                 "largest summed other_prob); ties to the lower index / lower class")

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
    instance: needs a reference run (`instance_labels`); refused here.
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
    if kind == "instance":
        raise UserError("noise.kind=instance needs noise.reference=<run> (a run trained on the clean labels)")
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


# ----------------------------------------------------------------------------- instance-dependent noise
def reference_confusion(other: np.ndarray, other_prob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Confusability (N,) float64 and confused-with class (N,) int64 from a reference's per-epoch statistics.

    other (E, N) int: the most probable class other than the (clean) label at each epoch; other_prob (E, N): its
    softmax probability. Confusability = mean over epochs of other_prob (the reference's predictions averaged over
    its training, as in PMD noise). Confused-with = the class c maximising sum_e other_prob[e] * [other[e] == c]
    (a vote of the epochs weighted by their probability; ties: the lower class)."""
    other = np.asarray(other, np.int64)
    prob = np.asarray(other_prob, np.float64)
    if other.ndim != 2 or other.shape != prob.shape:
        raise ValueError(f"other {other.shape} and other_prob {prob.shape} must be the same (E, N)")
    e = other.shape[0]
    order = np.argsort(other, axis=0, kind="stable")  # each column's classes sorted: runs of equal classes
    cls = np.take_along_axis(other, order, 0)
    cum = np.cumsum(np.take_along_axis(prob, order, 0), axis=0)
    first = np.ones_like(cls, bool)
    first[1:] = cls[1:] != cls[:-1]
    start = np.maximum.accumulate(np.where(first, np.arange(e)[:, None], 0), axis=0)  # where each run starts
    before = np.where(start > 0, np.take_along_axis(cum, np.maximum(start - 1, 0), 0), 0.0)
    run_sum = cum - before  # at a run's last row: the class's summed other_prob
    best = np.argmax(run_sum, axis=0)  # first maximum: the lower class on ties
    return prob.mean(0), cls[best, np.arange(other.shape[1])]


def instance_labels(labels: np.ndarray, confusability: np.ndarray, confused_with: np.ndarray,
                    rate: float) -> np.ndarray:
    """Given labels (N,) int64: exactly round(rate*N) samples, those with the largest `confusability` (N,) (ties: the
    lower index first), get `confused_with` (N,) as their label; the others keep `labels` (N,). Samples whose
    confused-with class is their own label are never chosen."""
    labels = np.asarray(labels, np.int64)
    if not 0.0 <= rate <= 1.0:
        raise UserError(f"noise.rate must be in [0, 1], got {rate}")
    count = int(round(rate * len(labels)))
    confused_with = np.asarray(confused_with, np.int64)
    movable = confused_with != labels
    if count > movable.sum():
        raise UserError(f"noise.rate={rate} asks for {count} instance-dependent flips but the reference confuses only "
                        f"{int(movable.sum())} samples with another class; lower noise.rate")
    key = np.where(movable, np.asarray(confusability, np.float64), -np.inf)
    idx = np.argsort(-key, kind="stable")[:count]
    given = labels.copy()
    given[idx] = confused_with[idx]
    return given


def load_reference(pretrained: str | Path, name: str, data: dict[str, Any], true_labels: np.ndarray,
                   run: str = "") -> tuple[np.ndarray, np.ndarray, str]:
    """(confusability (N,), confused-with class (N,), identity hash) of reference run `name` under `pretrained`.

    Checks, each a one-line UserError saying how to fix it: the reference exists, finished training
    (train_stats.npz), was trained on clean labels (noise.kind=none, no duplicates), on the same data (data.name,
    subset and its true labels equal `true_labels` (N,)), and its statistics hold `other`/`other_prob`."""
    if not name:
        raise UserError("noise.kind=instance needs noise.reference=<run>: a run trained on the clean labels of the same "
                        f"data with another seed (e.g. train_{data['name']}.py run=ref noise.kind=none train.seed=1)")
    if name == run:
        raise UserError(f"noise.reference={name!r} names this run itself; train the reference as another run on the "
                        "clean labels (noise.kind=none, another train.seed)")
    rdir = Path(pretrained) / name
    how = f"train_{data['name']}.py run={name} noise.kind=none noise.rate=0 train.seed=<another seed> (this run's data.*)"
    if not (rdir / "run.json").is_file():
        raise UserError(f"reference run {name!r} not found ({rdir / 'run.json'} missing); train it first on the clean "
                        f"labels: {how}, or set paths.pretrained")
    try:
        head = json.loads((rdir / "run.json").read_text())
        cfg, identity = head["config"], str(head["identity"])
    except (json.JSONDecodeError, KeyError, TypeError):
        raise UserError(f"{rdir / 'run.json'} of reference run {name!r} is corrupt; retrain the reference: {how}") from None
    rn, rd = cfg.get("noise", {}), cfg.get("data", {})
    if rn.get("kind", "none") != "none" or rn.get("duplicates", 0):
        raise UserError(f"reference run {name!r} was trained on noisy labels (noise.kind={rn.get('kind')}, "
                        f"noise.duplicates={rn.get('duplicates', 0)}); a reference is trained on the clean labels: {how}")
    if rd.get("folds", 0):
        raise UserError(f"reference run {name!r} is a cross-validation fold run (data.folds={rd['folds']}), trained on "
                        f"part of the data; a reference is trained on the whole training set: {how}")
    for key in ("name", "subset", "subset_seed"):
        if rd.get(key, 0 if key != "name" else "") != data.get(key):
            raise UserError(f"reference run {name!r} was trained on other data (data.{key}: {rd.get(key)!r} there, "
                            f"{data.get(key)!r} here); train the reference on this run's data: {how}")
    stats_file = rdir / "train_stats.npz"
    if not stats_file.is_file():
        raise UserError(f"reference run {name!r} is not trained to the end ({stats_file} missing, written when training "
                        f"ends with train.stats=true); finish it with its training command (train_{data['name']}.py "
                        f"run={name})")
    z = load_npz(stats_file, f"retrain the reference: {how}", keys=("true_label", "is_noisy", "other", "other_prob"),
                 require=("epochs", "true_label"))
    if "other" not in z or "other_prob" not in z:
        raise UserError(f"reference run {name!r} was trained before the training statistics kept other/other_prob; "
                        f"retrain the reference (delete {rdir}, then {how})")
    if np.asarray(z.get("is_noisy", False)).any():
        raise UserError(f"reference run {name!r} was trained on noisy labels (its record has mislabeled samples); "
                        f"a reference is trained on the clean labels: {how}")
    true_labels = np.asarray(true_labels)
    if z["true_label"].shape != true_labels.shape or not np.array_equal(z["true_label"], true_labels):
        raise UserError(f"reference run {name!r} was trained on other data (its record's {len(z['true_label'])} true "
                        f"labels differ from this data's {len(true_labels)}); train the reference on this run's data "
                        f"(same data.name, data.subset, data.subset_seed, data.root): {how}")
    confusability, confused_with = reference_confusion(z["other"], z["other_prob"])
    return confusability, confused_with, identity


def instance_noise(cfg: dict[str, Any], ytr: np.ndarray, recorded: np.ndarray | None) -> np.ndarray:
    """Given labels of noise.kind=instance: the recorded ones (a later stage: the reference is not needed), else
    derived from the reference run (`utils.noise.load_reference`), whose identity is written into
    cfg['noise']['reference_identity'] (so this run's identity changes with its reference)."""
    nz = cfg["noise"]
    if recorded is not None:
        return np.asarray(recorded, np.int64)[: len(ytr)]
    conf, other, ident = load_reference(cfg["paths"]["pretrained"], nz["reference"], cfg["data"], ytr, cfg["run"])
    if nz["reference_identity"] not in ("", ident):
        raise UserError(f"reference run {nz['reference']!r} now has identity {ident}, not the recorded "
                        f"noise.reference_identity={nz['reference_identity']!r}: it was retrained with another config; "
                        "train this run under a new run=<name> (or drop the noise.reference_identity override)")
    nz["reference_identity"] = ident
    return instance_labels(ytr, conf, other, nz["rate"])


# ----------------------------------------------------------------------------- canaries
CANARY_RULE = ("canaries: round(rate*N) samples drawn at random without replacement (seed noise.seed, stream 2), with "
               "probability proportional to the reference's confusability ** noise.canary_power (0: uniform), among "
               "those whose label is the data set's own and whose reference confused-with class differs; each gets that "
               "class with probability noise.canary_confused, else a uniformly random other class (stream 3): the "
               "share of a person's mistakes that go to the class a network confuses the sample with")


def canary_labels(given: np.ndarray, true: np.ndarray, confused_with: np.ndarray, rate: float, seed: int,
                  confusability: np.ndarray | None = None, power: float = 0.0, confused_share: float = 1.0,
                  num_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(given labels (N,) with the canaries flipped, is_canary (N,) bool): exactly round(rate*N) samples, drawn at
    random without replacement among those with given == true and confused_with != given, with probability
    proportional to confusability ** power (N,) (power 0 or no confusability: uniform). Each gets confused_with with
    probability `confused_share`, else a uniformly random class other than its label (of `num_classes`, default
    max label + 1); the choice of samples does not depend on `confused_share`."""
    if not 0.0 <= confused_share <= 1.0:
        raise UserError(f"noise.canary_confused={confused_share} must be in [0, 1] (1: always the confused-with class)")
    given, true, other = (np.asarray(a, np.int64) for a in (given, true, confused_with))
    if not 0.0 <= rate < 1.0:
        raise UserError(f"noise.canaries={rate} must be in [0, 1)")
    if power < 0:
        raise UserError(f"noise.canary_power={power} must be >= 0 (0: uniform draw)")
    count = int(round(rate * len(given)))
    movable = np.flatnonzero((given == true) & (other != given))
    if count > len(movable):
        raise UserError(f"noise.canaries={rate} asks for {count} canaries but only {len(movable)} samples can carry one")
    rng = np.random.default_rng([seed, 2])
    if power == 0 or confusability is None:
        pick = np.sort(rng.permutation(movable)[:count])
    else:  # tiny floor: a sample the reference never confused keeps a (tiny) chance, and the draw stays defined
        w = np.maximum(np.asarray(confusability, np.float64)[movable], 1e-12) ** power
        pick = np.sort(rng.choice(movable, size=count, replace=False, p=w / w.sum()))
    target = other[pick].copy()
    if confused_share < 1.0:
        k = int(num_classes or max(given.max(), other.max()) + 1)
        rt = np.random.default_rng([seed, 3])
        elsewhere = rt.random(len(pick)) >= confused_share
        shift = rt.integers(1, k, len(pick))  # a uniformly random class other than the label
        target[elsewhere] = ((given[pick] + shift) % k)[elsewhere]
    out, canary = given.copy(), np.zeros(len(given), bool)
    out[pick], canary[pick] = target, True
    return out, canary


def canary_reference(pretrained: str | Path, name: str, n: int) -> tuple[np.ndarray, np.ndarray, str]:
    """(confusability (N,), confused-with class (N,), identity) from any finished run of the same N samples (e.g. the
    user's first run on these labels): its per-epoch `other` / `other_prob` statistics, as `reference_confusion`."""
    how = f"train a run on this data first and pass noise.canary_reference=<run> (now {name!r})"
    rdir = Path(pretrained) / name
    if not name or not (rdir / "run.json").is_file() or not (rdir / "train_stats.npz").is_file():
        raise UserError(f"noise.canaries needs a finished reference run; {how}")
    z = load_npz(rdir / "train_stats.npz", how, keys=("other", "other_prob", "given_label"), require=("epochs",))
    if "other" not in z or len(z["other"][0]) != n:
        raise UserError(f"canary reference run {name!r} has no other/other_prob statistics for these {n} samples; {how}")
    return (*reference_confusion(z["other"], z["other_prob"]), str(json.loads((rdir / "run.json").read_text())["identity"]))

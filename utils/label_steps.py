"""The training labels, step by step: noise, labels from a file, canaries, duplicates, exclusions, folds.

One function (`training_labels`) owns the order; `utils.data.build_data` calls it after loading the images. Each
step's arrays are (N,) over the training samples (duplicates appended after the originals):
source (int64, the image each sample shows), given / true (int64 labels), dup (bool), dup_of (int64, -1 where no
duplicate), canary (bool)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .folds import holdout, restrict
from .labels import apply_labels, exclude_positions
from .noise import CANARY_RULE, canary_labels, canary_reference, corrupt_labels, instance_noise, pick_duplicates


def training_labels(cfg: dict[str, Any], ytr: np.ndarray, classes: list[str], files: list[str] | None,
                    recorded_labels: np.ndarray | None) -> tuple[dict[str, np.ndarray], dict[str, Any], np.ndarray | None]:
    """(arrays, what the record keeps about the noise, label files and canaries, fold positions or None) for the data
    set's own labels ytr (N,) int64 and class names; `files` (N,) the image files of folder data (else None) and
    `recorded_labels` (N,) the noise step's labels recorded by training (noise.kind=instance at later stages: the
    reference run is not needed; the record's `noise_labels`)."""
    d, nz = cfg["data"], cfg["noise"]
    n, k = len(ytr), len(classes)
    if nz["kind"] == "instance":
        given = instance_noise(cfg, ytr, recorded_labels)
    else:
        given = corrupt_labels(ytr, k, nz["kind"], nz["rate"], nz["seed"], classes)
    meta: dict[str, Any] = {"noise_labels": given.copy()} if nz["kind"] == "instance" else {}
    if d["labels"]:  # labels from a CSV (utils/labels.py): CIFAR-10N, a report's exported decisions
        given, meta = apply_labels(cfg, given, list(classes), files, cfg["paths"]["pretrained"])
    canary = np.zeros(n, bool)
    if nz["canaries"] > 0:
        conf, other, ident = canary_reference(cfg["paths"]["pretrained"], nz["canary_reference"], n)
        given, canary = canary_labels(given, ytr, other, nz["canaries"], nz["seed"], conf, nz["canary_power"],
                                      nz["canary_confused"], k)
        meta.update(canaries=int(canary.sum()), canary_reference=nz["canary_reference"],
                    canary_reference_identity=ident, canary_power=nz["canary_power"],
                    canary_confused=nz["canary_confused"], canary_rule=CANARY_RULE)
    a = {"source": np.arange(n), "given": given, "true": ytr, "dup": np.zeros(n, bool),
         "dup_of": np.full(n, -1, np.int64), "canary": canary}
    if nz["duplicates"] > 0:
        src, lab = pick_duplicates(ytr, given, k, nz["duplicates"], nz["seed"])
        extra = {"source": src, "given": lab, "true": ytr[src], "dup": np.ones(len(src), bool), "dup_of": src,
                 "canary": np.zeros(len(src), bool)}
        a = {name: np.concatenate([v, extra[name]]) for name, v in a.items()}
    if d["exclude"]:  # samples a decisions file removes (before any fold split)
        drop, removed = exclude_positions(cfg, len(a["given"]), files)
        meta.update(removed)
        restrict(a, np.setdiff1d(np.arange(len(a["given"])), drop))
    keep = holdout(a, d) if d["folds"] else None
    return a, meta, keep

"""Run directories, atomic writes, and `weights_only` checkpoint loading.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts only (see README), so
`torch.load(path, weights_only=True)` reads it without unpickling code.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import UserError

FORMAT_VERSION = 1
_EPOCH_RE = re.compile(r"epoch_(\d{3,})\.pt$")


def run_dir(cfg: dict[str, Any]) -> Path:
    return Path(cfg["paths"]["pretrained"]) / cfg["run"]


def score_dir(cfg: dict[str, Any]) -> Path:
    return Path(cfg["paths"]["scores"]) / cfg["run"]


def checkpoint_path(directory: Path, epoch: int) -> Path:
    return directory / f"epoch_{epoch:03d}.pt"


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Call `write(tmp_path)`, then rename onto `path`; a crash leaves no partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: torch.save({"format_version": FORMAT_VERSION, **state}, tmp))


def save_npz(path: Path, **arrays: Any) -> None:
    """Atomic `np.savez` of plain (non-object) arrays."""
    for k, v in arrays.items():
        if np.asarray(v).dtype == object:
            raise TypeError(f"array {k!r} has dtype object; score files must load with allow_pickle=False")

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    atomic_write(path, write)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load with `weights_only=True`; a corrupt or truncated file gives a one-line UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found; train the run first (train_*.py run=...)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure to read means the file is unusable
        raise UserError(f"checkpoint {path} is corrupt or truncated ({type(e).__name__}); "
                        "delete it and resume from the previous epoch") from None
    if not isinstance(ckpt, dict) or ckpt.get("format_version") != FORMAT_VERSION or "model" not in ckpt:
        raise UserError(f"{path} is not a checkpoint of this toolkit (format {FORMAT_VERSION}); delete or move it")
    return ckpt


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """(epoch, path) of every saved epoch in a run directory, sorted by epoch."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    out = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _EPOCH_RE.search(p.name))]
    return sorted(out)


def record_to_numpy(record: dict[str, Any]) -> dict[str, Any]:
    """The per-sample record as numpy arrays under the names score files use."""
    return {
        "index": record["index"].numpy(),
        "given_label": record["given_labels"].numpy(),
        "true_label": record["true_labels"].numpy(),
        "is_noisy": record["is_noisy"].numpy(),
        "is_duplicate": record["is_duplicate"].numpy(),
        "duplicate_of": record["duplicate_of"].numpy(),
        "dataset": np.array(record["dataset"]),
        "noise_kind": np.array(record["noise_kind"]),
        "noise_rate": np.array(record["noise_rate"]),
        "noise_seed": np.array(record["noise_seed"]),
    }

"""The run record and the one way every later stage opens a run: `open_run(cfg) -> Run`.

Training writes, under `pretrained/<run>/`:
- `run.json`: the run record's config part — the resolved config (data, noise, model, train, ...),
  its identity hash, the data set's identity, format version;
- `record.npz`: the per-sample record (index, given/true label, is_noisy, duplicates, source index; where they
  apply: parent_index, is_canary, noise_labels — `OPTIONAL_RECORD_KEYS`);
- `epoch_XXX.pt`: model weights of a saved epoch (epoch 0 = initialisation), step and metrics;
- `resume.pt`: the newest epoch's weights + optimizer + scheduler (what a resume needs, one file);
- `stats/epoch_XXX.npz` (per epoch, appended) and `train_stats.npz` (all epochs, written at the end).

A later stage takes `data.*` (except where the data lives now: `data.root`, `data.folder`,
`data.num_workers`), `noise.*`, `model.*` and `train.*` from the record; from the command line only
its own sections, `paths.*` and those three data keys. Giving a recorded key again with another value
is refused in one line. Checkpoints are plain tensors/numbers/strings: `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import copy
import functools
import importlib
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .config import ADDED_LATER, DEFAULTS, flatten, given_keys, identity_diff
from .data import DataBundle, build_data
from .distributed import Dist, broadcast_object, setup
from .errors import UserError
from .io import atomic_write, load_npz, save_npz, write_text
from .labels import file_sha256
from .models import build_model, wrap_model, wrapper_modules

FORMAT_VERSION = 2  # 1: config + record + optimizer inside every checkpoint (still readable)
_EPOCH_RE = re.compile(r"epoch_(\d{3,})\.pt$")
RECORDED = ("data", "noise", "model", "train")  # sections the run record owns
DATA_LOCATION = ("data.root", "data.folder", "data.num_workers")  # may differ from the record: where data lives now
RECORD_KEYS = ("index", "given_labels", "true_labels", "is_noisy", "is_duplicate", "duplicate_of", "source_index")
# parent_index: fold runs (data.folds > 1), each sample's position in the whole training set; is_canary: noise.canaries;
# noise_labels: noise.kind=instance, the labels the noise step gave each source image (before labels files, canaries,
# duplicates, exclusions and folds): what a later stage rebuilds the labels from without the reference run
OPTIONAL_RECORD_KEYS = ("parent_index", "is_canary", "noise_labels")


# ----------------------------------------------------------------------------- paths
def run_dir(cfg: dict[str, Any]) -> Path:
    return Path(cfg["paths"]["pretrained"]) / cfg["run"]


def score_dir(cfg: dict[str, Any]) -> Path:
    return Path(cfg["paths"]["scores"]) / cfg["run"]


def checkpoint_path(directory: Path, epoch: int) -> Path:
    return Path(directory) / f"epoch_{epoch:03d}.pt"


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """(epoch, path) of every saved epoch in a run directory, sorted by epoch."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted((int(m.group(1)), p) for p in directory.iterdir() if (m := _EPOCH_RE.search(p.name)))


# ----------------------------------------------------------------------------- checkpoints
def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: torch.save({"format_version": FORMAT_VERSION, **state}, tmp))


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
    why = _not_ours(ckpt)
    if why:
        raise UserError(f"{path} {why}")
    return ckpt


def _not_ours(ckpt: Any) -> str:
    """'' for a checkpoint this toolkit can read, else why not (another project's file, a newer format)."""
    if not isinstance(ckpt, dict) or "model" not in ckpt or "format_version" not in ckpt:
        return f"is not a checkpoint of this toolkit (format {FORMAT_VERSION}); delete or move it"
    v = ckpt["format_version"]
    if v not in (1, FORMAT_VERSION):
        return (f"was written in checkpoint format {v!r}, which this toolkit (format {FORMAT_VERSION}) does not "
                "read; use the version of the toolkit that wrote it")
    return ""


def check_checkpoint(path: Path, epoch: int) -> str:
    """'' when `path` is a readable checkpoint of `epoch`, else what is wrong with it ('missing', 'corrupt or
    truncated', 'holds epoch 5', ...). Cheap: the tensors are memory-mapped, not read."""
    path = Path(path)
    if not path.is_file():
        return "missing"
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - any failure to read means the file is unusable
        return f"corrupt or truncated ({type(e).__name__})"
    why = _not_ours(ckpt)
    if why:
        return why.split(";")[0]
    if int(ckpt.get("epoch", -1)) != epoch:
        return f"holds epoch {ckpt.get('epoch')}, not {epoch}"
    return ""


def verify_epoch_files(rdir: Path, epochs: list[int], by: str) -> None:
    """Every `epoch_XXX.pt` of `epochs` present, readable and of its epoch; else one UserError naming each
    damaged file (`by` says who claims they exist, e.g. 'resume.pt at epoch 4')."""
    bad = [(e, why) for e in epochs if (why := check_checkpoint(checkpoint_path(rdir, e), e))]
    if bad:
        names = ", ".join(f"{checkpoint_path(rdir, e).name} {why}" for e, why in bad)
        raise UserError(f"run {Path(rdir).name} cannot be used as it is: {names} ({by} says they were written); "
                        f"resume.pt holds only the newest state, so they cannot be rebuilt from it: restore them, or "
                        f"delete {rdir} and train it again (training is deterministic: the same files come back)")


# ----------------------------------------------------------------------------- the record
def record_to_numpy(record: dict[str, Any]) -> dict[str, Any]:
    """The per-sample record as numpy arrays under the names score files use."""
    return {
        "index": np.asarray(record["index"]),
        "given_label": np.asarray(record["given_labels"]),
        "true_label": np.asarray(record["true_labels"]),
        "is_noisy": np.asarray(record["is_noisy"]),
        "is_duplicate": np.asarray(record["is_duplicate"]),
        "duplicate_of": np.asarray(record["duplicate_of"]),
        "dataset": np.array(record["dataset"]),
        "noise_kind": np.array(record["noise_kind"]),
        "noise_rate": np.array(record["noise_rate"]),
        "noise_seed": np.array(record["noise_seed"]),
    }


def write_run_record(rdir: Path, cfg: dict[str, Any], record: dict[str, Any], identity: str) -> None:
    """run.json (config, identity, data set description) + record.npz (per-sample arrays)."""
    meta = {k: v for k, v in record.items()
            if k not in RECORD_KEYS + OPTIONAL_RECORD_KEYS + ("source_files", "plugins")}
    files = {"source_files": np.asarray(record["source_files"], dtype=str)} if "source_files" in record else {}
    public = {k: v for k, v in cfg.items() if not k.startswith("_")}
    write_text(Path(rdir) / "run.json", json.dumps({"format_version": FORMAT_VERSION, "identity": identity,
                                                   "config": public, "data": meta, "platform": platform(),
                                                   "plugins": wrapper_modules(cfg["model"])},
                                                  indent=1) + "\n")
    save_npz(Path(rdir) / "record.npz", **{k: np.asarray(record[k]) for k in RECORD_KEYS + OPTIONAL_RECORD_KEYS
                                           if k in record}, **files)


def platform() -> dict[str, Any]:
    """What decides the rounding of a CPU run besides the config: torch version, threads, the ATen kernel set.
    The same run is bit-identical only where all three agree (README, "Reliability")."""
    return {"torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}


def read_run_record(rdir: Path) -> tuple[dict[str, Any], dict[str, Any], str]:
    """(config, record with tensors, identity) of a run; format-1 runs are read from their first checkpoint."""
    rdir = Path(rdir)
    if (rdir / "run.json").is_file():
        try:
            head = json.loads((rdir / "run.json").read_text())
        except json.JSONDecodeError as e:
            raise UserError(f"{rdir / 'run.json'} is corrupt ({e.msg} at line {e.lineno}); retrain the run") from None
        arrays = load_npz(rdir / "record.npz", "retrain the run", require=("index", "given_labels"))
        record = {**head["data"], **{k: torch.from_numpy(arrays[k]) for k in RECORD_KEYS + OPTIONAL_RECORD_KEYS
                                     if k in arrays}, "plugins": list(head.get("plugins", []))}
        if "source_files" in arrays:  # folder data: each source image's path relative to data.root/data.folder
            record["source_files"] = arrays["source_files"]
        return head["config"], record, head["identity"]
    ckpts = list_checkpoints(rdir)
    if not ckpts:
        raise UserError(f"no run record in {rdir}")
    ckpt = load_checkpoint(ckpts[0][1])
    return ckpt["config"], ckpt["record"], ckpt.get("identity", "")


# ----------------------------------------------------------------------------- models
DTYPES = {"float32": torch.float32, "float64": torch.float64}  # train.dtype


def model_dtype(cfg: dict[str, Any]) -> torch.dtype:
    """`train.dtype` as a torch dtype (runs recorded before the key: float32)."""
    name = cfg["train"].get("dtype", "float32")
    if name not in DTYPES:
        raise UserError(f"train.dtype={name!r} is unknown; use one of {', '.join(DTYPES)}")
    return DTYPES[name]


def model_for(cfg: dict[str, Any], record: dict[str, Any]) -> nn.Module:
    """The configured model for a data set record (no weights loaded), through the registered wrappers
    (`utils.models.register_wrapper`), in `train.dtype`. The modules that registered a recorded run's wrappers
    (run.json "plugins") are imported first, so every stage rebuilds the model the run was trained with."""
    for module in record.get("plugins", ()):
        if module not in sys.modules:
            importlib.import_module(module)
    m = cfg["model"]
    model = build_model(m["name"], record["num_classes"], record["in_channels"], record["image_size"],
                        m["width"], m["activation"], m.get("kwargs"))
    model, dtype = wrap_model(model, m), model_dtype(cfg)
    return model if dtype == torch.float32 else model.to(dtype)


# ----------------------------------------------------------------------------- opening a run
def merge_run_config(recorded: dict[str, Any], cfg: dict[str, Any], name: str) -> dict[str, Any]:
    """The recorded config with this command's own sections, paths and data location.

    Keys of the recorded sections given on this command line (or in an explicit --config) must equal
    the recorded value; anything else is refused in one line naming the key and the recorded value."""
    given = given_keys(cfg)
    rec_flat = flatten(recorded)
    for key, value in given.items():
        if key.split(".")[0] in RECORDED and key not in DATA_LOCATION and key in rec_flat and rec_flat[key] != value:
            raise UserError(f"{key}={value!r} differs from run {name!r}, recorded with {key}={rec_flat[key]!r}; "
                            "later stages take it from the run record: drop the override")
    out = copy.deepcopy(DEFAULTS)  # keys added since the run was trained: the value it was trained with
    for key, value in {**{k: v for k, v in ADDED_LATER.items() if k not in rec_flat}, **rec_flat}.items():
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = copy.deepcopy(value)
    for section, value in cfg.items():
        if section not in RECORDED and section not in ("run", "resume"):
            out[section] = copy.deepcopy(value)
    out["run"] = name
    for key in DATA_LOCATION:
        leaf = key.split(".")[1]
        if key in given:
            out["data"][leaf] = given[key]
    out["data"]["download"] = False  # a later stage never downloads
    if "_given" in cfg:
        out["_given"] = dict(given)
    return out


@dataclass
class Run:
    """A trained run opened by name: its merged config, per-sample record, checkpoints and directories."""

    cfg: dict[str, Any]
    record: dict[str, Any]
    identity: str
    ckpts: list[tuple[int, Path]]
    dir: Path
    scores: Path
    dist: Dist

    @property
    def name(self) -> str:
        return self.cfg["run"]

    @property
    def epochs(self) -> list[int]:
        return [e for e, _ in self.ckpts]

    def checkpoint(self, epoch: int = -1, map_location: str | torch.device = "cpu") -> dict[str, Any]:
        """The checkpoint of `epoch` (negative: counted back from the last saved epoch, -1 = last)."""
        epochs = self.epochs
        if epoch < 0:
            if -epoch > len(epochs):
                raise UserError(f"run {self.name} has only {len(epochs)} saved epochs")
            epoch = epochs[epoch]
        if epoch not in epochs:
            raise UserError(f"run {self.name} has no checkpoint of epoch {epoch}; saved epochs: {epochs}")
        if self.dist.world == 1:
            return load_checkpoint(dict(self.ckpts)[epoch], map_location)
        # rank 0 reads, every rank gets the same tensors (no shared file system needed)
        got = broadcast_object(_try(load_checkpoint, dict(self.ckpts)[epoch], map_location) if self.dist.is_main
                               else None)
        return _raise_or(got)

    def verify_checkpoints(self) -> None:
        """Every listed epoch file present, readable and of its epoch (rank 0 reads; every rank raises alike)."""
        _raise_or(broadcast_object(_try(verify_epoch_files, self.dir, self.epochs, "its list of checkpoints")
                                   if self.dist.is_main else None))

    def load_model(self, epoch: int = -1, device: torch.device | str = "cpu") -> nn.Module:
        """The model of a saved epoch, weights loaded, in eval mode, on `device`."""
        model = model_for(self.cfg, self.record)
        model.load_state_dict(self.checkpoint(epoch)["model"])
        return model.to(device).eval()

    @functools.cached_property
    def data(self) -> DataBundle:
        """The run's own data set (built from the record's config, never downloaded), labels checked."""
        n, recorded = self.cfg["noise"], None
        if "noise_labels" in self.record:  # instance noise: the recorded labels, so the reference is not needed
            recorded = self.record["noise_labels"].numpy()
        elif n["kind"] == "instance" and not self.cfg["data"]["folds"]:  # runs recorded before noise_labels
            recorded = self.record["given_labels"].numpy()
        for key, sha in (("labels", "labels_sha256"), ("exclude", "exclude_sha256")):
            path = self.cfg["data"][key]
            if path and sha in self.record and Path(path).is_file() and file_sha256(path) != self.record[sha]:
                raise UserError(f"data.{key}={path} changed since run {self.name} was trained on it (SHA-256 "
                                f"{self.record[sha]} then); restore that file, or train a new run on this one")
        data = build_data(self.cfg, recorded)
        if not all(torch.equal(data.record[k], self.record[k]) for k in ("given_labels", "true_labels")):
            raise UserError(f"the data under {self.cfg['data']['root'] or '$DATA_ROOT'} gives run {self.name} "
                            "other labels than it was trained on; point data.root / $DATA_ROOT at its data")
        return data

    def stats(self) -> dict[str, np.ndarray]:
        """Per-sample training statistics (E, N) + record: stats/epoch_XXX.npz stacked, else train_stats.npz."""
        return load_stats(self.dir, f"train the run first (train_*.py run={self.name})")

    def record_arrays(self) -> dict[str, Any]:
        return record_to_numpy(self.record)


def _try(fn: Any, *args: Any) -> Any:
    """fn(*args), or ("__error__", message) for a UserError (so rank 0 can broadcast a failure, not hang)."""
    try:
        return fn(*args)
    except UserError as e:
        return ("__error__", str(e))


def _raise_or(value: Any) -> Any:
    if isinstance(value, tuple) and len(value) == 2 and value[0] == "__error__":
        raise UserError(value[1])
    return value


def _read(cfg: dict[str, Any]) -> tuple[list[tuple[int, Path]], dict[str, Any], dict[str, Any], str]:
    name, rdir = cfg["run"], run_dir(cfg)
    ckpts = list_checkpoints(rdir)
    if not ckpts:
        raise UserError(f"no run {name!r} in {rdir.parent}/ (no checkpoints in {rdir}); train it first "
                        f"(train_<dataset>.py run={name}) or set paths.pretrained=")
    return (ckpts, *read_run_record(rdir))


def open_run(cfg: dict[str, Any]) -> Run:
    """Open `cfg['run']` under `paths.pretrained` (see the module docstring for what comes from where).

    Under torchrun rank 0 reads the directory and broadcasts what it found, so ranks never disagree."""
    dist = setup(cfg)
    found = _try(_read, cfg) if dist.is_main else None
    ckpts, recorded, record, identity = _raise_or(broadcast_object(found, "broadcast of the run record from rank 0"))
    merged = merge_run_config(recorded, cfg, cfg["run"])
    return Run(merged, record, identity, ckpts, run_dir(cfg), score_dir(merged), dist)


# ----------------------------------------------------------------------------- training statistics
STAT_KEYS = ("loss", "correct", "margin")
# the most probable class other than the given label (int32) and its probability: in runs trained since 2026-12
OPTIONAL_STAT_KEYS = ("other", "other_prob")


def stats_path(rdir: Path, epoch: int) -> Path:
    return Path(rdir) / "stats" / f"epoch_{epoch:03d}.npz"


def _stats_files(rdir: Path) -> list[Path]:
    return sorted((rdir / "stats").glob("epoch_*.npz")) if (rdir / "stats").is_dir() else []


def load_stats(rdir: Path, what: str = "") -> dict[str, np.ndarray]:
    """epochs (E,), loss/correct/margin (E, N), test_loss/test_acc (E,) and the record arrays: `stats/epoch_*.npz`
    stacked (the newest epochs, also mid-training), else `train_stats.npz`. A corrupt `train_stats.npz` is an error
    either way (a user's own `np.load` would meet it); the training command rebuilds it from `stats/`."""
    rdir = Path(rdir)
    files = _stats_files(rdir)
    whole = rdir / "train_stats.npz"
    if whole.is_file() or not files:
        fix = (f"it is rebuilt from stats/ by running the training command of run {rdir.name} again" if files
               else what)
        got = load_npz(whole, fix, keys=None if not files else ("epochs",), require=("epochs",))
        if not files:
            return got
    return stack_stats(rdir)


def stack_stats(rdir: Path) -> dict[str, np.ndarray]:
    """`stats/epoch_*.npz` stacked: what `train_stats.npz` holds."""
    rdir = Path(rdir)
    files = _stats_files(rdir)
    rows = [load_npz(f, "run the training command again", require=("epoch", *STAT_KEYS)) for f in files]
    out = {"epochs": np.array([int(r["epoch"]) for r in rows], np.int64)}
    for k in STAT_KEYS + tuple(k for k in OPTIONAL_STAT_KEYS if all(k in r for r in rows)):
        out[k] = np.stack([r[k] for r in rows])
    out["test_loss"] = np.array([float(r["test_loss"]) for r in rows], np.float32)
    out["test_acc"] = np.array([float(r["test_acc"]) for r in rows], np.float32)
    _, record, _ = read_run_record(rdir)
    return {**out, **record_to_numpy(record)}


def describe_diff(recorded: dict[str, Any], cfg: dict[str, Any]) -> str:
    """'noise.rate: run 0.05, now 0.1; ...' for the run-defining keys that differ."""
    diff = identity_diff(recorded, cfg)
    return "; ".join(f"{k}: run {a!r}, now {b!r}" for k, (a, b) in diff.items()) or "keys outside data/noise/model/train"

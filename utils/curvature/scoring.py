"""Score a run: input-loss curvature of every sample at every (k-th) saved epoch, offline or while training.

Offline (`score_<dataset>_checkpoint.py run=<name>`): opens the run (`utils.runs.open_run`: its own data,
model and labels); of the epochs that are saved or already scored, takes every `score.every`-th, scores those
without a `curv_scores/<run>/epoch_XXX.npz` yet and aggregates them into `curv_scores/<run>/curvature.npz`.
A killed job resumes.
Online (`score.online=true` in training; importing this module registers the factory that attaches it to the
training loop, `utils.callbacks.register_callbacks`): `OnlineScorer` scores the live model at the end of every
`score.every`-th epoch (and the initialisation) and writes the same epoch files, bit-identical on the CPU
to what the offline scorer writes for that epoch's checkpoint; the offline scorer then only aggregates.

Under torchrun every rank scores whole batches of a contiguous block and rank 0 writes. Probes are a
counter-based hash of (score.seed, epoch, split, sample index), so a sample's score does not depend on its
batch, rank or device. File formats: docs/curvature.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..callbacks import Callback, TrainState, register_callbacks
from ..device_data import bundle_on_device
from ..distributed import Dist, barrier, batch_rows, broadcast_object, setup, sharded_map
from ..errors import UserError
from ..faults import fault_point
from ..io import load_npz, reap_temporaries, save_npz
from ..metrics import auroc
from ..models import input_dtype
from ..runs import open_run, record_to_numpy, score_dir
from ..waits import set_stage, stage
from .estimator import METHODS, input_curvature, sample_probes

SPLITS = {"train": ("train",), "test": ("test",), "both": ("train", "test")}
_STREAM = {"train": 0, "test": 1}  # probe streams: train and test sample i get different probes
_SETTINGS = ("method", "n_probes", "h", "seed", "split")


def settings(sc: dict[str, Any]) -> dict[str, Any]:
    """The score settings an epoch file records (and a resumed job must match)."""
    return {"method": sc["method"], "n_probes": sc["n_probes"], "h": sc["h"] if sc["method"] == "fd" else 0.0,
            "seed": sc["seed"], "split": sc["split"]}


def check(sc: dict[str, Any]) -> None:
    if sc["method"] not in METHODS:
        raise UserError(f"score.method={sc['method']!r} is unknown; use one of {', '.join(METHODS)}")
    for key in ("n_probes", "every", "batch_size"):
        if sc[key] < 1:
            raise UserError(f"score.{key} must be >= 1, got {sc[key]}")
    if sc["split"] not in SPLITS:
        raise UserError(f"score.split={sc['split']!r} is unknown; use one of {', '.join(SPLITS)}")
    if sc["method"] == "fd" and not sc["h"] > 0:
        raise UserError(f"score.h must be > 0 for score.method=fd, got {sc['h']}")


def _file_settings(path: Path) -> dict[str, Any]:
    z = load_npz(path, "delete it and score again", keys=_SETTINGS, require=_SETTINGS)  # not the (N,) arrays
    return {k: v.item() for k, v in z.items()}


def _differences(found: dict[str, Any], want: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    same = lambda a, b: np.isclose(a, b) if isinstance(b, float) else a == b  # noqa: E731
    return {k: (found.get(k), v) for k, v in want.items() if k not in found or not same(found[k], v)}


def epoch_path(sdir: Path, epoch: int) -> Path:
    return Path(sdir) / f"epoch_{epoch:03d}.npz"


def datasets_of(data: Any, split: str) -> dict[str, Any]:
    return {s: (data.train_eval if s == "train" else data.test) for s in SPLITS[split]}


def test_meta(data: Any, split: str) -> dict[str, np.ndarray]:
    if "test" not in SPLITS[split]:
        return {}
    return {"test_index": np.arange(len(data.test)), "test_label": np.asarray(data.test.given_labels)}


def score_model(model: torch.nn.Module, datasets: dict[str, Any], sc: dict[str, Any], epoch: int, dist: Dist,
                bar: tqdm | None = None, num_workers: int = 0) -> dict[str, np.ndarray]:
    """curvature / trace / hv_norm (N,) of every sample of each dataset ({split: dataset}); test split keys
    get a `test_` prefix. Probes on the model's device (`sample_probes`)."""
    out: dict[str, np.ndarray] = {}
    dtype = input_dtype(model)
    for split, ds in datasets.items():
        def fn(idx: torch.Tensor, x: torch.Tensor, y: torch.Tensor, split: str = split) -> dict[str, torch.Tensor]:
            fault_point("score")
            if x.is_floating_point() and x.dtype != dtype:  # a float64 model (train.dtype=float64) scores in float64
                x = x.to(dtype)
            probes = sample_probes(idx, tuple(x.shape[1:]), sc["n_probes"], seed=sc["seed"], epoch=epoch,
                                   stream=_STREAM[split], device=x.device, dtype=x.dtype)
            r = input_curvature(model, x, y, method=sc["method"], h=sc["h"], probes=probes, max_rows=sc["max_rows"])
            return {k: v.float() for k, v in r.items()}

        res = sharded_map(ds, fn, dist, sc["batch_size"], desc="scoring", num_workers=num_workers,
                          on_batch=bar.update if bar is not None else None)
        prefix = "" if split == "train" else "test_"
        for k in ("curvature", "trace", "hv_norm"):
            out[prefix + k] = res[k].numpy().astype(np.float32)
    return out


def write_epoch(sdir: Path, epoch: int, arrays: dict[str, np.ndarray], record: dict[str, Any], sc: dict[str, Any],
                meta: dict[str, np.ndarray]) -> Path:
    return save_npz(epoch_path(sdir, epoch), epoch=np.array(epoch), **arrays, **record_to_numpy(record),
                    **{k: np.array(v) for k, v in settings(sc).items()}, **meta)


def aggregate(sdir: Path, epochs: list[int], record_arrays: dict[str, np.ndarray], sett: dict[str, Any],
              every: int, test: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Stack the epoch files of `epochs` into curvature.npz (mean over epochs) and return its arrays."""
    per: dict[str, list[np.ndarray]] = {}
    for e in epochs:
        z = load_npz(epoch_path(sdir, e), "delete it and score again", require=("curvature", *_SETTINGS))
        for k in ("curvature", "trace", "hv_norm", "test_curvature", "test_trace", "test_hv_norm"):
            if k in z:
                per.setdefault(k, []).append(z[k])
    arrays: dict[str, Any] = {**record_arrays, "epochs": np.asarray(epochs, np.int64), "every": np.array(every),
                              **{k: np.array(v) for k, v in sett.items()}}
    for prefix in ("", "test_"):
        if prefix + "curvature" in per:
            pe, pt = np.stack(per[prefix + "curvature"]), np.stack(per[prefix + "trace"])
            arrays.update({prefix + "per_epoch": pe, prefix + "per_epoch_trace": pt,
                           prefix + "curvature": pe.mean(0), prefix + "trace": pt.mean(0),
                           prefix + "hv_norm": np.stack(per[prefix + "hv_norm"]).mean(0)})
    if test:
        arrays.update(test)
    save_npz(Path(sdir) / "curvature.npz", **arrays)
    return arrays


def _clash(f: Path, sc: dict[str, Any]) -> str:
    """The one-line refusal for an epoch file scored with settings other than `sc`'s ("" if they match)."""
    diff = _differences(_file_settings(f), settings(sc))
    if not diff:
        return ""
    what = ", ".join(f"score.{k}: file {a!r}, now {b!r}" for k, (a, b) in diff.items())
    return f"{f} was scored with other settings ({what}); repeat them to continue, or set paths.scores=<another dir>"


def _existing(sdir: Path, sc: dict[str, Any]) -> list[int]:
    """Epochs already scored under `sdir` with these settings (other settings are refused, naming them)."""
    found = []
    for f in sorted(Path(sdir).glob("epoch_*.npz")):
        if msg := _clash(f, sc):
            raise UserError(msg)
        found.append(int(f.stem.split("_")[1]))
    return found


def score_run(cfg: dict[str, Any]) -> Path:
    """Score the run `cfg['run']` (see the module docstring); returns the path of curvature.npz."""
    sc = cfg["score"]
    check(sc)
    dist = setup(cfg)
    set_stage("scoring")
    run = open_run(cfg)
    sdir = run.scores
    if dist.is_main:
        reap_temporaries(sdir)
    run.verify_checkpoints()  # every checkpoint read before any is scored
    done = broadcast_object(_existing(sdir, sc) if dist.is_main else None)  # rank 0 decides
    epochs = sorted(set(done) | set(run.epochs))[:: sc["every"]]  # saved or already scored (online), every k-th
    chosen = [(e, p) for e, p in run.ckpts if e in epochs]
    todo = [(e, p) for e, p in chosen if e not in done]
    data = run.data
    if run.cfg["data"].get("on_device", False):  # runs trained with data.on_device=true score from device batches
        data = bundle_on_device(data, dist.device)
    datasets, meta = datasets_of(data, sc["split"]), test_meta(data, sc["split"])
    per_ckpt = sum(-(-len(batch_rows(len(ds), sc["batch_size"], dist.rank, dist.world)) // sc["batch_size"])
                   for ds in datasets.values())
    bar = tqdm(total=len(todo) * per_ckpt, desc=f"score {run.name}", disable=not dist.is_main, dynamic_ncols=True)
    for e, _ in todo:
        model = run.load_model(e, dist.device)
        arrays = score_model(model, datasets, sc, e, dist, bar, cfg["data"]["num_workers"])
        if dist.is_main:
            write_epoch(sdir, e, arrays, run.record, sc, meta)
        barrier()
    bar.close()
    if sc["spectrum"]:  # parameter-Hessian spectrum of each scored checkpoint (`spectrum.*` keys)
        from ..spectral.capture import write_spectrum

        for e, _ in chosen:
            f = Path(sdir) / f"spectrum_epoch_{e:03d}.npz"
            with stage("spectra"):
                if not broadcast_object(f.is_file() if dist.is_main else None):
                    write_spectrum(cfg, run.load_model(e, dist.device), data.train_eval, f, dist, epoch=e)
                barrier()
    out = Path(sdir) / "curvature.npz"
    if dist.is_main:
        rec = run.record_arrays()
        res = aggregate(sdir, epochs, rec, settings(sc), sc["every"], meta)
        msg = (f"scored {len(todo)} new of {len(epochs)} epochs of {run.name} ({sc['method']}, "
               f"{sc['n_probes']} probe(s), h={sc['h']:g})")
        if "curvature" in res and rec["is_noisy"].any():
            msg += f"; mislabel AUROC of mean curvature: {auroc(res['curvature'], rec['is_noisy']):.4f}"
        if "curvature" in res and rec["is_duplicate"].any():
            msg += f"; duplicate AUROC: {auroc(res['curvature'], rec['is_duplicate']):.4f}"
        print(f"{msg}\nwritten: {out}, {sdir}/epoch_*.npz", flush=True)
    barrier()
    return out


class OnlineScorer(Callback):
    """`score.online=true`: score the live model at the end of every `score.every`-th epoch (and epoch 0)
    into curv_scores/<run>/epoch_XXX.npz, exactly what the offline scorer writes for that checkpoint."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        check(cfg["score"])
        self.cfg, self.sc, self.sdir = cfg, cfg["score"], score_dir(cfg)

    def _score(self, state: TrainState) -> None:
        f = epoch_path(self.sdir, state.epoch)
        # rank 0 checks the file it would replace and every rank follows (a rank-0-only error would hang the rest)
        msg = broadcast_object(_clash(f, self.sc) if state.dist.is_main and f.is_file() else "")
        if msg:
            raise UserError(msg)
        data = state.data
        arrays = score_model(state.model, datasets_of(data, self.sc["split"]), self.sc, state.epoch, state.dist,
                             num_workers=self.cfg["data"]["num_workers"])
        if state.dist.is_main:
            write_epoch(self.sdir, state.epoch, arrays, data.record, self.sc, test_meta(data, self.sc["split"]))

    def on_train_start(self, state: TrainState) -> None:
        if state.dist.is_main:
            reap_temporaries(self.sdir)
        if state.epoch == 0:
            self._score(state)

    def on_epoch_end(self, state: TrainState, metrics: dict[str, Any]) -> None:
        if state.epoch % self.sc["every"] == 0:
            self._score(state)


def online_callbacks(cfg: dict[str, Any]) -> list[Callback]:
    """The training loop's callbacks for `cfg`: the online scorer when `score.online=true`."""
    return [OnlineScorer(cfg)] if cfg["score"]["online"] else []


register_callbacks("online_scoring", online_callbacks, ("score.online",))  # importing this module attaches it


def main(cfg: dict[str, Any]) -> None:
    """Entry point of the score_*_checkpoint.py scripts."""
    score_run(cfg)

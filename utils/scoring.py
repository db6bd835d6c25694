"""Score a run's checkpoints: input-loss curvature of every sample at every (k-th) saved epoch.

Reads `pretrained/<run>/epoch_XXX.pt`, writes `curv_scores/<run>/epoch_XXX.npz` (one per scored
epoch, atomically; existing ones are skipped, so a killed job resumes) and then
`curv_scores/<run>/curvature.npz` (the mean over scored epochs). Under torchrun every rank scores
a contiguous shard and rank 0 writes. Probes are seeded per (score.seed, epoch, sample index), so
a sample's score does not depend on its batch or rank. File formats: docs/curvature.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from .checkpoint import list_checkpoints, load_checkpoint, record_to_numpy, run_dir, save_npz, score_dir
from .curvature import METHODS, input_curvature, sample_probes
from .data import build_data, shard_range
from .distributed import Dist, barrier, setup
from .errors import UserError
from .train import load_model

SPLITS = {"train": ("train",), "test": ("test",), "both": ("train", "test")}
_STREAM = {"train": 0, "test": 1}  # probe streams: train and test sample i get different probes
_SETTINGS = ("method", "n_probes", "h", "seed", "split")


def _settings(sc: dict[str, Any]) -> dict[str, Any]:
    return {"method": sc["method"], "n_probes": sc["n_probes"], "h": sc["h"] if sc["method"] == "fd" else 0.0,
            "seed": sc["seed"], "split": sc["split"]}


def _check(sc: dict[str, Any]) -> None:
    if sc["method"] not in METHODS:
        raise UserError(f"score.method={sc['method']!r} is unknown; use one of {', '.join(METHODS)}")
    if sc["n_probes"] < 1:
        raise UserError(f"score.n_probes must be >= 1, got {sc['n_probes']}")
    if sc["every"] < 1:
        raise UserError(f"score.every must be >= 1, got {sc['every']}")
    if sc["split"] not in SPLITS:
        raise UserError(f"score.split={sc['split']!r} is unknown; use one of {', '.join(SPLITS)}")
    if sc["method"] == "fd" and not sc["h"] > 0:
        raise UserError(f"score.h must be > 0 for score.method=fd, got {sc['h']}")
    if sc["batch_size"] < 1:
        raise UserError(f"score.batch_size must be >= 1, got {sc['batch_size']}")


def _file_settings(path: Path) -> dict[str, Any]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k].item() for k in _SETTINGS if k in z}


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(k in a and (np.isclose(a[k], b[k]) if isinstance(b[k], float) else a[k] == b[k]) for k in b)


def epoch_path(sdir: Path, epoch: int) -> Path:
    return Path(sdir) / f"epoch_{epoch:03d}.npz"


def select_epochs(ckpts: list[tuple[int, Path]], every: int) -> list[tuple[int, Path]]:
    """Every `every`-th saved checkpoint, starting with the first (epoch 0 = initialisation)."""
    return ckpts[::every]


def my_batches(n: int, batch_size: int, dist: Dist) -> range:
    """This rank's contiguous block of the global batches [k*bs, (k+1)*bs) of a dataset of n samples."""
    return shard_range(-(-n // batch_size), dist.rank, dist.world)


def aligned_map(dataset, fn, dist: Dist, batch_size: int, keys: tuple[str, ...], num_workers: int = 0
                ) -> dict[str, torch.Tensor]:
    """Like utils.evaluate.sharded_map, but ranks split the dataset at batch boundaries, so every sample is
    computed in the same batch (same companions, same kernels) whatever the number of ranks: sharded and
    single-process scores are bit-identical. `fn` returns float32 (B,) tensors under `keys`; returns the (N,)
    CPU tensors on every rank (a rank without batches still joins the gather)."""
    n = len(dataset)
    start, stop = _rows_of(dist.rank, n, batch_size, dist.world)
    loader = DataLoader(Subset(dataset, list(range(start, stop))), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, pin_memory=dist.device.type == "cuda")
    parts: dict[str, list[torch.Tensor]] = {}
    for idx, x, y in loader:
        out = fn(idx.to(dist.device), x.to(dist.device, non_blocking=True), y.to(dist.device, non_blocking=True))
        for k, v in out.items():
            parts.setdefault(k, []).append(v.detach())
    result = {}
    for k in keys:
        v = parts.get(k, [])
        local = torch.cat(v) if v else torch.empty(0, dtype=torch.float32, device=dist.device)
        if dist.world > 1:
            lengths = [b - a for a, b in (_rows_of(r, n, batch_size, dist.world) for r in range(dist.world))]
            pad = torch.zeros((max(lengths), *local.shape[1:]), dtype=local.dtype, device=local.device)
            pad[: len(local)] = local
            gathered = [torch.empty_like(pad) for _ in range(dist.world)]
            torch.distributed.all_gather(gathered, pad)
            local = torch.cat([g[:m] for g, m in zip(gathered, lengths)])
        result[k] = local.cpu()
    return result


def _rows_of(rank: int, n: int, batch_size: int, world: int) -> tuple[int, int]:
    b = shard_range(-(-n // batch_size), rank, world)
    return b.start * batch_size, min(b.stop * batch_size, n)


def score_checkpoint(model: torch.nn.Module, datasets: dict[str, Any], sc: dict[str, Any], epoch: int, dist: Dist,
                     bar: tqdm | None = None, num_workers: int = 0) -> dict[str, np.ndarray]:
    """Curvature/trace/hv_norm (N,) of every sample of each dataset in `datasets` ({split: dataset})."""
    out: dict[str, np.ndarray] = {}
    for split, ds in datasets.items():
        def fn(idx: torch.Tensor, x: torch.Tensor, y: torch.Tensor, split: str = split) -> dict[str, torch.Tensor]:
            probes = sample_probes(idx, tuple(x.shape[1:]), sc["n_probes"], seed=sc["seed"], epoch=epoch,
                                   stream=_STREAM[split], device=x.device, dtype=x.dtype)
            r = input_curvature(model, x, y, method=sc["method"], h=sc["h"], probes=probes, max_rows=sc["max_rows"])
            if bar is not None:
                bar.update(1)
            return r

        res = aligned_map(ds, fn, dist, sc["batch_size"], ("curvature", "trace", "hv_norm"), num_workers)
        prefix = "" if split == "train" else "test_"
        for k in ("curvature", "trace", "hv_norm"):
            out[prefix + k] = res[k].numpy().astype(np.float32)
    return out


def aggregate(sdir: Path, epochs: list[int], record_arrays: dict[str, np.ndarray], settings: dict[str, Any],
              every: int, test: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Stack the epoch files of `epochs` into curvature.npz (mean over epochs) and return its arrays."""
    per: dict[str, list[np.ndarray]] = {}
    for e in epochs:
        with np.load(epoch_path(sdir, e), allow_pickle=False) as z:
            for k in ("curvature", "trace", "hv_norm", "test_curvature", "test_trace", "test_hv_norm"):
                if k in z:
                    per.setdefault(k, []).append(z[k])
    arrays: dict[str, Any] = {**record_arrays, "epochs": np.asarray(epochs, np.int64), "every": np.array(every),
                              **{k: np.array(v) for k, v in settings.items()}}
    for prefix in ("", "test_"):
        if prefix + "curvature" in per:
            pe, pt = np.stack(per[prefix + "curvature"]), np.stack(per[prefix + "trace"])
            arrays.update({prefix + "per_epoch": pe, prefix + "per_epoch_trace": pt,
                           prefix + "curvature": pe.mean(0), prefix + "trace": pt.mean(0),
                           prefix + "hv_norm": np.stack(per[prefix + "hv_norm"]).mean(0)})
    if test is not None:
        arrays.update(test)
    save_npz(Path(sdir) / "curvature.npz", **arrays)
    return arrays


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of `scores` for detecting `positive` (nan if one class is empty)."""
    from sklearn.metrics import roc_auc_score

    positive = np.asarray(positive, bool)
    if positive.all() or not positive.any():
        return float("nan")
    return float(roc_auc_score(positive, scores))


def score_run(cfg: dict[str, Any]) -> Path:
    """Score the configured run (see module docstring); returns the path of curvature.npz."""
    sc = cfg["score"]
    _check(sc)
    dist = setup()
    rdir, sdir = run_dir(cfg), score_dir(cfg)
    ckpts = list_checkpoints(rdir)
    if not ckpts:
        raise UserError(f"no checkpoints in {rdir}; train the run first (train_*.py run={cfg['run']}) "
                        "or set run= / paths.pretrained=")
    chosen = select_epochs(ckpts, sc["every"])
    settings = _settings(sc)
    todo = []
    for e, p in chosen:
        f = epoch_path(sdir, e)
        if f.is_file():
            if not _same(_file_settings(f), settings):
                raise UserError(f"{f} was scored with other settings ({_file_settings(f)}); "
                                f"delete {sdir} or set paths.scores=<another dir>")
            continue
        todo.append((e, p))

    data = build_data(cfg)
    first = load_checkpoint(chosen[0][1])
    if not torch.equal(first["record"]["given_labels"], data.record["given_labels"]):
        raise UserError(f"{chosen[0][1]} was trained on other labels than this config gives "
                        "(data/noise keys differ); pass the run's own config")
    datasets = {s: (data.train_eval if s == "train" else data.test) for s in SPLITS[sc["split"]]}
    record = record_to_numpy(data.record)
    test_meta = None
    if "test" in datasets:
        test_meta = {"test_index": np.arange(len(data.test)), "test_label": np.asarray(data.test.given_labels)}
    per_ckpt = sum(len(my_batches(len(ds), sc["batch_size"], dist)) for ds in datasets.values())
    bar = tqdm(total=len(todo) * per_ckpt, desc=f"score {cfg['run']}", disable=not dist.is_main, dynamic_ncols=True)
    for e, path in todo:
        model = load_model(load_checkpoint(path, map_location=dist.device), dist.device)
        arrays = score_checkpoint(model, datasets, sc, e, dist, bar, cfg["data"]["num_workers"])
        if dist.is_main:
            save_npz(epoch_path(sdir, e), epoch=np.array(e), **arrays, **record,
                     **{k: np.array(v) for k, v in settings.items()}, **(test_meta or {}))
        barrier()
    bar.close()
    if sc["spectrum"]:  # parameter-Hessian spectrum of each scored checkpoint (utils/esm.py, `spectrum.*` keys)
        from .esm import write_spectrum

        for e, path in chosen:
            f = Path(sdir) / f"spectrum_epoch_{e:03d}.npz"
            if not f.is_file():
                model = load_model(load_checkpoint(path, map_location=dist.device), dist.device)
                write_spectrum(cfg, model, data.train_eval, f, dist, epoch=e)
            barrier()
    out = Path(sdir) / "curvature.npz"
    if dist.is_main:
        res = aggregate(sdir, [e for e, _ in chosen], record, settings, sc["every"], test_meta)
        msg = f"scored {len(chosen)} epochs of {cfg['run']} ({sc['method']}, {sc['n_probes']} probes) -> {out}"
        if "curvature" in res and record["is_noisy"].any():
            msg += f"; mislabel AUROC of mean curvature: {auroc(res['curvature'], record['is_noisy']):.4f}"
        if "curvature" in res and record["is_duplicate"].any():
            msg += f"; duplicate AUROC: {auroc(res['curvature'], record['is_duplicate']):.4f}"
        print(msg, flush=True)
    barrier()
    return out


def main(cfg: dict[str, Any]) -> None:
    """Entry point of the score_*_checkpoint.py scripts."""
    score_run(cfg)

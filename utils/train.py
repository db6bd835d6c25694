"""The training loop: DDP/torchrun (SyncBatchNorm) or one process, bf16 autocast + channels-last on CUDA,
atomic per-epoch checkpoints (epoch 0 = initialisation), per-sample statistics, exact resume.

Writes the run record (`utils.runs`): run.json + record.npz once, epoch_XXX.pt every
`train.checkpoint_every` epochs, resume.pt every epoch, stats/epoch_XXX.npz every `train.stats_every`
epochs and train_stats.npz at the end. Rank 0 decides everything that depends on the file system
(fresh run or resume, and from where) and broadcasts it. Extension points (online curvature scoring,
gradient accounting, spectra at given steps) are `utils.callbacks.Callback` objects, passed to `train` or made
from the config by a registered factory (`utils.callbacks.register_callbacks`).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .callbacks import Callback, TrainState, check_switches, configured_callbacks
from .config import given_keys, identity_hash
from .data import build_data, make_loader
from .device_data import device_loader
from .distributed import Dist, all_reduce_sum, barrier, broadcast, broadcast_object, convert_sync_batchnorm, setup
from .errors import UserError
from .evaluate import autocast, evaluate
from .faults import fault_point
from .io import load_npz, reap_temporaries, save_npz
from .models import check_model, check_wrappers, forward, per_sample_loss
from .runs import (
    checkpoint_path,
    describe_diff,
    list_checkpoints,
    load_checkpoint,
    model_dtype,
    model_for,
    read_run_record,
    run_dir,
    save_checkpoint,
    stack_stats,
    stats_path,
    verify_epoch_files,
    write_run_record,
)
from .waits import bounded, set_stage, waiting

__all__ = ["Callback", "TrainState", "train", "main"]


OPTIMIZERS = ("sgd", "adamw")  # train.optimizer (checked by _check before any data is loaded)


def _optimizer(cfg: dict[str, Any], model: nn.Module) -> torch.optim.Optimizer:
    """`train.optimizer`: sgd (momentum, nesterov, L2 weight decay) or adamw (decoupled weight decay)."""
    t = cfg["train"]
    if t["optimizer"] == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=t["lr"], weight_decay=t["weight_decay"])
    return torch.optim.SGD(model.parameters(), lr=t["lr"], momentum=t["momentum"], weight_decay=t["weight_decay"],
                           nesterov=t["nesterov"])


def _scheduler(cfg: dict[str, Any], optimizer: torch.optim.Optimizer, steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step schedule: linear warm-up over `train.warmup_epochs`, then x gamma at each milestone epoch."""
    t = cfg["train"]
    warm = max(1, round(t["warmup_epochs"] * steps_per_epoch))
    marks = [m * steps_per_epoch for m in sorted(t["milestones"])]

    def factor(step: int) -> float:
        f = t["gamma"] ** sum(step >= m for m in marks)
        return f * min(1.0, (step + 1) / warm) if t["warmup_epochs"] > 0 else f

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _epoch_metrics(stats: dict[str, torch.Tensor], test: dict[str, torch.Tensor], record: dict[str, Any]) -> dict[str, float]:
    out = {"test_loss": float(test["loss"].mean()), "test_acc": float(test["correct"].float().mean())}
    if stats:
        noisy = record["is_noisy"].numpy()
        corr = stats["correct"].numpy()
        out["train_loss"] = float(stats["loss"].mean())
        out["train_acc"] = float(corr.mean())
        out["clean_acc"] = float(corr[~noisy].mean()) if (~noisy).any() else float("nan")
        out["noisy_acc"] = float(corr[noisy].mean()) if noisy.any() else float("nan")
    return out


def _decide_start(cfg: dict[str, Any], rdir: Path, ident: str) -> tuple[str, Any]:
    """Rank 0: ("fresh", None), ("resume", resume-state dict) or ("error", message)."""
    try:
        if not list_checkpoints(rdir):
            return "fresh", None
        if not cfg["resume"]:
            return "error", f"{rdir} already holds checkpoints; pass resume=true to continue it or run=<new name>"
        recorded, _, rec_ident = read_run_record(rdir)
        if rec_ident != ident:
            return "error", (f"run {cfg['run']!r} in {rdir} was trained with another config ({describe_diff(recorded, cfg)}); "
                             "to continue it, repeat its overrides; for a new run pass run=<new name>")
        path = rdir / "resume.pt"
        if not path.is_file():  # format-1 runs resume from their newest checkpoint
            path = list_checkpoints(rdir)[-1][1]
        state = load_checkpoint(path)
        if "optimizer" not in state:
            return "error", f"{path} holds no optimizer state, so {rdir} cannot be resumed; train a new run=<name>"
        done = int(state["epoch"])  # what resume.pt says was written (older runs: the files present, epoch 0)
        saved = state.get("saved_epochs") or sorted({0} | {e for e, _ in list_checkpoints(rdir) if e <= done})
        saved = [e for e in saved if e <= done]
        verify_epoch_files(rdir, saved, f"{path.name} at epoch {done}")
        return "resume", {**state, "saved_epochs": saved}
    except UserError as e:
        return "error", str(e)


def _note_stale_stats(rdir: Path, stats: bool) -> None:
    """Say so when a resumed run's train_stats.npz is unreadable: the end of this run rebuilds it from stats/."""
    whole = rdir / "train_stats.npz"
    if whole.is_file() and stats and (rdir / "stats").is_dir():
        try:
            load_npz(whole, keys=("epochs",))
        except UserError:
            print(f"{whole} is corrupt or truncated: rebuilt from {rdir / 'stats'}/ at the end of this run", flush=True)


def _sync_buffers(model: nn.Module, dist: Dist) -> None:
    """Rank 0's BatchNorm statistics (and other buffers) on every rank before evaluating / saving."""
    if dist.world > 1:
        for b in model.buffers():
            broadcast(b, "broadcast of the BatchNorm buffers from rank 0")


def _save(state: TrainState, rdir: Path, ident: str, metrics: dict[str, Any], keep_epoch: bool,
          saved: list[int]) -> None:
    """epoch_XXX.pt (weights) when `keep_epoch`, then resume.pt (weights + optimizer + scheduler + `saved`, the
    epochs whose files exist: what a resume verifies). In this order, a kill between the two leaves resume.pt one
    epoch back, never claiming a file that was not written."""
    head = {"epoch": state.epoch, "step": state.step, "model": state.model.state_dict()}
    if keep_epoch:
        save_checkpoint(checkpoint_path(rdir, state.epoch), {**head, "metrics": metrics})
        saved.append(state.epoch)
    save_checkpoint(rdir / "resume.pt", {**head, "optimizer": state.optimizer.state_dict(),
                                         "scheduler": state.scheduler.state_dict(), "identity": ident,
                                         "saved_epochs": sorted(set(saved))})


def _write_stats(rdir: Path, epoch: int, stats: dict[str, torch.Tensor], metrics: dict[str, Any]) -> None:
    save_npz(stats_path(rdir, epoch), epoch=np.int64(epoch), loss=stats["loss"].numpy().astype(np.float32),
             correct=stats["correct"].numpy().astype(bool), margin=stats["margin"].numpy().astype(np.float32),
             other=stats["other"].numpy().astype(np.int32), other_prob=stats["other_prob"].numpy().astype(np.float32),
             test_loss=np.float32(metrics["test_loss"]), test_acc=np.float32(metrics["test_acc"]))


def init_from_run(cfg: dict[str, Any], model: nn.Module) -> None:
    """train.init=<run>: load that run's final weights into `model` (same architecture and classes), and record the
    run's identity in train.init_identity (refused when it changed since this run was started)."""
    t = cfg["train"]
    rdir = Path(cfg["paths"]["pretrained"]) / t["init"]
    ckpts = list_checkpoints(rdir)
    if not ckpts or not (rdir / "run.json").is_file():
        raise UserError(f"train.init={t['init']!r}: no trained run in {rdir}; train it first or set paths.pretrained")
    _, _, ident = read_run_record(rdir)
    if t["init_identity"] not in ("", ident):
        raise UserError(f"train.init run {t['init']!r} now has identity {ident}, not the recorded {t['init_identity']}: "
                        "it was retrained; start this run under a new name")
    state = load_checkpoint(ckpts[-1][1])["model"]
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[1 if len(str(e).splitlines()) > 1 else 0].strip()[:200]
        raise UserError(f"train.init={t['init']!r}: its weights do not fit this model ({first}); use a run of the "
                        "same model.* and number of classes") from None
    t["init_identity"] = ident


def _build(cfg: dict[str, Any], dist: Dist) -> tuple[TrainState, Any]:
    t = cfg["train"]
    torch.manual_seed(t["seed"])
    data = build_data(cfg)
    torch.manual_seed(t["seed"])  # the initialisation depends on train.seed only
    model = model_for(cfg, data.record)
    if t["init"]:
        init_from_run(cfg, model)
    if dist.world > 1 and t["sync_bn"]:
        model = convert_sync_batchnorm(model, dist.device)  # BN statistics of the global batch
    model = model.to(dist.device)
    if dist.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest convolution algorithms once
    if cfg["data"]["on_device"]:  # uint8 images on the device, batches cropped / flipped there (utils.device_data)
        data, loader = device_loader(data, t["batch_size"], seed=t["seed"], rank=dist.rank, world=dist.world,
                                     device=dist.device)
    else:
        loader = make_loader(data.train, t["batch_size"], shuffle=True, seed=t["seed"], rank=dist.rank,
                             world=dist.world, num_workers=cfg["data"]["num_workers"])
    optimizer = _optimizer(cfg, model)
    scheduler = _scheduler(cfg, optimizer, len(loader))
    net = model
    if dist.world > 1:
        ids = [dist.local_rank] if dist.device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if t["compile"]:  # the training forward only; evaluation and scoring (double backward) use the eager model
        net = torch.compile(net)
    return TrainState(cfg, dist, data, model, net, optimizer, scheduler), loader


def log_path(cfg: dict[str, Any]) -> Path:
    """<paths.logs>/<run>.jsonl: one JSON line per epoch (epoch, step, lr, losses, accuracies, time)."""
    return Path(cfg["paths"]["logs"]) / f"{cfg['run']}.jsonl"


def _check(cfg: dict[str, Any]) -> None:
    t = cfg["train"]
    if t["epochs"] < 1 and t["max_steps"] < 1:
        raise UserError(f"train.epochs={t['epochs']}: train at least one epoch (or set train.max_steps > 0)")
    for key in ("batch_size", "checkpoint_every", "stats_every", "log_every", "eval_batch_size"):
        if t[key] < 1:
            raise UserError(f"train.{key} must be >= 1, got {t[key]}")
    if t["optimizer"] not in OPTIMIZERS:
        raise UserError(f"train.optimizer must be sgd or adamw, got {t['optimizer']!r}")
    if model_dtype(cfg) == torch.float64 and t["amp"] and torch.cuda.is_available():
        raise UserError("train.dtype=float64 with train.amp=true: bf16 autocast would round the float64 model's "
                        "products on CUDA; pass train.amp=false (on the CPU amp is ignored)")
    check_model(cfg["model"], set(given_keys(cfg)))  # before any data is loaded: a typo never waits for a download
    check_wrappers(cfg["model"])
    check_switches(cfg)


def train(cfg: dict[str, Any], callbacks: list[Callback] | tuple = ()) -> Path:
    """Train the configured run; returns its directory `pretrained/<run>/`."""
    _check(cfg)
    dist = setup(cfg)
    set_stage("training")
    t = cfg["train"]
    state, loader = _build(cfg, dist)
    model, optimizer, data = state.model, state.optimizer, state.data
    rdir, ident = run_dir(cfg), identity_hash(cfg)
    log = log_path(cfg)
    steps_per_epoch = len(loader)
    epochs = math.ceil(t["max_steps"] / steps_per_epoch) if t["max_steps"] else t["epochs"]
    total_steps = t["max_steps"] or epochs * steps_per_epoch

    if dist.is_main:
        reap_temporaries(rdir)
    kind, payload = broadcast_object(_decide_start(cfg, rdir, ident) if dist.is_main else None)
    if kind == "error":
        raise UserError(payload)
    saved: list[int] = []  # epochs whose epoch_XXX.pt exists (rank 0 keeps it; resume.pt records it)
    if kind == "resume":
        saved = list(payload["saved_epochs"])  # as verified by _decide_start
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        state.scheduler.load_state_dict(payload["scheduler"])
        state.epoch, state.step = int(payload["epoch"]), int(payload["step"])
    elif dist.is_main:
        write_run_record(rdir, cfg, data.record, ident)
        _save(state, rdir, ident, {}, keep_epoch=True, saved=saved)
        log.unlink(missing_ok=True)  # a fresh run's log holds that run only (the ESM grid retrains in place)
    barrier()
    if dist.is_main and kind == "resume":
        print(f"resuming {cfg['run']} from epoch {state.epoch} (step {state.step})", flush=True)
        _note_stale_stats(rdir, t["stats"])
    callbacks = list(callbacks) + configured_callbacks(cfg)  # e.g. the online scorer (score.online=true)
    for cb in callbacks:
        cb.on_train_start(state)

    bar = tqdm(total=total_steps, initial=min(state.step, total_steps), desc=cfg["run"], disable=not dist.is_main,
               dynamic_ncols=True)
    k, workers, dtype = t["log_every"], cfg["data"]["num_workers"], model_dtype(cfg)
    for epoch in range(state.epoch + 1, epochs + 1):
        if state.stop or state.step >= total_steps:
            break
        t0 = time.time()
        torch.manual_seed(t["seed"] * 7919 + epoch)  # augmentation / dropout / worker seeds, fixed per epoch
        loader.batch_sampler.set_epoch(epoch)
        sizes = [len(b) for b in loader.batch_sampler.global_batches()]
        model.train()
        running = torch.zeros(2, dtype=torch.float64, device=dist.device)  # (loss sum, count) on the device
        for i, ((idx, x, y), gsize) in enumerate(zip(bounded(loader), sizes)):
            idx, y = idx.to(dist.device, non_blocking=True), y.to(dist.device, non_blocking=True)
            x = x.to(dist.device, non_blocking=True)
            if x.is_floating_point() and x.dtype != dtype:  # train.dtype=float64: exact up-cast of the batch
                x = x.to(dtype)
            if dist.device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(dist.device, t["amp"]), waiting(f"step {state.step + 1}: forward (BatchNorm all-reduce)"):
                losses = per_sample_loss(forward(state.net, x, idx), y)
            loss = losses.sum() * (dist.world / gsize)
            for cb in callbacks:
                cb.on_batch_loss(state, losses, idx, loss)
            running[0] += losses.detach().sum().double()
            running[1] += len(y)
            optimizer.zero_grad(set_to_none=True)
            with waiting(f"step {state.step + 1}: backward (gradient all-reduce)"):
                loss.backward()
            optimizer.step()
            state.scheduler.step()
            state.step += 1
            fault_point("step")
            if (i + 1) % k == 0 or i + 1 == len(sizes) or state.step >= total_steps:  # one host sync every k steps
                with waiting(f"step {state.step}: the steps' collectives (host sync)"):
                    mean = float(running[0] / running[1])
                if not math.isfinite(mean):
                    last = list_checkpoints(rdir)[-1][1]
                    bar.close()
                    raise UserError(f"non-finite loss in epoch {epoch} (by step {state.step}); last good checkpoint "
                                    f"{last}; lower train.lr (or set train.amp=false)")
                bar.update(min(state.step, total_steps) - bar.n)
                bar.set_postfix(loss=f"{mean:.3f}", refresh=False)
            for cb in callbacks:
                cb.on_step_end(state)
            if state.step >= total_steps:
                state.stop = True
            if state.stop:
                break
        state.epoch = epoch
        _sync_buffers(model, dist)
        bs = t["eval_batch_size"]
        last_epoch = state.stop or epoch == epochs
        want_stats = t["stats"] and (epoch % t["stats_every"] == 0 or last_epoch)
        stats = evaluate(model, data.train_eval, dist, bs, desc="stats", num_workers=workers) if want_stats else {}
        test = evaluate(model, data.test, dist, bs, desc="test", num_workers=workers)
        all_reduce_sum(running, "all-reduce of the epoch's training loss")  # one all-reduce per epoch
        metrics = {"epoch": epoch, "step": state.step, "lr": optimizer.param_groups[0]["lr"],
                   "aug_loss": float(running[0] / max(float(running[1]), 1)),
                   **_epoch_metrics(stats, test, data.record), "time": time.time() - t0}
        if dist.is_main:
            if stats:
                _write_stats(rdir, epoch, stats, metrics)
            _save(state, rdir, ident, metrics, keep_epoch=epoch % t["checkpoint_every"] == 0 or last_epoch, saved=saved)
            log.parent.mkdir(parents=True, exist_ok=True)
            with open(log, "a") as f:
                f.write(json.dumps(metrics) + "\n")
            bar.write(" ".join(f"{k_}={v:.4g}" if isinstance(v, float) else f"{k_}={v}" for k_, v in metrics.items()))
        for cb in callbacks:
            cb.on_epoch_end(state, metrics)
        barrier()
    bar.close()
    if dist.is_main and t["stats"] and (rdir / "stats").is_dir():
        save_npz(rdir / "train_stats.npz", **stack_stats(rdir))  # all epochs in one file (rebuilt by every run)
    barrier()
    return rdir


def main(cfg: dict[str, Any]) -> None:
    """Entry point of the train_*.py scripts: trains, then prints where everything went."""
    rdir = train(cfg)
    if setup().is_main:
        log = log_path(cfg)
        lines = log.read_text().splitlines() if log.is_file() else []
        last = json.loads(lines[-1]) if lines else {}
        acc = " ".join(f"{k}={last[k]:.4f}" for k in ("clean_acc", "noisy_acc", "test_acc") if k in last)
        print(f"trained {cfg['run']}: epoch {last.get('epoch', '?')} {acc}\n"
              f"written: {rdir}/ (run.json, record.npz, epoch_*.pt, resume.pt, stats/, train_stats.npz), {log}")

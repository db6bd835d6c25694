"""The training loop: DDP/torchrun or one process, bf16 autocast + channels-last on CUDA,
per-epoch atomic checkpoints (epoch 0 = initialisation), per-sample statistics, resume.

Extension points for other modules (gradient accounting, spectra at given steps) are
`Callback` objects; the loop itself never learns about them.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .checkpoint import (
    checkpoint_path,
    list_checkpoints,
    load_checkpoint,
    record_to_numpy,
    run_dir,
    save_checkpoint,
    save_npz,
)
from .config import identity_hash
from .data import DataBundle, build_data, make_loader
from .distributed import Dist, all_reduce_sum, barrier, setup
from .errors import UserError
from .evaluate import autocast, evaluate
from .example_tied_dropout import wrap_if_configured
from .models import build_model, forward, per_sample_loss


@dataclass
class TrainState:
    cfg: dict[str, Any]
    dist: Dist
    data: DataBundle
    model: nn.Module  # the bare model (what checkpoints hold)
    net: nn.Module  # what forward passes use: the DDP wrapper or the model itself
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    epoch: int = 0
    step: int = 0
    stop: bool = False  # a callback may set this to end training after the current step
    extra: dict[str, Any] = field(default_factory=dict)


class Callback:
    """Hooks into the loop; override what you need. `losses` are per-sample (B,), before backward."""

    def on_train_start(self, state: TrainState) -> None: ...
    def on_batch_loss(self, state: TrainState, losses: torch.Tensor, index: torch.Tensor, loss: torch.Tensor) -> None: ...
    def on_step_end(self, state: TrainState) -> None: ...
    def on_epoch_end(self, state: TrainState, metrics: dict[str, Any]) -> None: ...


def model_for(cfg: dict[str, Any], record: dict[str, Any]) -> nn.Module:
    """Build the configured model for a dataset record (no weights loaded)."""
    m = cfg["model"]
    model = build_model(m["name"], record["num_classes"], record["in_channels"], record["image_size"],
                        m["width"], m["activation"])
    return wrap_if_configured(model, m)  # example-tied dropout when model.etd_p_mem > 0


def load_model(ckpt: dict[str, Any], device: torch.device | str = "cpu") -> nn.Module:
    """The model of a checkpoint, weights loaded, in eval mode."""
    model = model_for(ckpt["config"], ckpt["record"])
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval()


def _optimizer(cfg: dict[str, Any], model: nn.Module) -> torch.optim.Optimizer:
    t = cfg["train"]
    return torch.optim.SGD(model.parameters(), lr=t["lr"], momentum=t["momentum"], weight_decay=t["weight_decay"],
                           nesterov=t["nesterov"])


def _epoch_metrics(stats: dict[str, torch.Tensor], test: dict[str, torch.Tensor], record: dict[str, Any]) -> dict[str, float]:
    noisy = record["is_noisy"].numpy()
    corr = stats["correct"].numpy() if stats else None
    out = {"test_loss": float(test["loss"].mean()), "test_acc": float(test["correct"].float().mean())}
    if corr is not None:
        out["train_loss"] = float(stats["loss"].mean())
        out["train_acc"] = float(corr.mean())
        out["clean_acc"] = float(corr[~noisy].mean()) if (~noisy).any() else float("nan")
        out["noisy_acc"] = float(corr[noisy].mean()) if noisy.any() else float("nan")
    return out


def _write_stats(path: Path, rows: list[dict[str, Any]], record: dict[str, Any]) -> None:
    save_npz(
        path,
        epochs=np.array([r["epoch"] for r in rows], np.int64),
        loss=np.stack([r["loss"] for r in rows]).astype(np.float32),
        correct=np.stack([r["correct"] for r in rows]).astype(bool),
        margin=np.stack([r["margin"] for r in rows]).astype(np.float32),
        test_loss=np.array([r["test_loss"] for r in rows], np.float32),
        test_acc=np.array([r["test_acc"] for r in rows], np.float32),
        **record_to_numpy(record),
    )


def _load_stats(path: Path, upto: int) -> list[dict[str, Any]]:
    if upto == 0:
        return []
    if not path.is_file():
        raise UserError(f"{path} is missing but checkpoints exist; delete the run directory to retrain")
    with np.load(path, allow_pickle=False) as z:
        keep = z["epochs"] <= upto
        return [{"epoch": int(e), "loss": z["loss"][i], "correct": z["correct"][i], "margin": z["margin"][i],
                 "test_loss": float(z["test_loss"][i]), "test_acc": float(z["test_acc"][i])}
                for i, e in enumerate(z["epochs"]) if keep[i]]


def _resume(state: TrainState, rdir: Path, ident: str) -> int:
    """Load the newest checkpoint into `state`; return its epoch (0 if there is none)."""
    ckpts = list_checkpoints(rdir)
    if not ckpts:
        return -1
    if not state.cfg["resume"]:
        raise UserError(f"{rdir} already holds checkpoints; pass resume=true to continue it or run=<new name>")
    epoch, path = ckpts[-1]
    ckpt = load_checkpoint(path)
    if ckpt.get("identity") != ident:
        raise UserError(f"{path} was written by a different config (data/noise/model/train keys differ); "
                        f"use another run=<name> or delete {rdir}")
    if not torch.equal(ckpt["record"]["given_labels"], state.data.record["given_labels"]):
        raise UserError(f"{path} holds other labels than this dataset gives; use another run=<name> or delete {rdir}")
    state.model.load_state_dict(ckpt["model"])
    state.optimizer.load_state_dict(ckpt["optimizer"])
    state.scheduler.load_state_dict(ckpt["scheduler"])
    state.epoch, state.step = int(ckpt["epoch"]), int(ckpt["step"])
    return epoch


def _save(state: TrainState, rdir: Path, ident: str, metrics: dict[str, Any]) -> None:
    save_checkpoint(checkpoint_path(rdir, state.epoch), {
        "model": state.model.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict(),
        "rng": {"torch": torch.get_rng_state()},
        "epoch": state.epoch,
        "step": state.step,
        "config": state.cfg,
        "identity": ident,
        "record": state.data.record,
        "metrics": metrics,
    })


def train(cfg: dict[str, Any], callbacks: list[Callback] | tuple = ()) -> Path:
    """Train the configured run; returns its directory `pretrained/<run>/`."""
    dist = setup()
    t = cfg["train"]
    torch.manual_seed(t["seed"])
    data = build_data(cfg)
    torch.manual_seed(t["seed"])  # the initialisation depends on train.seed only
    model = model_for(cfg, data.record).to(dist.device)
    if dist.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = _optimizer(cfg, model)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, t["milestones"], t["gamma"])
    net = model
    if dist.world > 1:
        ids = [dist.local_rank] if dist.device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    state = TrainState(cfg, dist, data, model, net, optimizer, scheduler)
    rdir, ident = run_dir(cfg), identity_hash(cfg)
    stats_path, log_path = rdir / "train_stats.npz", Path(cfg["paths"]["logs"]) / f"{cfg['run']}.jsonl"

    start = _resume(state, rdir, ident)
    rows = _load_stats(stats_path, max(start, 0))
    if start < 0:
        if dist.is_main:
            _save(state, rdir, ident, {})
        start = 0
    barrier()
    for cb in callbacks:
        cb.on_train_start(state)

    loader = make_loader(data.train, t["batch_size"], shuffle=True, seed=t["seed"], rank=dist.rank,
                         world=dist.world, num_workers=cfg["data"]["num_workers"])
    amp = t["amp"]
    epochs = t["epochs"]
    bar = tqdm(total=epochs * len(loader), initial=start * len(loader), desc=cfg["run"], disable=not dist.is_main,
               dynamic_ncols=True)
    for epoch in range(start + 1, epochs + 1):
        if state.stop:
            break
        t0 = time.time()
        torch.manual_seed(t["seed"] * 7919 + epoch)  # augmentation / dropout stream, fixed per epoch
        loader.batch_sampler.set_epoch(epoch)
        sizes = [len(b) for b in loader.batch_sampler.global_batches()]
        model.train()
        running = torch.zeros(2, dtype=torch.float64, device=dist.device)
        for (idx, x, y), gsize in zip(loader, sizes):
            idx, y = idx.to(dist.device), y.to(dist.device)
            x = x.to(dist.device, non_blocking=True)
            if dist.device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(dist.device, amp):
                losses = per_sample_loss(forward(net, x, idx), y)
            loss = losses.sum() * (dist.world / gsize)
            for cb in callbacks:
                cb.on_batch_loss(state, losses, idx, loss)
            count = torch.tensor(len(y), device=dist.device, dtype=torch.float64)
            step_sum = all_reduce_sum(torch.stack([losses.detach().sum().double(), count]))
            if not torch.isfinite(step_sum[0]):
                last = list_checkpoints(rdir)[-1][1]
                raise UserError(f"non-finite loss at epoch {epoch} step {state.step + 1}; last good checkpoint {last}; "
                                "lower train.lr (or set train.amp=false)")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            state.step += 1
            running += step_sum
            bar.update(1)
            bar.set_postfix(loss=f"{float(running[0] / running[1]):.3f}", refresh=False)
            for cb in callbacks:
                cb.on_step_end(state)
            if t["max_steps"] and state.step >= t["max_steps"]:
                state.stop = True
            if state.stop:
                break
        scheduler.step()
        state.epoch = epoch

        bs = t["eval_batch_size"]
        stats = evaluate(model, data.train_eval, dist, bs, amp, desc="stats") if t["stats"] else {}
        test = evaluate(model, data.test, dist, bs, amp, desc="test")
        metrics = {"epoch": epoch, "step": state.step, "lr": optimizer.param_groups[0]["lr"],
                   "aug_loss": float(running[0] / max(running[1], 1)), **_epoch_metrics(stats, test, data.record),
                   "time": time.time() - t0}
        if dist.is_main:
            if stats:
                rows.append({"epoch": epoch, "loss": stats["loss"].numpy(), "correct": stats["correct"].numpy(),
                             "margin": stats["margin"].numpy(), "test_loss": metrics["test_loss"],
                             "test_acc": metrics["test_acc"]})
                _write_stats(stats_path, rows, data.record)
            if epoch % t["checkpoint_every"] == 0 or epoch == epochs or state.stop:
                _save(state, rdir, ident, metrics)
            log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(log_path, "a") as f:
                f.write(json.dumps(metrics) + "\n")
            msg = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
            bar.write(msg)
        for cb in callbacks:
            cb.on_epoch_end(state, metrics)
        barrier()
    bar.close()
    return rdir


def main(cfg: dict[str, Any]) -> None:
    """Entry point of the train_*.py scripts."""
    train(cfg)

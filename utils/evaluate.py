"""Sharded per-sample passes over a dataset (evaluation, training statistics, scoring)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from .data import shard_range
from .distributed import Dist, gather_shards
from .models import forward, per_sample_loss


def sharded_map(dataset, fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], dict[str, torch.Tensor]],
                dist: Dist, batch_size: int, desc: str = "", num_workers: int = 0,
                progress: bool = True) -> dict[str, torch.Tensor]:
    """Apply `fn(index, x, y) -> {name: (B, ...)}` to this rank's contiguous shard of `dataset`
    and return the full (N, ...) arrays (on CPU) on every rank, in index order."""
    n = len(dataset)
    shard = shard_range(n, dist.rank, dist.world)
    loader = DataLoader(Subset(dataset, list(shard)), batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=dist.device.type == "cuda")
    parts: dict[str, list[torch.Tensor]] = {}
    for idx, x, y in tqdm(loader, desc=desc, disable=not (progress and dist.is_main), leave=False):
        out = fn(idx.to(dist.device), x.to(dist.device, non_blocking=True), y.to(dist.device, non_blocking=True))
        for k, v in out.items():
            parts.setdefault(k, []).append(v.detach())
    result = {}
    for k, v in parts.items():
        local = torch.cat(v) if v else torch.empty(0)
        result[k] = gather_shards(local, n).cpu()
    return result


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA, a no-op context on CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=enabled and device.type == "cuda")


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset, dist: Dist, batch_size: int = 512, amp: bool = True,
             keep_logits: bool = False, desc: str = "eval", progress: bool = False) -> dict[str, torch.Tensor]:
    """Per-sample `loss`, `correct` (w.r.t. the dataset's given label), `margin` (given-label logit
    minus the largest other logit) and optionally `logits`, all (N, ...) in index order."""
    was_training = model.training
    model.eval()

    def fn(idx, x, y):
        with autocast(dist.device, amp):
            logits = forward(model, x).float()
        other = logits.scatter(1, y[:, None], float("-inf")).amax(1)
        given = logits.gather(1, y[:, None]).squeeze(1)
        out = {"loss": per_sample_loss(logits, y), "correct": logits.argmax(1) == y, "margin": given - other}
        if keep_logits:
            out["logits"] = logits
        return out

    out = sharded_map(dataset, fn, dist, batch_size, desc=desc, progress=progress)
    model.train(was_training)
    return out

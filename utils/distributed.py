"""torchrun / DDP set-up (NCCL on CUDA, gloo on CPU), rank-0 decisions broadcast, the sharded map over a data set.

Every collective here is a bounded wait (`utils.waits`): `dist.timeout_s` seconds, then one `error:` line naming
the rank, the stage and the wait, and exit status 3; the process group's own timeout is a backstop behind it."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from . import waits
from .waits import bounded, stage, waiting
from .workers import loader_options


@dataclass
class Dist:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(cfg: dict[str, Any] | None = None) -> Dist:
    """Initialise the process group when launched by torchrun; a plain process is world size 1.

    `cfg` (a stage's config) sets `dist.timeout_s`, the deadline of every wait (`utils.waits`); give it on the
    first call, before the process group exists (later calls return the same group)."""
    if cfg is not None:
        waits.configure(cfg.get("dist", {}).get("timeout_s"))
    cuda = torch.cuda.is_available()
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        local = int(os.environ.get("LOCAL_RANK", 0))
        if cuda:
            torch.cuda.set_device(local)
        if not dist.is_initialized():
            _init_process_group("nccl" if cuda else "gloo")
        device = torch.device("cuda", local) if cuda else torch.device("cpu")
        waits.configure(rank=dist.get_rank())
        return Dist(dist.get_rank(), dist.get_world_size(), local, device)
    return Dist(0, 1, 0, torch.device("cuda" if cuda else "cpu"))


def backend_timeout() -> timedelta:
    """The process group's own timeout: a backstop behind the watchdog's `dist.timeout_s` (which fires first and
    names the wait; NCCL's watchdog would abort the process with its own message)."""
    t = waits.timeout_s()
    return timedelta(seconds=t + max(60.0, 0.1 * t))


def _init_process_group(backend: str) -> None:
    """`init_process_group` from torchrun's environment. A worker restarted by `torchrun --max-restarts` joins
    under a key prefix of its attempt: the agent's store can still hold the previous attempt's addresses, and a
    rank that reads its dead peer's address fails to connect ("Connection refused": 8 of 12 restarts failed
    on gloo before this, 0 of 6 after; RESULTS.md, "Faults survived")."""
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    if attempt == 0:
        dist.init_process_group(backend, timeout=backend_timeout())
        return
    from torch.distributed.rendezvous import rendezvous

    store, rank, world = next(rendezvous("env://", timeout=backend_timeout()))
    dist.init_process_group(backend, store=dist.PrefixStore(f"toolkit/attempt_{attempt}", store), rank=rank,
                            world_size=world, timeout=backend_timeout())


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def settle(t: torch.Tensor) -> None:
    """Wait here for a collective on `t` (NCCL returns before it is done): a bounded wait waits inside its block."""
    if t.is_cuda:
        torch.cuda.current_stream(t.device).synchronize()


def barrier(what: str = "barrier") -> None:
    if dist.is_initialized():
        with waiting(what):
            dist.barrier()


def all_reduce_sum(t: torch.Tensor, what: str = "all-reduce") -> torch.Tensor:
    """Sum a tensor over ranks in place (no-op for one process)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        with waiting(what):
            dist.all_reduce(t)
            settle(t)
    return t


def broadcast(t: torch.Tensor, what: str = "broadcast from rank 0") -> None:
    """Rank 0's tensor `t` on every rank, in place."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        with waiting(what):
            dist.broadcast(t, 0)
            settle(t)


def broadcast_object(obj: object, what: str = "broadcast from rank 0") -> object:
    """Rank 0's Python object on every rank: rank 0 decides (lists a directory, checks a file), all follow."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return obj
    box = [obj]
    with waiting(what):
        dist.broadcast_object_list(box, src=0)
    return box[0]


def shard_range(n: int, rank: int, world: int) -> range:
    """Contiguous block of [0, n) owned by `rank`."""
    per = -(-n // world)
    return range(min(rank * per, n), min((rank + 1) * per, n))


def batch_rows(n: int, batch_size: int, rank: int, world: int) -> range:
    """Rows of this rank's contiguous block of the global batches [k*bs, (k+1)*bs) of n samples: every
    sample is computed in the same batch whatever the number of ranks (bit-identical shards)."""
    b = shard_range(-(-n // batch_size), rank, world)
    return range(b.start * batch_size, min(b.stop * batch_size, n))


def sharded_map(dataset: Any, fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], dict[str, torch.Tensor]],
                d: Dist, batch_size: int, *, desc: str = "", num_workers: int = 0, progress: bool = False,
                on_batch: Callable[[], None] | None = None) -> dict[str, torch.Tensor]:
    """Apply `fn(index, x, y) -> {name: (B, ...)}` to this rank's batches of `dataset` and return the full
    (N, ...) tensors (CPU, index order) on every rank.

    Ranks split the data set at batch boundaries (`batch_rows`), so results do not depend on the number
    of ranks. A rank with no rows still joins every collective with empty tensors of the right dtype and
    shape (taken from a rank that has rows). A data set with a `device_batch(index) -> (x, y)` method
    (`utils.device_data.DeviceDataset`) makes its batches on the device, without a DataLoader. Waits (each batch,
    each gather) name `desc` as their stage (`utils.waits`)."""
    with stage(desc) if desc else contextlib.nullcontext():
        return _sharded_map(dataset, fn, d, batch_size, desc, num_workers, progress, on_batch)


def _sharded_map(dataset: Any, fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], dict[str, torch.Tensor]],
                 d: Dist, batch_size: int, desc: str, num_workers: int, progress: bool,
                 on_batch: Callable[[], None] | None) -> dict[str, torch.Tensor]:
    n = len(dataset)
    rows = batch_rows(n, batch_size, d.rank, d.world)
    device_batch = getattr(dataset, "device_batch", None)
    loader: Any
    if device_batch is not None:
        index = torch.arange(rows.start, rows.start + len(rows), dtype=torch.int64, device=d.device)  # may be empty
        loader = ((i, *device_batch(i)) for i in index.split(batch_size) if len(i))
    else:
        loader = DataLoader(Subset(dataset, list(rows)), batch_size=batch_size, shuffle=False,
                            **{**loader_options(num_workers), "pin_memory": d.device.type == "cuda"})
    parts: dict[str, list[torch.Tensor]] = {}
    for idx, x, y in tqdm(bounded(loader), total=len(loader) if hasattr(loader, "__len__") else None, desc=desc,
                          disable=not (progress and d.is_main), leave=False):
        out = fn(idx.to(d.device), x.to(d.device, non_blocking=True), y.to(d.device, non_blocking=True))
        for k, v in out.items():
            parts.setdefault(k, []).append(v.detach())
        if on_batch is not None:
            on_batch()
    local = {k: torch.cat(v) for k, v in parts.items()}
    if d.world == 1:
        return {k: v.cpu() for k, v in local.items()}
    spec = {k: (str(v.dtype), tuple(v.shape[1:])) for k, v in local.items()}
    specs = [None] * d.world
    with waiting("all-gather of the result shapes"):
        dist.all_gather_object(specs, spec)
    spec = next((s for s in specs if s), {})
    lengths = [len(batch_rows(n, batch_size, r, d.world)) for r in range(d.world)]
    result = {}
    for k, (dtype, shape) in sorted(spec.items()):
        dt = getattr(torch, dtype.replace("torch.", ""))
        mine = local.get(k, torch.empty((0, *shape), dtype=dt, device=d.device))
        pad = torch.zeros((max(lengths), *shape), dtype=dt, device=d.device)
        pad[: len(mine)] = mine
        gathered = [torch.empty_like(pad) for _ in range(d.world)]
        with waiting(f"all-gather of {k!r}"):
            dist.all_gather(gathered, pad)
            result[k] = torch.cat([g[:m] for g, m in zip(gathered, lengths)]).cpu()
    return result


class GlobalBatchNorm(nn.BatchNorm2d):
    """BatchNorm over the global batch of all ranks on any backend (torch's SyncBatchNorm is CUDA-only).

    Training mode: per-channel sums of x and x^2 and the sample count are all-reduced with a differentiable
    all-reduce, so the forward normalises with the global batch statistics and the backward carries every
    rank's loss back through them (DDP then averages the gradients, as with SyncBatchNorm). Running statistics
    follow nn.BatchNorm2d (unbiased variance, momentum). Eval mode and one process: plain BatchNorm. The state
    dict is BatchNorm2d's, so checkpoints load into the unconverted model."""

    def _check_input_dim(self, x: torch.Tensor) -> None:  # BatchNorm1d / 2d / 3d inputs alike, as SyncBatchNorm
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        ct = torch.float64 if x.dtype == torch.float64 else torch.float32  # float64 models: float64 throughout
        xf = x.to(ct)
        mean, var, n = (t.to(ct) for t in global_moments(x.double(), all_reduce))
        c = x.shape[1]
        with torch.no_grad():
            self.num_batches_tracked += 1
            m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            self.running_mean.mul_(1 - m).add_(m * mean.detach())
            self.running_var.mul_(1 - m).add_(m * var.detach() * n / (n - 1).clamp_min(1))
        shape = (1, c) + (1,) * (x.dim() - 2)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


class GlobalBatchNormAct(GlobalBatchNorm):
    """`GlobalBatchNorm` followed by the `drop` and `act` modules of a norm + activation layer (timm's
    BatchNormAct2d), which it replaces in `convert_sync_batchnorm`."""

    def __init__(self, *args: Any, act: nn.Module, drop: nn.Module, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.drop, self.act = drop, act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(super().forward(x)))


def global_moments(x: torch.Tensor, reduce: Callable[[torch.Tensor], torch.Tensor]
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-channel mean (C,), biased variance (C,) and count () of x (N, C, ...) over every rank's batch, in two
    passes: the mean first, then the mean squared deviation from it. `reduce` sums a tensor over ranks (the
    differentiable all-reduce; identity for one process). The one-pass E[x^2] - E[x]^2 loses every digit of the
    variance in fp32 once |mean| / std nears 2^12 (issue 17); two passes cost one more all-reduce of C numbers."""
    dims = [0, *range(2, x.dim())]
    c = x.shape[1]
    count = torch.full((1,), x.numel() / max(c, 1), device=x.device, dtype=x.dtype)
    s = reduce(torch.cat([x.sum(dims), count]))
    n = s[c]
    mean = s[:c] / n
    shape = (1, c) + (1,) * (x.dim() - 2)
    var = reduce(((x - mean.view(shape)) ** 2).sum(dims)) / n
    return mean, var, n


_PLAIN_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def _norm_act(module: nn.Module) -> bool:
    """A BatchNorm subclass that also applies `drop` and `act` (timm's BatchNormAct2d and its kin)."""
    return isinstance(getattr(module, "act", None), nn.Module) and isinstance(getattr(module, "drop", None), nn.Module)


def _global_bn(child: nn.modules.batchnorm._BatchNorm, name: str) -> GlobalBatchNorm:
    """The GlobalBatchNorm of `child`, holding child's own Parameters and buffers (same tensors: dtype, device and
    an optimizer built before the conversion all stay valid), in child's train / eval mode."""
    if type(child) in _PLAIN_BN:
        new = GlobalBatchNorm(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats,
                              device="meta")
    elif _norm_act(child):
        new = GlobalBatchNormAct(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats,
                                 device="meta", act=child.act, drop=child.drop)
    else:
        from .errors import UserError

        raise UserError(f"train.sync_bn=true cannot convert {name} ({type(child).__name__}, a BatchNorm with its own "
                        "forward) to global-batch BatchNorm on this backend; pass train.sync_bn=false")
    for key in ("weight", "bias"):
        setattr(new, key, getattr(child, key))  # the Parameter itself (None without affine)
    for key in ("running_mean", "running_var", "num_batches_tracked"):
        setattr(new, key, getattr(child, key))
    new.train(child.training)
    return new


def convert_sync_batchnorm(model: nn.Module, device: torch.device, prefix: str = "") -> nn.Module:
    """BatchNorm -> global-batch BatchNorm: torch's SyncBatchNorm on CUDA (timm's converter where the model has
    timm's norm + activation layers), `GlobalBatchNorm` elsewhere (gloo). As torch's converter, the converted
    layers keep the module's own Parameters and buffers (the same tensor objects, so their dtype and device too);
    a root that is itself a BatchNorm is returned converted."""
    if device.type == "cuda":
        if any(_norm_act(m) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)):
            import timm.layers

            return timm.layers.convert_sync_batchnorm(model)
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if isinstance(model, nn.modules.batchnorm._BatchNorm) and not isinstance(model, GlobalBatchNorm):
        return _global_bn(model, prefix or "the model")
    for name, child in model.named_children():
        setattr(model, name, convert_sync_batchnorm(child, device, f"{prefix}.{name}" if prefix else name))
    return model

"""Per-sample evaluation passes (training statistics, test accuracy, predictions); logits in fp32."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from .distributed import Dist, sharded_map
from .faults import fault_point
from .models import forward, per_sample_loss


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA (training forward passes), a no-op context on CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=enabled and device.type == "cuda")


@contextlib.contextmanager
def fp32(device: torch.device | None = None) -> Iterator[None]:
    """Full fp32: autocast off and TF32 off (matmul and cuDNN) inside, restored afterwards.

    Every estimator that differences or squares small quantities (finite differences, Hessian-vector
    products, per-sample losses and margins) runs inside: TF32 rounds matmul inputs to 10 mantissa bits."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.autocast("cuda", enabled=False), torch.autocast("cpu", enabled=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset, dist: Dist, batch_size: int = 512, keep_logits: bool = False,
             desc: str = "eval", progress: bool = False, num_workers: int = 0) -> dict[str, torch.Tensor]:
    """Per-sample `loss`, `correct` (w.r.t. the dataset's given label), `margin` (given-label logit
    minus the largest other logit), `other` (that other class) and `other_prob` (its softmax probability) and
    optionally `logits`, all (N, ...) in index order. The predicted class is the given label where `correct`,
    else `other`; `other` is also the class a confusable sample is confused with.

    Always fp32 (float64 for float64 models) without TF32 (never under bf16 autocast): per-sample losses and margins are what the
    baselines rank by, and bf16 logits quantize them and flip ties."""
    was_training = model.training
    model.eval()

    def fn(idx, x, y):
        fault_point("stats")
        with fp32(dist.device):
            logits = forward(model, x)
        logits = logits if logits.dtype == torch.float64 else logits.float()  # float64 models: float64 logits
        other, oth = logits.scatter(1, y[:, None], float("-inf")).max(1)
        given = logits.gather(1, y[:, None]).squeeze(1)
        out = {"loss": per_sample_loss(logits, y), "correct": logits.argmax(1) == y, "margin": given - other,
               "other": oth, "other_prob": torch.softmax(logits, 1).gather(1, oth[:, None]).squeeze(1)}
        if keep_logits:
            out["logits"] = logits
        return out

    out = sharded_map(dataset, fn, dist, batch_size, desc=desc, progress=progress, num_workers=num_workers)
    model.train(was_training)
    return out


@torch.no_grad()
def predict(model: torch.nn.Module, dataset, dist: Dist, batch_size: int = 512, with_index: bool = False,
            num_workers: int = 0) -> torch.Tensor:
    """Predicted classes (N,) in index order; `with_index` passes the example indices to the model."""
    was = model.training
    model.eval()

    def fn(idx, x, y):
        with fp32(dist.device):
            return {"pred": forward(model, x, idx if with_index else None).argmax(1)}

    out = sharded_map(dataset, fn, dist, batch_size, num_workers=num_workers)["pred"]
    model.train(was)
    return out

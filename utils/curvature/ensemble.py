"""Many small MLPs trained at once as one batched ensemble (exact per-model SGD), on the CPU or a GPU.

The M models' weights are stacked into (M, in, out) tensors and every step is one batched matmul per
layer, so M = 200 two-layer MLPs on digits train in about a minute on one CPU core. Model m sees only the
samples where `masks[m]` is True, in its own shuffled order. Used by Feldman–Zhang memorization
(`utils.curvature.memorization`) and by the holdout stage's `mlp` method (`utils.holdout.stage`: model m trained on
its row of `utils.folds.membership`, predicting the samples it held out). Runs on the device of `x`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def train_matrix(ds: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """All un-augmented training inputs (N, C, H, W) and given labels (N,)."""
    x = torch.stack([ds[i][1] for i in range(len(ds))])
    return x, torch.as_tensor(ds.given_labels)


@dataclass
class MLPSpec:
    """A `in -> width -> width -> classes` ReLU MLP (the digits_mlp shape) and its SGD recipe."""

    width: int = 256
    epochs: int = 60
    lr: float = 0.1
    momentum: float = 0.9
    batch_size: int = 64
    weight_decay: float = 0.0


Params = list[torch.Tensor]  # [W1 (M,D,H), b1 (M,1,H), W2 (M,H,H), b2 (M,1,H), W3 (M,H,K), b3 (M,1,K)]


def init_params(m: int, d_in: int, width: int, k: int, generator: torch.Generator,
                dtype: torch.dtype = torch.float32) -> Params:
    """M independent initialisations, each distributed as torch.nn.Linear's default (U(+-1/sqrt(fan_in)))."""
    params = []
    for fan_in, fan_out in ((d_in, width), (width, width), (width, k)):
        bound = 1.0 / np.sqrt(fan_in)
        w = (torch.rand(m, fan_in, fan_out, generator=generator, dtype=torch.float64) * 2 - 1) * bound
        b = (torch.rand(m, 1, fan_out, generator=generator, dtype=torch.float64) * 2 - 1) * bound
        params += [w.to(dtype), b.to(dtype)]
    return params


def ensemble_logits(params: Params, x: torch.Tensor) -> torch.Tensor:
    """Logits (M, B, K) of the M models for inputs x (M, B, D) (one batch per model) or (B, D) (shared)."""
    w1, b1, w2, b2, w3, b3 = params
    if x.dim() == 2:
        x = x.unsqueeze(0).expand(w1.shape[0], -1, -1)
    h = torch.relu(torch.baddbmm(b1, x, w1))
    h = torch.relu(torch.baddbmm(b2, h, w2))
    return torch.baddbmm(b3, h, w3)


def epoch_order(masks: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One epoch's visiting order: (M, L) sample indices and (M, L) validity, L = the largest subset.

    Row m lists model m's subset in a fresh random order, padded at the end (valid=False) when its
    subset is smaller than the largest one.
    """
    m, n = masks.shape
    keys = torch.rand(m, n, generator=generator, dtype=torch.float64)
    keys = torch.where(masks, keys, torch.full_like(keys, 2.0))  # out-of-subset samples sort last
    order = keys.argsort(dim=1)
    length = int(masks.sum(1).max())
    order = order[:, :length]
    valid = torch.gather(masks, 1, order)
    return order, valid


def train_ensemble(x: torch.Tensor, y: torch.Tensor, masks: torch.Tensor, spec: MLPSpec, num_classes: int, seed: int = 0,
                   progress: bool = True, desc: str = "ensemble", bar: tqdm | None = None) -> Params:
    """Train M MLPs, model m on the samples where masks[m] (M, N) is True; x (N, D), y (N,) int64.

    Each model runs plain minibatch SGD (momentum, weight decay) with mean cross-entropy over its
    own batch, exactly as M separate `torch.optim.SGD` runs would (the summed loss decouples); a model
    whose subset is smaller than the largest skips the padded steps at the end of each epoch.
    """
    g = torch.Generator().manual_seed(seed)  # CPU stream: the same models on every device
    m, dev = masks.shape[0], x.device
    params = [p.to(dev).requires_grad_() for p in init_params(m, x.shape[1], spec.width, num_classes, g, x.dtype)]
    y, masks = y.to(dev), masks.to(dev)
    bufs = [torch.zeros_like(p) for p in params]
    length = int(masks.sum(1).max())
    steps = -(-length // spec.batch_size)
    own_bar = bar is None
    if own_bar:
        bar = tqdm(total=spec.epochs * steps, desc=desc, disable=not progress, dynamic_ncols=True)
    for _ in range(spec.epochs):
        order, valid = (t.to(dev) for t in epoch_order(masks.cpu(), g))
        for s in range(steps):
            idx = order[:, s * spec.batch_size:(s + 1) * spec.batch_size]
            w = valid[:, s * spec.batch_size:(s + 1) * spec.batch_size].to(x.dtype)
            logits = ensemble_logits(params, x[idx])
            losses = F.cross_entropy(logits.reshape(-1, num_classes), y[idx].reshape(-1), reduction="none")
            per_model = (losses.view_as(w) * w).sum(1) / w.sum(1).clamp_min(1)
            grads = torch.autograd.grad(per_model.sum(), params)
            _sgd_step(params, grads, bufs, w.sum(1) > 0, spec)
            bar.update(1)
    if own_bar:
        bar.close()
    return [p.detach() for p in params]


@torch.no_grad()
def _sgd_step(params: Params, grads: tuple[torch.Tensor, ...], bufs: list[torch.Tensor], active: torch.Tensor,
              spec: MLPSpec) -> None:
    """torch.optim.SGD's update (coupled weight decay, momentum buffer starting at the first gradient), applied
    only to the models with a sample in this step (a model whose subset is used up must not coast on momentum)."""
    on = active.view(-1, 1, 1)
    for p, g, b in zip(params, grads, bufs):
        g = g + spec.weight_decay * p if spec.weight_decay else g
        b.copy_(torch.where(on, spec.momentum * b + g, b))
        p.sub_(torch.where(on, spec.lr * b, torch.zeros_like(b)))


@torch.no_grad()
def predict(params: Params, x: torch.Tensor, batch: int = 4096) -> torch.Tensor:
    """Logits (M, N, K) of every model on every sample of x (N, D)."""
    return torch.cat([ensemble_logits(params, x[i:i + batch]) for i in range(0, len(x), batch)], dim=1)

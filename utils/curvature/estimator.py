"""Input-loss curvature (Garg, Ravikumar, Roy, ICML 2024): Hutchinson estimates of tr(H^2) and tr(H).

For a sample x (in the model's *normalised* input space, exactly what the model's forward
receives) with label y, H = d^2 l(f(x), y) / dx^2 is the (D x D) Hessian of the per-sample
cross-entropy l (nats) with respect to the D input values. With Rademacher probes v (entries
+-1, independent per sample and probe):

    curvature = mean_k ||H v_k||^2   (unbiased for tr(H^2) = ||H||_F^2, units nats^2 / input^4)
    trace     = mean_k v_k^T H v_k   (unbiased for tr(H),              units nats / input^2)

Two ways to get H v (one function, `input_curvature`):

- ``exact``: Hessian-vector products by double backward through the *sum* of per-sample
  losses, so sample i's input gradient is exactly grad l_i (no 1/B factor, no bias on a short
  last batch). The model is put in eval mode, so samples never interact (BatchNorm uses its
  running statistics).
- ``fd``: the paper's finite difference H v ~ (grad l(x + h v) - grad l(x)) / h. `h` is the step
  along the probe in normalised input units; each coordinate moves by +-h and the whole input
  by h * sqrt(D). grad l(x) is computed once per batch and reused for every probe. The error
  is O(h) on smooth networks; on ReLU networks the step also crosses activation kinks, which the
  exact (almost-everywhere) Hessian ignores.

`official_curvature` re-implements the published scorer with its own conventions (mean-reduced
loss over the batch, probe h*(v + 1e-7), unsquared norms); see docs/curvature.md.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from ..evaluate import fp32
from ..hashing import rademacher_hash
from ..models import double_backward_attention, forward, per_sample_loss

METHODS = ("exact", "fd")


# ----------------------------------------------------------------------------- probes
def rademacher(shape: tuple[int, ...], *, generator: torch.Generator | None = None,
               device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A tensor of independent +-1 entries (each sign with probability 1/2)."""
    bits = torch.randint(0, 2, shape, generator=generator, device=device, dtype=torch.int8)
    return (bits * 2 - 1).to(dtype)


def sample_probes(index: torch.Tensor, sample_shape: tuple[int, ...], n_probes: int, *, seed: int = 0, epoch: int = 0,
                  stream: int = 0, device: torch.device | str | None = None,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Rademacher probes (n_probes, B, *sample_shape): entry (k, i, j) is a counter-based hash of (seed, epoch,
    stream, index[i], k, j), generated on `device` (default: index's). A sample's probes depend on nothing
    else: not its batch, rank or device (CPU and CUDA give the same probes)."""
    index = index.to(device) if device is not None else index
    numel = 1
    for s in sample_shape:
        numel *= int(s)
    v = rademacher_hash((seed, epoch, stream), index, n_probes, numel, dtype)
    return v.view(n_probes, len(index), *sample_shape)


# ----------------------------------------------------------------------------- helpers
@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put `model` in eval mode for the block, then restore its previous mode."""
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """Parameters do not require grad inside the block (input-only autograd builds a smaller graph)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in flags:
            p.requires_grad_(f)


def _input_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
    """Per-sample input gradients grad_x l_i (B, ...) of the summed per-sample losses."""
    x = x.detach().requires_grad_(True)
    loss = per_sample_loss(forward(model, x), y).sum()
    (g,) = torch.autograd.grad(loss, x, create_graph=create_graph)
    return g


def _rows(n_probes: int, batch: int, max_rows: int) -> int:
    """Probes per pass so that (probes x batch) rows stay within max_rows (at least one probe)."""
    return max(1, min(n_probes, max_rows // max(batch, 1))) if max_rows > 0 else n_probes


class _ExactHVP:
    """H v by double backward: one forward and one create-graph backward of the summed per-sample losses,
    then one double-backward pass per probe through the retained graph."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x = x.detach().requires_grad_(True)
        loss = per_sample_loss(forward(model, self.x), y).sum()
        (self.g,) = torch.autograd.grad(loss, self.x, create_graph=True)

    def __call__(self, v: torch.Tensor, last: bool) -> torch.Tensor:
        (hv,) = torch.autograd.grad(self.g, self.x, grad_outputs=v.to(self.g.dtype), retain_graph=not last)
        return hv


def _hvp_fd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, v: torch.Tensor, g0: torch.Tensor,
            h: float) -> torch.Tensor:
    """(grad l(x + h v) - grad l(x)) / h for k probes at once, grad l(x) = g0 given."""
    k, b = v.shape[:2]
    xr = (x.detach().unsqueeze(0) + h * v).reshape(k * b, *x.shape[1:])
    g = _input_grad(model, xr, y.repeat(k)).reshape(v.shape)
    return (g - g0.unsqueeze(0)) / h


# ----------------------------------------------------------------------------- public API
def input_curvature(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, *, n_probes: int = 10,
                    method: str = "exact", h: float = 1e-3, generator: torch.Generator | None = None,
                    probes: torch.Tensor | None = None, max_rows: int = 1) -> dict[str, torch.Tensor]:
    """Hutchinson estimates of the input-loss curvature of each sample.

    inputs: (B, ...) in the model's input space (after normalisation); labels: (B,) class ids.
    Probes are Rademacher, drawn from `generator` (or the global RNG), or given as `probes`
    (n_probes, B, ...) to fix them (e.g. `sample_probes`, per-sample seeded).
    exact: one forward + create-graph backward per call, then one double-backward pass per probe.
    fd: grad l(x) once, then the probes in passes of the batch repeated k times, k * B <= `max_rows`
    (at least one probe per pass; 0 = all probes in one pass). The default, one probe per pass, is the faster
    choice on the CPU (benchmarks/bench_max_rows.py: 2.1x over stacking 4 probes, CIFAR ResNet-18 w16).

    Returns (B,) tensors (float64 for float64 inputs, else float32):
      "curvature": mean_k ||H v_k||^2, estimates tr(H^2) (nats^2 per input-unit^4);
      "trace":     mean_k v_k^T H v_k, estimates tr(H) (nats per input-unit^2);
      "hv_norm":   mean_k ||H v_k|| (unsquared, what the official scorer averages; see official_curvature).
    The model is evaluated in eval mode and left in the mode it came in.
    """
    if method not in METHODS:
        raise UserError(f"unknown curvature method {method!r}; use one of {', '.join(METHODS)}")
    if probes is None:
        if n_probes < 1:
            raise UserError(f"n_probes must be >= 1, got {n_probes}")
        probes = rademacher((n_probes, *inputs.shape), generator=generator, device=inputs.device, dtype=inputs.dtype)
    elif probes.shape[1:] != inputs.shape:
        raise ValueError(f"probes must have shape (n_probes, *inputs.shape), got {tuple(probes.shape)}")
    vals = per_probe_curvature(model, inputs, labels, probes, method=method, h=h, max_rows=max_rows)
    dt = torch.float64 if inputs.dtype == torch.float64 else torch.float32
    return {k: v.mean(0).to(dt) for k, v in vals.items()}


def per_probe_curvature(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, probes: torch.Tensor, *,
                        method: str = "exact", h: float = 1e-3, max_rows: int = 1) -> dict[str, torch.Tensor]:
    """The per-probe terms behind `input_curvature`, float64 (n_probes, B): "curvature" ||H v_k||^2,
    "trace" v_k^T H v_k and "hv_norm" ||H v_k|| (probes (n_probes, B, ...) as in input_curvature)."""
    if method not in METHODS:
        raise UserError(f"unknown curvature method {method!r}; use one of {', '.join(METHODS)}")
    if method == "fd" and not h > 0:
        raise UserError(f"score.h must be > 0 for the finite difference, got {h}")
    n, b = probes.shape[0], inputs.shape[0]
    per = 1 if method == "exact" else _rows(n, b, max_rows)
    sq, tr = [], []
    ctx = double_backward_attention(model) if method == "exact" else contextlib.nullcontext()
    with eval_mode(model), frozen(model), fp32(inputs.device), ctx:
        if method == "exact":
            hvp = _ExactHVP(model, inputs, labels)
        else:
            g0 = _input_grad(model, inputs, labels)
        for start in range(0, n, per):
            v = probes[start:start + per].to(inputs.dtype)
            if method == "exact":
                hv = hvp(v[0], last=start + per >= n).unsqueeze(0)
            else:
                hv = _hvp_fd(model, inputs, labels, v, g0, h)
            hv, v = hv.flatten(2).double(), v.flatten(2).double()
            sq.append((hv * hv).sum(-1))  # (k, B)
            tr.append((hv * v).sum(-1))
    sq_t = torch.cat(sq)
    return {"curvature": sq_t, "trace": torch.cat(tr), "hv_norm": sq_t.sqrt()}


def official_curvature(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, *, n_probes: int = 10,
                       h: float = 1e-3, generator: torch.Generator | None = None,
                       probes: torch.Tensor | None = None) -> dict[str, Any]:
    """The published scorer's numbers, re-implemented with its conventions (for reproduction and the benchmark).

    Per probe: v = h * (r + 1e-7) with r Rademacher, two forwards (x + v and x) and one backward of the
    difference of the batch-*mean* cross-entropies, d = grad_x [L(x+v) - L(x)] ~ (h/B) H r. Returns
    "curvature" = mean_k ||d_k|| (unsquared; ~ (h/B) * hv_norm of `input_curvature(method="fd")`) and
    "trace" = mean_k v_k . d_k (~ (h^2/B) * trace). Both depend on the batch size B.
    """
    if probes is None:
        probes = rademacher((n_probes, *inputs.shape), generator=generator, device=inputs.device, dtype=inputs.dtype)
    b = inputs.shape[0]
    regr = torch.zeros(b, dtype=inputs.dtype, device=inputs.device)
    eig = torch.zeros_like(regr)
    with eval_mode(model), fp32(inputs.device):
        x = inputs.detach().requires_grad_(True)
        for r in probes:
            v = h * (r.to(inputs.dtype) + 1e-7)
            loss_pos = per_sample_loss(forward(model, x + v), labels).mean()
            loss_orig = per_sample_loss(forward(model, x), labels).mean()
            (d,) = torch.autograd.grad(loss_pos - loss_orig, x)
            regr += d.reshape(b, -1).norm(dim=1).detach()
            eig += (v.reshape(b, -1) * d.reshape(b, -1)).sum(1).detach()
    return {"curvature": regr / len(probes), "trace": eig / len(probes)}

"""Parameter-Hessian operators and Krylov spectral estimators.

* `HessianOperator`: Hessian-vector products of the mean training loss over a *fixed* set of
  samples (several micro-batches accumulated), model in eval mode, with a determinism check;
  under torchrun every rank holds a shard of the set and the products are all-reduced.
* `lanczos`: top-k eigenpairs of any symmetric operator `matvec` (R^dim -> R^dim) with full
  reorthogonalization, the Krylov basis kept on the device, the tridiagonal in float64 and
  convergence judged by the Ritz residual.
* `slq`: stochastic Lanczos quadrature (several Rademacher starts) -> nodes/weights of the
  spectral density, plus unbiased tr(H) and tr(H^2) estimates from the same runs.
* `hutchinson_trace`: tr(H) from Rademacher probes.

HVPs, Lanczos and SLQ run in full fp32 (`utils.evaluate.fp32`: TF32 and autocast off, restored after).

Eigenvalues are in units of the loss (nats) per squared parameter unit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.linalg import eigh_tridiagonal
from torch import nn

from ..distributed import Dist, all_reduce_sum, shard_range
from ..errors import UserError
from ..evaluate import fp32
from ..models import double_backward_attention, forward, per_sample_loss

Matvec = Callable[[torch.Tensor], torch.Tensor]


# ----------------------------------------------------------------------------- the operator
def _unpack(batch: Sequence[torch.Tensor]) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    if len(batch) == 3:
        return batch[0], batch[1], batch[2]
    if len(batch) == 2:
        return None, batch[0], batch[1]
    raise ValueError("a batch must be (x, y) or (index, x, y)")


class HessianOperator:
    """H = d^2/dtheta^2 of L(theta) = (1/N) sum_i CE(f(x_i; theta), y_i) over a fixed sample set.

    `batches`: an iterable of (x, y) or (index, x, y) micro-batches (a list of tensors or a
    DataLoader over *un-augmented* data); it is read twice at construction. Under torchrun each
    rank passes its own shard and N is the global count. `params`: the parameters the Hessian is
    taken over (default: all that require grad), flattened in `model.parameters()` order.
    `cache_graph` keeps the first-order gradient graph of every micro-batch so that each HVP is
    one extra backward pass (memory ~ 2-3x one training step per micro-batch).
    `check`: two independent passes must give the same loss and gradient (relative `rtol`),
    else a UserError names the usual causes (BN in train mode, dropout, augmentation).
    """

    def __init__(self, model: nn.Module, batches: Iterable[Sequence[torch.Tensor]], *, dist: Dist | None = None,
                 params: list[nn.Parameter] | None = None, cache_graph: bool = True, check: bool = True,
                 rtol: float = 1e-5) -> None:
        self.model = model
        model.eval()
        if any(m.training for m in model.modules()):
            raise UserError("the model has modules still in training mode after model.eval() (BatchNorm/dropout "
                            "would change the Hessian between products); make their train() honour eval()")
        self.params = [p for p in model.parameters() if p.requires_grad] if params is None else list(params)
        self.shapes = [p.shape for p in self.params]
        self.sizes = [p.numel() for p in self.params]
        self.dim = int(sum(self.sizes))
        self.device = self.params[0].device
        self.dtype = self.params[0].dtype
        self.n_matvec = 0
        self._source = batches
        self.batches = self._materialize()
        n_local = sum(len(b[-1]) for b in self.batches)
        self.n_samples = int(all_reduce_sum(torch.tensor(float(n_local), dtype=torch.float64, device=self.device)).item())
        if self.n_samples == 0:
            raise UserError("the Hessian sample set is empty; give it at least one sample")
        self.dist = dist
        if check:
            self.check_determinism(rtol)
        self._graphs: list[tuple[torch.Tensor, ...]] | None = None
        if cache_graph:
            with fp32(self.device):
                self._graphs = [self._grad(b, create_graph=True) for b in self.batches]

    # -- helpers
    def _materialize(self) -> list[tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]]:
        out = []
        for b in self._source:
            idx, x, y = _unpack(b)
            idx = None if idx is None else idx.to(self.device)
            out.append((idx, x.to(self.device, self.dtype if x.is_floating_point() else x.dtype), y.to(self.device)))
        return out

    def _loss(self, batch) -> torch.Tensor:
        idx, x, y = batch
        with double_backward_attention(self.model):
            logits = forward(self.model, x, idx)
        if logits.dtype != torch.float64:  # float32 models: float32 loss; float64 models keep float64
            return per_sample_loss(logits, y).to(self.dtype).sum() / self.n_samples
        return F.cross_entropy(logits, y, reduction="sum") / self.n_samples

    def _grad(self, batch, create_graph: bool) -> tuple[torch.Tensor, ...]:
        return torch.autograd.grad(self._loss(batch), self.params, create_graph=create_graph)

    def flatten(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat([t.reshape(-1) for t in tensors])

    def unflatten(self, v: torch.Tensor) -> list[torch.Tensor]:
        return [c.view(s) for c, s in zip(v.split(self.sizes), self.shapes)]

    def loss_and_grad(self, batches=None) -> tuple[float, torch.Tensor]:
        """Global mean loss and its flat gradient (dim,) over the sample set (all-reduced)."""
        loss = torch.zeros((), dtype=torch.float64, device=self.device)
        grad = torch.zeros(self.dim, dtype=self.dtype, device=self.device)
        with fp32(self.device):  # no TF32, no autocast: products of small differences
            for b in batches if batches is not None else self.batches:
                lb = self._loss(b)
                gb = torch.autograd.grad(lb, self.params)
                loss += lb.detach().double()
                grad += self.flatten(gb)
        loss, grad = all_reduce_sum(loss), all_reduce_sum(grad)
        return float(loss), grad

    def check_determinism(self, rtol: float = 1e-5) -> None:
        """Two passes (the sample set read twice) must agree in loss and gradient."""
        second = self._materialize()
        l1, g1 = self.loss_and_grad(self.batches)
        l2, g2 = self.loss_and_grad(second)
        scale = max(float(g1.norm()), 1e-30)
        same_data = len(second) == len(self.batches) and all(
            torch.equal(a[1], b[1]) and torch.equal(a[2], b[2]) for a, b in zip(self.batches, second))
        if not same_data or abs(l1 - l2) > rtol * max(abs(l1), 1e-30) or float((g1 - g2).norm()) > rtol * scale:
            why = ("the sample set differs between two reads (data augmentation, shuffling, or a one-shot iterator?)"
                   if not same_data else "two forward/backward passes differ (dropout or stochastic layers in eval mode?)")
            raise UserError(f"the Hessian is not deterministic: {why}; loss {l1:.6g} vs {l2:.6g}. Use the un-augmented "
                            "train_eval set, shuffle=False, and a model whose eval() disables BN updates and dropout")

    # -- the product
    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """H v for a flat vector v (dim,) -> (dim,), same dtype/device as v (all-reduced across ranks)."""
        vp = self.unflatten(v.to(self.device, self.dtype))
        out = None
        with fp32(self.device):
            for i, b in enumerate(self.batches):
                g = self._graphs[i] if self._graphs is not None else self._grad(b, create_graph=True)
                # d/dtheta <g(theta), v> = H v: one backward pass through the gradient's graph
                hv = self.flatten(torch.autograd.grad(g, self.params, grad_outputs=vp,
                                                      retain_graph=self._graphs is not None))
                out = hv if out is None else out.add_(hv)
        self.n_matvec += 1
        return all_reduce_sum(out).to(v.dtype)

    __call__ = matvec

    def dense(self) -> torch.Tensor:
        """The full (dim, dim) Hessian by dim products (tests and tiny models only)."""
        eye = torch.eye(self.dim, dtype=self.dtype, device=self.device)
        return torch.stack([self.matvec(e) for e in eye])


def batches_from_dataset(dataset, indices: Sequence[int], batch_size: int, dist: Dist | None = None
                         ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """This rank's contiguous shard of `indices` as (index, x, y) micro-batches of <= batch_size.

    Reading goes through `dataset[i]` each time this list is built, so an augmented dataset makes
    two builds differ (see `HessianOperator.check_determinism`). Returns a list (re-iterable)."""
    rank, world = (dist.rank, dist.world) if dist is not None else (0, 1)
    mine = [int(indices[i]) for i in shard_range(len(indices), rank, world)]

    class _Reader:
        def __iter__(self):
            for s in range(0, len(mine), batch_size):
                items = [dataset[i] for i in mine[s:s + batch_size]]
                yield (torch.tensor([it[0] for it in items]), torch.stack([it[1] for it in items]),
                       torch.tensor([it[2] for it in items]))

    return _Reader()  # type: ignore[return-value]


# ----------------------------------------------------------------------------- Lanczos
def _random_unit(dim: int, device, dtype, generator: torch.Generator | None, rademacher: bool = False) -> torch.Tensor:
    gdev = generator.device if generator is not None else torch.device("cpu")
    if rademacher:
        v = torch.randint(0, 2, (dim,), generator=generator, device=gdev).to(torch.float64) * 2 - 1
    else:
        v = torch.randn(dim, generator=generator, device=gdev, dtype=torch.float64)
    v = v / v.norm()
    return v.to(device=device, dtype=dtype)


def _select(theta: np.ndarray, k: int, which: str) -> np.ndarray:
    if which == "LA":
        order = np.argsort(-theta)
    elif which == "LM":
        order = np.argsort(-np.abs(theta))
    elif which == "SA":
        order = np.argsort(theta)
    else:
        raise ValueError(f"which must be LA, LM or SA, got {which!r}")
    return order[:k]


@fp32()  # no TF32 / autocast: the reorthogonalisation's inner products must be exact to ~1e-7
def lanczos(matvec: Matvec, dim: int, k: int, *, max_iter: int = 80, tol: float = 1e-6,
            device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
            generator: torch.Generator | None = None, v0: torch.Tensor | None = None, which: str = "LA",
            return_vectors: bool = False) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, Any]]:
    """Top-k eigenpairs of the symmetric operator `matvec` by Lanczos with full reorthogonalization.

    The basis V (max_iter+1, dim) lives on `device` in `dtype`; every new vector is orthogonalised
    against all previous ones twice (classical Gram-Schmidt, "twice is enough"); the tridiagonal
    T (alpha, beta) is float64. After each step the Ritz pairs of T are computed and iteration stops
    once the k wanted Ritz residuals |beta_j * s_{j,i}| = ||A y_i - theta_i y_i|| are all
    <= tol * |theta|_max (tol=0: always run max_iter steps). An invariant subspace (beta ~ 0)
    restarts from a fresh random vector orthogonal to the basis, so repeated eigenvalues and
    low-rank operators are handled. `which`: LA (largest algebraic), LM (magnitude), SA (smallest).

    Returns eigenvalues (k,) float64 on CPU, sorted by `which`; eigenvectors (dim, k) on device in
    dtype or None; info: n_matvec, n_iter, converged, residuals (k,), alpha, beta (T), ritz (all
    Ritz values, ascending) and ritz_weights (squared first components: the quadrature weights of
    the start vector's spectral measure, summing to 1 when no restart happened).
    """
    device = torch.device(device) if device is not None else (v0.device if v0 is not None else torch.device("cpu"))
    m = int(min(max_iter, dim))
    k = int(min(k, dim))
    if m < 1 or k < 1:
        raise ValueError("lanczos needs max_iter >= 1, k >= 1 and dim >= 1")
    V = torch.zeros(m + 1, dim, device=device, dtype=dtype)
    alpha = np.zeros(m)
    beta = np.zeros(m)
    V[0] = (v0.to(device=device, dtype=torch.float64) / v0.norm()).to(dtype) if v0 is not None else \
        _random_unit(dim, device, dtype, generator)
    eps = float(torch.finfo(dtype).eps)
    n_mv, restarts, converged = 0, 0, False
    theta = S = None
    anorm = 0.0
    j = 0
    for j in range(m):
        w = matvec(V[j]).to(device=device, dtype=dtype)
        n_mv += 1
        basis = V[: j + 1]
        h = basis @ w
        w = w - basis.T @ h
        h2 = basis @ w
        w = w - basis.T @ h2
        alpha[j] = float(h[j].double() + h2[j].double())
        b = float(w.double().norm())
        theta, S = eigh_tridiagonal(alpha[: j + 1], beta[:j]) if j > 0 else (alpha[:1].copy(), np.ones((1, 1)))
        anorm = max(anorm, float(np.abs(theta).max()), abs(alpha[j]))
        # an invariant subspace: start a new Krylov block orthogonal to what we have
        if b <= 32 * eps * max(anorm, 1e-300) and j + 1 < min(m, dim):
            fresh = _random_unit(dim, device, dtype, generator)
            for _ in range(2):
                fresh = fresh - V[: j + 1].T @ (V[: j + 1] @ fresh)
            b_new = float(fresh.double().norm())
            restarts += 1
            beta[j] = 0.0
            if j + 1 < m:
                V[j + 1] = fresh / b_new
            res = np.zeros(len(theta))
        else:
            beta[j] = b
            V[j + 1] = w / b if b > 0 else w
            res = np.abs(b * S[-1, :])
        sel = _select(theta, k, which)
        if tol > 0 and len(sel) >= k and np.all(res[sel] <= tol * max(anorm, 1e-300)):
            converged = True
            break
        if j + 1 >= dim:
            converged = True
            break
    n = j + 1
    sel = _select(theta, k, which)
    vals = torch.tensor(theta[sel], dtype=torch.float64)
    vecs = None
    if return_vectors:
        vecs = V[:n].T @ torch.as_tensor(S[:, sel], dtype=dtype, device=device)
    res_all = np.abs(beta[n - 1] * S[-1, :])
    info = {"n_matvec": n_mv, "n_iter": n, "converged": bool(converged), "residuals": res_all[sel],
            "alpha": alpha[:n].copy(), "beta": beta[: n - 1].copy(), "ritz": theta.copy(),
            "ritz_weights": S[0, :] ** 2, "restarts": restarts}
    return vals, vecs, info


# ----------------------------------------------------------------------------- SLQ and trace
@dataclass
class SLQResult:
    """Gauss quadrature of the spectral density from `n_probes` Lanczos runs of `n_iter` steps.

    nodes, weights: (n_probes, n_iter) float64 (weights of each probe sum to 1; a probe whose
    Krylov space closed early is padded with zero weights). trace_samples / sq_trace_samples:
    (n_probes,) unbiased samples of tr(H) and tr(H^2) (dim * e1^T T e1 and dim * e1^T T^2 e1 with
    Rademacher starts, i.e. Hutchinson's estimator for free). dim: the operator size."""

    nodes: np.ndarray
    weights: np.ndarray
    trace_samples: np.ndarray
    sq_trace_samples: np.ndarray
    dim: int
    n_matvec: int

    @property
    def trace(self) -> float:
        return float(self.trace_samples.mean())

    @property
    def sq_trace(self) -> float:
        return float(self.sq_trace_samples.mean())


@fp32()
def slq(matvec: Matvec, dim: int, *, n_probes: int = 10, n_iter: int = 80, device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32, generator: torch.Generator | None = None,
        deflate: torch.Tensor | None = None) -> SLQResult:
    """Stochastic Lanczos quadrature with Rademacher starts (see `SLQResult`).

    `deflate` (dim, k) orthonormal columns Q (e.g. the top-k Ritz vectors): the quadrature is then
    of B = (I - QQ^T) H (I - QQ^T) on the complement of span(Q) (dimension dim - k): starts are
    projected, samples are ||Pz||^2 e1^T T e1 (unbiased for tr B) and ||Pz||^2 e1^T T^2 e1 (tr B^2),
    and the weights describe the spectral measure of B restricted to that complement. Since
    tr H = tr(Q^T H Q) + tr B exactly for any orthonormal Q, deflating the outliers removes the
    variance they put into Hutchinson's estimator (the idea of Hutch++)."""
    m = int(min(n_iter, dim if deflate is None else dim - deflate.shape[1]))
    if deflate is not None:
        Q = deflate.to(device=device, dtype=dtype)
        proj = lambda v: v - Q @ (Q.T @ v)  # noqa: E731
        base = matvec
        matvec = lambda v: proj(base(proj(v)))  # noqa: E731
    nodes = np.zeros((n_probes, m))
    weights = np.zeros((n_probes, m))
    tr, tr2 = np.zeros(n_probes), np.zeros(n_probes)
    n_mv = 0
    for p in range(n_probes):
        v0 = _random_unit(dim, device, dtype, generator, rademacher=True)
        scale = float(dim)  # ||z||^2 of the Rademacher vector z = sqrt(dim) v0
        if deflate is not None:
            v0 = proj(proj(v0))
            scale = dim * float(v0.double().norm()) ** 2
            v0 = v0 / v0.norm()
        _, _, info = lanczos(matvec, dim, 1, max_iter=m, tol=0.0, device=device, dtype=dtype, generator=generator, v0=v0)
        n_mv += info["n_matvec"]
        a, b = info["alpha"], info["beta"]
        # the quadrature of the start vector's measure = the first block of T (before any restart)
        cut = np.flatnonzero(b == 0.0)
        nb = int(cut[0]) + 1 if len(cut) else len(a)
        th, s = eigh_tridiagonal(a[:nb], b[: nb - 1]) if nb > 1 else (a[:1], np.ones((1, 1)))
        w = s[0, :] ** 2
        nodes[p, :nb], weights[p, :nb] = th, w
        tr[p] = scale * a[0]
        tr2[p] = scale * (a[0] ** 2 + (b[0] ** 2 if nb > 1 else 0.0))
    return SLQResult(nodes, weights, tr, tr2, dim if deflate is None else dim - deflate.shape[1], n_mv)


def slq_density(result: SLQResult, grid: np.ndarray, sigma: float) -> np.ndarray:
    """Spectral density on `grid` (G,): Gaussian-broadened (width sigma, eigenvalue units) average of
    the probes' quadratures; integrates to 1 when the grid covers the spectrum +- 5 sigma."""
    grid = np.asarray(grid, dtype=np.float64)
    z = (grid[None, None, :] - result.nodes[:, :, None]) / sigma
    dens = (result.weights[:, :, None] * np.exp(-0.5 * z * z)).sum(1) / (sigma * math.sqrt(2 * math.pi))
    return dens.mean(0)


def slq_histogram(result: SLQResult, edges: np.ndarray) -> np.ndarray:
    """Spectral mass per bin (len(edges)-1,): the probes' quadrature weights summed into bins, averaged."""
    mass = np.zeros(len(edges) - 1)
    for nd, wt in zip(result.nodes, result.weights):
        h, _ = np.histogram(nd, bins=edges, weights=wt)
        mass += h
    return mass / len(result.nodes)


def hutchinson_trace(matvec: Matvec, dim: int, *, n_probes: int = 10, device: torch.device | str = "cpu",
                     dtype: torch.dtype = torch.float32, generator: torch.Generator | None = None
                     ) -> tuple[float, float, np.ndarray]:
    """tr(H) ~ mean of z^T H z over Rademacher z: (estimate, standard error, samples (n_probes,))."""
    samples = np.zeros(n_probes)
    for p in range(n_probes):
        z = _random_unit(dim, device, dtype, generator, rademacher=True) * math.sqrt(dim)
        samples[p] = float((z.double() @ matvec(z).double()).item())
    se = float(samples.std(ddof=1) / math.sqrt(n_probes)) if n_probes > 1 else float("nan")
    return float(samples.mean()), se, samples

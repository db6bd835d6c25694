"""Lanczos / SLQ / Hutchinson / HessianOperator against exact answers (known spectra, dense float64
Hessians from torch.func, scipy eigsh on the same operator)."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.sparse.linalg import LinearOperator, eigsh
from torch import nn
from torch.func import functional_call, hessian

from utils.errors import UserError
from utils.models import build_model
from utils.spectral.hessian import HessianOperator, hutchinson_trace, lanczos, slq, slq_density, slq_histogram

torch.set_num_threads(1)


def _known(dim: int, top: list[float], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, dtype=torch.float64, generator=g))
    ev = torch.cat([torch.tensor(top, dtype=torch.float64), torch.rand(dim - len(top), dtype=torch.float64, generator=g)])
    return q @ torch.diag(ev) @ q.T, ev.sort(descending=True).values


def test_lanczos_diagonal_known_spectrum():
    g = torch.Generator().manual_seed(0)
    d = torch.cat([torch.tensor([9.0, 7.5, 6.0, 5.0, 4.2, 3.9, 3.5, 3.1, 2.8, 2.6]), torch.rand(490) * 2 - 1]).double()
    vals, _, info = lanczos(lambda v: d * v, 500, 10, max_iter=120, tol=1e-10, dtype=torch.float64, generator=g)
    want = d.sort(descending=True).values[:10]
    assert info["converged"] and info["n_iter"] < 120
    assert torch.max(torch.abs(vals - want) / want) < 1e-6
    # smallest algebraic and largest magnitude
    neg = d.clone()
    neg[0] = -20.0
    vals, _, _ = lanczos(lambda v: neg * v, 500, 2, max_iter=120, tol=1e-10, dtype=torch.float64, generator=g, which="LM")
    assert vals[0].item() == pytest.approx(-20.0, rel=1e-9)
    vals, _, _ = lanczos(lambda v: neg * v, 500, 1, max_iter=120, tol=1e-10, dtype=torch.float64, generator=g, which="SA")
    assert vals[0].item() == pytest.approx(-20.0, rel=1e-9)


@pytest.mark.parametrize("dtype,rel", [(torch.float64, 1e-6), (torch.float32, 1e-5)])
def test_lanczos_random_symmetric(dtype, rel):
    a, ev = _known(600, [50, 40, 30, 20, 15, 12, 10, 9, 8.5, 8.2], seed=1)
    a = a.to(dtype)
    vals, vecs, info = lanczos(lambda v: a @ v, 600, 10, max_iter=150, tol=1e-9 if dtype == torch.float64 else 1e-6,
                               dtype=dtype, generator=torch.Generator().manual_seed(2), return_vectors=True)
    assert torch.max(torch.abs(vals - ev[:10]) / ev[:10]) < rel
    assert info["n_matvec"] == info["n_iter"] < 150
    res = (a @ vecs - vecs * vals.to(dtype)).norm(dim=0)
    assert res.max() < (1e-7 if dtype == torch.float64 else 1e-3) * 50
    assert torch.allclose(vecs.T @ vecs, torch.eye(10, dtype=dtype), atol=1e-5)


def test_lanczos_low_rank_restarts():
    a, _ = _known(300, [], seed=3)
    q = torch.linalg.eigh(a)[1][:, :4]
    low = q @ torch.diag(torch.tensor([5.0, 4.0, 3.0, 2.0], dtype=torch.float64)) @ q.T
    vals, _, info = lanczos(lambda v: low @ v, 300, 6, max_iter=40, tol=1e-10, dtype=torch.float64,
                            generator=torch.Generator().manual_seed(0))
    assert info["restarts"] >= 1
    assert np.allclose(vals.numpy(), [5, 4, 3, 2, 0, 0], atol=1e-10)


def _tiny_net_and_data(seed: int = 0):
    torch.manual_seed(seed)
    model = build_model("digits_mlp", 3, 1, 2, width=6, activation="tanh").double()
    x = torch.randn(24, 1, 2, 2, dtype=torch.float64)
    y = torch.randint(0, 3, (24,))
    return model, x, y


def _dense_hessian(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss(t):
        params = {n: c.view(s) for n, c, s in zip(names, t.split(sizes), shapes)}
        return F.cross_entropy(functional_call(model, params, (x,)), y)

    return hessian(loss)(theta)


def test_operator_matches_torch_func_hessian_and_eigsh():
    model, x, y = _tiny_net_and_data()
    h = _dense_hessian(model, x, y)
    op = HessianOperator(model, [(x[:10], y[:10]), (x[10:], y[10:])])  # two micro-batches accumulate
    assert op.n_samples == 24 and op.dim == h.shape[0]
    assert torch.allclose(op.dense(), h, atol=1e-12)
    exact = torch.linalg.eigvalsh(h).flip(0)
    vals, _, info = lanczos(op, op.dim, 8, max_iter=op.dim, tol=1e-10, dtype=torch.float64,
                            generator=torch.Generator().manual_seed(0))
    assert torch.max(torch.abs(vals - exact[:8]) / exact[0].abs()) < 1e-4
    lin = LinearOperator((op.dim, op.dim), matvec=lambda v: op(torch.as_tensor(np.ravel(v))).numpy(), dtype=np.float64)
    ref = np.sort(eigsh(lin, k=8, which="LA", tol=1e-12)[0])[::-1]
    assert np.max(np.abs(vals.numpy() - ref) / abs(ref[0])) < 1e-8
    # no graph caching gives the same products
    op2 = HessianOperator(model, [(x, y)], cache_graph=False)
    v = torch.randn(op.dim, dtype=torch.float64)
    assert torch.allclose(op(v), op2(v), atol=1e-12)


class _Augmenting(torch.utils.data.Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return torch.randn(1).item(), self.x[i] + 0.1 * torch.randn_like(self.x[i]), int(self.y[i])


class _AlwaysDropout(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return F.dropout(self.inner(x), 0.5, training=True)


def test_determinism_check_catches_augmentation_and_dropout():
    model, x, y = _tiny_net_and_data()
    loader = torch.utils.data.DataLoader(_Augmenting(x, y), batch_size=12)
    with pytest.raises(UserError, match="not deterministic"):
        HessianOperator(model, loader)
    with pytest.raises(UserError, match="not deterministic"):
        HessianOperator(_AlwaysDropout(model), [(x, y)])
    model.train()
    HessianOperator(model, [(x, y)])  # fine: put in eval mode by the operator
    assert not model.training


def test_slq_density_histogram_and_traces():
    a, ev = _known(800, [], seed=4)  # uniform(0, 1) spectrum
    ev_np = ev.numpy()
    r = slq(lambda v: a @ v, 800, n_probes=20, n_iter=60, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert np.allclose(r.weights.sum(1), 1.0)
    grid = np.linspace(-0.5, 1.5, 2001)
    dens = slq_density(r, grid, sigma=0.02)
    assert np.trapezoid(dens, grid) == pytest.approx(1.0, abs=1e-6)
    edges = np.linspace(0, 1, 11)
    true = np.histogram(ev_np, edges)[0] / 800
    est = slq_histogram(r, edges)
    assert np.abs(est - true).sum() < 0.1  # total variation < 0.05
    assert np.abs(est - 0.1).max() < 0.03 and np.abs(true - 0.1).max() < 0.03
    assert r.trace == pytest.approx(float(ev.sum()), rel=0.03)
    assert r.sq_trace == pytest.approx(float((ev ** 2).sum()), rel=0.05)
    # Rademacher probes on a diagonal operator are exact (z_i^2 = 1)
    d = torch.linspace(-1, 3, 100, dtype=torch.float64)
    est, se, _ = hutchinson_trace(lambda v: d * v, 100, n_probes=3, dtype=torch.float64,
                                  generator=torch.Generator().manual_seed(0))
    assert est == pytest.approx(float(d.sum()), abs=1e-10) and se < 1e-10


def test_deflated_slq_unbiased_and_lower_variance():
    a, ev = _known(500, [400, 300, 200], seed=5)
    mv = lambda v: a @ v  # noqa: E731
    g = torch.Generator().manual_seed(1)
    vals, vecs, _ = lanczos(mv, 500, 3, max_iter=40, tol=1e-12, dtype=torch.float64, generator=g, return_vectors=True)
    plain = slq(mv, 500, n_probes=30, n_iter=20, dtype=torch.float64, generator=g)
    defl = slq(mv, 500, n_probes=30, n_iter=20, dtype=torch.float64, generator=g, deflate=vecs)
    total = float(ev.sum())
    assert defl.dim == 497
    assert float(vals.sum()) + defl.trace == pytest.approx(total, rel=0.01)
    assert defl.trace_samples.std() < 0.1 * plain.trace_samples.std()
    assert defl.nodes.max() < 1.0 + 1e-8  # the spikes are gone from the bulk


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from utils.distributed import Dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    model, x, y = _tiny_net_and_data()
    half = len(y) // world
    op = HessianOperator(model, [(x[rank * half:(rank + 1) * half], y[rank * half:(rank + 1) * half])],
                         dist=Dist(rank, world, rank, torch.device("cpu")))
    v = torch.arange(op.dim, dtype=torch.float64) / op.dim
    hv = op(v)
    vals, _, _ = lanczos(op, op.dim, 3, max_iter=op.dim, tol=1e-10, dtype=torch.float64,
                         generator=torch.Generator().manual_seed(0))
    torch.save({"hv": hv, "vals": vals, "n": op.n_samples}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def test_hvp_all_reduced_across_ranks(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.start_processes(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True,
                                          start_method="fork")
    model, x, y = _tiny_net_and_data()
    op = HessianOperator(model, [(x, y)])
    v = torch.arange(op.dim, dtype=torch.float64) / op.dim
    for r in range(2):
        got = torch.load(tmp_path / f"rank{r}.pt")
        assert got["n"] == 24
        assert torch.allclose(got["hv"], op(v), atol=1e-12)
        exact = torch.linalg.eigvalsh(op.dense()).flip(0)[:3]
        assert torch.allclose(got["vals"], exact, rtol=1e-8)

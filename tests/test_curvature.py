"""input_curvature against dense float64 input Hessians (torch.func.hessian), and its conventions."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import hessian

from utils.curvature.estimator import input_curvature, official_curvature, rademacher, sample_probes
from utils.errors import UserError
from utils.models import DigitsMLP, per_sample_loss


@pytest.fixture(autouse=True)
def _one_thread():
    """The CI box has 2 cores shared by several jobs: one intra-op thread is faster and steadier."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _mlp(act: str = "relu") -> nn.Module:
    torch.manual_seed(0)
    return DigitsMLP(10, 1, 8, width=32, act=act).double()


def _cnn(act: str = "relu") -> nn.Module:
    """Conv-BN-act-maxpool-conv-BN-act-linear with non-trivial BatchNorm running statistics."""
    torch.manual_seed(1)
    a = {"relu": nn.ReLU, "softplus": nn.Softplus, "tanh": nn.Tanh}[act]
    m = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), a(), nn.MaxPool2d(2),
                      nn.Conv2d(6, 8, 3, padding=1), nn.BatchNorm2d(8), a(), nn.Flatten(), nn.Linear(8 * 16, 10))
    for bn in (m[1], m[5]):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
    return m.double()


def _batch(n: int = 8, seed: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return 1.5 * torch.randn(n, 1, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 10, (n,), generator=g)


def _dense(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample input Hessians (B, D, D) from torch.func.hessian, float64."""
    model.eval()
    d = x[0].numel()
    out = []
    for xi, yi in zip(x, y):
        f = lambda z, yi=yi: per_sample_loss(model(z.view(1, *x.shape[1:])), yi.view(1)).sum()  # noqa: E731
        out.append(hessian(f)(xi.reshape(-1)).reshape(d, d))
    return torch.stack(out)


def _hutchinson_sigma(M: torch.Tensor) -> torch.Tensor:
    """Std of one Rademacher probe's v^T M v: sqrt(2 (||M||_F^2 - sum_i M_ii^2)) for symmetric M (B, D, D)."""
    return (2 * ((M * M).sum((1, 2)) - (M.diagonal(dim1=1, dim2=2) ** 2).sum(1))).sqrt()


CASES = {"mlp_relu": lambda: _mlp("relu"), "cnn_relu_bn_maxpool": lambda: _cnn("relu"),
         "mlp_softplus": lambda: _mlp("softplus")}


@pytest.mark.parametrize("case", list(CASES))
def test_exact_matches_dense_hessian(case):
    """2,000 probes: within 3 % (RMS over samples) of the dense tr(H^2) and tr H, every sample within 4 sigma."""
    model, (x, y) = CASES[case](), _batch()
    H = _dense(model, x, y).detach()
    n, copies = 2000, 250  # 2,000 probes per sample as 250 copies x 8 probes in one batch (samples never interact)
    xr, yr = x.repeat_interleave(copies, 0), y.repeat_interleave(copies, 0)
    raw = input_curvature(model, xr, yr, n_probes=n // copies, method="exact", generator=torch.Generator().manual_seed(0))
    assert raw["curvature"].dtype == torch.float64
    est = {k: v.view(len(x), copies).mean(1) for k, v in raw.items()}
    checks = [("curvature", (H * H).sum((1, 2)), _hutchinson_sigma(H @ H))]
    trace = H.diagonal(dim1=1, dim2=2).sum(1)
    if (trace.abs() > 0.2 * H.flatten(1).norm(dim=1)).all():  # smooth nets have indefinite H with tr H ~ 0
        checks.append(("trace", trace, _hutchinson_sigma(H)))
    assert "relu" not in case or len(checks) == 2  # ReLU nets: H = J^T A J is PSD, tr H well defined
    for key, true, sigma in checks:
        rel = est[key] / true - 1
        assert float(rel.pow(2).mean().sqrt()) < 0.03, (key, rel)
        assert ((est[key] - true).abs() < 4 * sigma / n ** 0.5).all(), (key, rel, sigma / true / n ** 0.5)


@pytest.mark.parametrize("case", ["mlp_softplus", "cnn_relu_bn_maxpool"])
def test_exact_error_shrinks_like_one_over_sqrt_n(case):
    """RMS error at n and 16n probes: ratio 4, and equal to Hutchinson's predicted sigma / sqrt(n)."""
    model, (x, y) = CASES[case](), _batch(1)
    H = _dense(model, x, y).detach()
    true = (H * H).sum((1, 2))
    sigma1 = _hutchinson_sigma(H @ H) / true
    reps = 64  # the same sample 64 times in one batch: independent replicates (samples never interact)
    xr, yr = x.expand(reps, *x.shape[1:]), y.expand(reps)
    rms = {}
    for n in (4, 64):
        e = input_curvature(model, xr, yr, n_probes=n, generator=torch.Generator().manual_seed(n))["curvature"]
        rms[n] = float(((e / true - 1) ** 2).mean().sqrt())
        assert 0.65 < rms[n] / float(sigma1 / n ** 0.5) < 1.35, (n, rms[n], sigma1)
    assert 3.0 < rms[4] / rms[64] < 5.3  # sqrt(16) = 4


def test_fd_agrees_with_exact_to_order_h():
    model, (x, y) = _mlp("softplus"), _batch()
    probes = rademacher((4, *x.shape), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ex = input_curvature(model, x, y, method="exact", probes=probes)
    err = {}
    for h in (1e-2, 1e-3, 1e-4):
        fd = input_curvature(model, x, y, method="fd", h=h, probes=probes)
        err[h] = max(float((fd[k] / ex[k] - 1).abs().max()) for k in ("curvature", "hv_norm"))
    assert err[1e-3] < 1e-2
    assert 0.05 < err[1e-3] / err[1e-2] < 0.2 and 0.05 < err[1e-4] / err[1e-3] < 0.2  # O(h): 10x smaller h, 10x smaller


def test_official_differs_by_stated_conventions_only():
    """Official: mean-reduced loss (1/B), probe h*(v+1e-7), unsquared norm ||d|| = (h/B)||Hv|| and v.d = (h^2/B) v^T H v."""
    model, (x, y) = _mlp("softplus"), _batch(6)
    h, b = 1e-3, len(x)
    probes = rademacher((3, *x.shape), generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    off = official_curvature(model, x, y, h=h, probes=probes)
    fd = input_curvature(model, x, y, method="fd", h=h, probes=probes)
    torch.testing.assert_close(off["curvature"], h / b * fd["hv_norm"], rtol=1e-5, atol=0)
    torch.testing.assert_close(off["trace"], h * h / b * fd["trace"], rtol=1e-5, atol=0)
    # ... so the official numbers of a sample depend on its batch size; ours do not
    alone = official_curvature(model, x[:1], y[:1], h=h, probes=probes[:, :1])
    torch.testing.assert_close(alone["curvature"], b * off["curvature"][:1], rtol=1e-5, atol=0)


@pytest.mark.parametrize("method", ["exact", "fd"])
def test_sample_alone_equals_sample_in_batch(method):
    model = _cnn().train()  # training mode on purpose: scoring must use eval-mode BatchNorm
    x, y = _batch(6, seed=5)
    idx = torch.arange(10, 16)
    probes = sample_probes(idx, tuple(x.shape[1:]), 5, seed=7, epoch=3, dtype=torch.float64)
    full = input_curvature(model, x, y, method=method, probes=probes)
    for j in range(len(x)):
        one = input_curvature(model, x[j:j + 1], y[j:j + 1], method=method,
                              probes=sample_probes(idx[j:j + 1], tuple(x.shape[1:]), 5, seed=7, epoch=3,
                                                   dtype=torch.float64))
        for k in ("curvature", "trace"):
            torch.testing.assert_close(one[k], full[k][j:j + 1], rtol=1e-9, atol=0)
    assert model.training and all(p.requires_grad for p in model.parameters())  # modes restored


def test_probes_are_rademacher_and_seeded_per_sample():
    idx = torch.tensor([3, 9, 4])
    p = sample_probes(idx, (2, 5), 7, seed=1, epoch=2)
    assert p.shape == (7, 3, 2, 5) and set(p.unique().tolist()) == {-1.0, 1.0}
    again = sample_probes(idx.flip(0), (2, 5), 7, seed=1, epoch=2)
    assert torch.equal(again.flip(1), p)  # order / batch does not matter
    assert not torch.equal(sample_probes(idx, (2, 5), 7, seed=1, epoch=3), p)
    assert not torch.equal(sample_probes(idx, (2, 5), 7, seed=1, epoch=2, stream=1), p)
    assert set(p.unique().tolist()) == {-1.0, 1.0} and abs(float(p.mean())) < 0.2
    big = rademacher((200_000,), generator=torch.Generator().manual_seed(0))
    assert abs(float(big.mean())) < 0.01
    # the counter-based hash: balanced, and uncorrelated across probes, samples and neighbouring elements
    h = sample_probes(torch.arange(64), (3, 16, 16), 4, seed=0, epoch=0).double()
    assert abs(float(h.mean())) < 0.01
    for a, b in ((h[0], h[1]), (h[:, 0], h[:, 1]), (h[..., :-1], h[..., 1:])):
        assert abs(float((a * b).mean())) < 0.01


def test_fd_batches_of_probes_match_one_pass_and_errors():
    model, (x, y) = _mlp("softplus"), _batch(4)
    probes = rademacher((5, *x.shape), generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    a = input_curvature(model, x, y, method="fd", probes=probes)
    b = input_curvature(model, x, y, method="fd", probes=probes, max_rows=8)  # 2 probes per pass
    torch.testing.assert_close(a["curvature"], b["curvature"])
    with pytest.raises(UserError):
        input_curvature(model, x, y, method="newton")
    with pytest.raises(UserError):
        input_curvature(model, x, y, method="fd", h=0.0)


def test_what_fd_measures_smooth_vs_relu():
    """fd estimates tr(H^2) on a smooth network (error O(h)); on a ReLU network a step of h = 1e-2 crosses
    activation kinks and fd measures the curvature of the neighbourhood at scale h instead: the median sample's
    value is off by a factor of several, while a tiny step (no crossings) agrees with the exact Hessian."""
    from sklearn.datasets import load_digits

    from utils.models import DigitsMLP

    xs, ys = load_digits(return_X_y=True)
    x = torch.tensor(xs[:64] / 8.0 - 0.6, dtype=torch.float64).view(64, 1, 8, 8)
    y = torch.tensor(ys[:64])
    ratio = {}
    for act in ("softplus", "relu"):
        torch.manual_seed(0)
        model = DigitsMLP(10, 1, 8, 256, act).double()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(200):  # off the initialisation: a fitted network, as in scoring
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        probes = rademacher((20, *x.shape), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        exact = input_curvature(model, x, y, method="exact", probes=probes)["curvature"]
        for h in (1e-2, 1e-5):
            fd = input_curvature(model, x, y, method="fd", h=h, probes=probes)["curvature"]
            ratio[act, h] = float((fd / exact - 1).abs().median())
    assert ratio["softplus", 1e-2] < 0.03 and ratio["softplus", 1e-5] < 1e-4  # smooth: O(h) agreement
    assert ratio["relu", 1e-2] > 1.0  # ReLU at the default step: kink crossings dominate
    assert ratio["relu", 1e-5] < 1e-3  # ... and it is the crossings: a step too small to cross agrees


def test_exact_curvature_through_attention():
    """score.method=exact on a ViT: the fused scaled-dot-product kernels have no double backward; the estimator
    forces the math kernel, and its values match a finite difference with a tiny step (GELU: smooth)."""
    from utils.models import build_model

    torch.manual_seed(0)
    model = build_model("vit_small", 10, 3, 16, 24).double().eval()
    x, y = torch.randn(3, 3, 16, 16, dtype=torch.float64), torch.tensor([1, 2, 3])
    probes = rademacher((2, *x.shape), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = input_curvature(model, x, y, method="exact", probes=probes)
    fd = input_curvature(model, x, y, method="fd", h=1e-5, probes=probes)
    torch.testing.assert_close(exact["curvature"], fd["curvature"], rtol=1e-3, atol=0)


def test_official_form_and_evaluation_run_in_fp32_whatever_the_caller_set():
    """TF32 off and autocast off inside the official-form scorer and the per-sample evaluation pass, even when the
    caller allowed TF32 and opened a bf16 autocast region (the training loop does both on CUDA)."""
    from utils.distributed import setup
    from utils.evaluate import evaluate

    seen = []

    class Spy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(12, 3)

        def forward(self, x):
            seen.append((torch.backends.cuda.matmul.allow_tf32, torch.is_autocast_enabled("cpu")))
            return self.lin(x.flatten(1))

    model = Spy()
    x, y = torch.randn(8, 3, 2, 2), torch.randint(0, 3, (8,))
    ds = [(i, x[i], int(y[i])) for i in range(8)]
    ref = evaluate(model, ds, setup(), 4)
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        seen.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            official_curvature(model, x, y, n_probes=2)
            out = evaluate(model, ds, setup(), 4)
        assert torch.backends.cuda.matmul.allow_tf32 is True  # restored
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
    assert seen and all(s == (False, False) for s in seen)
    assert torch.equal(out["loss"], ref["loss"]) and torch.equal(out["margin"], ref["margin"])  # not bf16

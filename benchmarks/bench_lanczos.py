"""Top-20 Hessian eigenvalues of one model and one fixed 512-sample batch by three methods on the same
loss, timed side by side: this toolkit's Lanczos (utils.spectral.hessian.lanczos), PyHessian's power iteration
with deflation (`pip install pyhessian`; not a project dependency), and scipy's eigsh (ARPACK) on our
HVP. Reference eigenvalues: eigsh at tol 1e-10 on a float64 copy. Prints HVP counts, seconds, the
max relative error of the top-20 against the reference, and time/HVP ratios against PyHessian.

python benchmarks/bench_lanczos.py [--model digits_mlp|digits_cnn] [--steps 500] [--k 20] [--device cpu|cuda]

The model is trained for --steps SGD steps on clean digits first (an untrained network has a
degenerate, near-zero spectrum that flatters no method).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator, eigsh

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.config import load_config  # noqa: E402
from utils.data import build_data  # noqa: E402
from utils.models import build_model  # noqa: E402
from utils.spectral.capture import sample_indices  # noqa: E402
from utils.spectral.hessian import HessianOperator, lanczos  # noqa: E402


def trained_model(name: str, steps: int, device: str):
    cfg = load_config(None, ["data.name=digits", f"model.name={name}"])
    data = build_data(cfg)
    torch.manual_seed(0)
    model = build_model(name, 10, 1, 8, 128 if name == "digits_mlp" else 16).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    xs = torch.stack([data.train_eval[i][1] for i in range(len(data.train_eval))]).to(device)
    ys = torch.tensor([data.train_eval[i][2] for i in range(len(data.train_eval))], device=device)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        b = torch.randint(0, len(ys), (128,), generator=g).to(device)
        loss = torch.nn.functional.cross_entropy(model(xs[b]), ys[b])
        opt.zero_grad()
        loss.backward()
        opt.step()
    idx = torch.as_tensor(sample_indices(len(ys), 512, 0), device=device)
    return model.eval(), xs[idx], ys[idx]


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="digits_mlp")
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev, k = args.device, args.k
    model, x, y = trained_model(args.model, args.steps, dev)

    # reference: eigsh, float64 copy, tight tolerance
    ref_model = build_model(args.model, 10, 1, 8, 128 if args.model == "digits_mlp" else 16).to(dev).double()
    ref_model.load_state_dict(model.state_dict())
    ref_op = HessianOperator(ref_model, [(x.double(), y)])
    lin = LinearOperator((ref_op.dim, ref_op.dim), dtype=np.float64,
                         matvec=lambda v: ref_op(torch.as_tensor(np.ravel(v), device=dev)).cpu().numpy())
    ref = np.sort(eigsh(lin, k=k, which="LA", tol=1e-10)[0])[::-1]
    print(f"model {args.model} ({ref_op.dim} parameters), batch {len(y)}, device {dev}, top-{k}: "
          f"lambda_1 {ref[0]:.4g}, lambda_{k} {ref[-1]:.4g}; reference = eigsh float64 tol 1e-10 "
          f"({ref_op.n_matvec} HVPs)")

    def relerr(vals) -> float:
        return float(np.max(np.abs(np.sort(np.asarray(vals))[::-1][:k] - ref) / np.abs(ref)))

    rows = []
    op = HessianOperator(model, [(x, y)])
    op(torch.zeros(op.dim, device=dev))  # warm-up
    for tol in (1e-3, 1e-4):
        op.n_matvec = 0
        sync(dev)
        t0 = time.perf_counter()
        vals, _, info = lanczos(op, op.dim, k, max_iter=400, tol=tol, device=dev, dtype=torch.float32,
                                generator=torch.Generator(device=dev).manual_seed(0))
        sync(dev)
        rows.append((f"ours: Lanczos, full reorth, tol {tol:g}", info["n_matvec"], time.perf_counter() - t0,
                     relerr(vals.numpy())))

    op.n_matvec = 0
    lin32 = LinearOperator((op.dim, op.dim), dtype=np.float32,
                           matvec=lambda v: op(torch.as_tensor(np.ravel(v), device=dev, dtype=torch.float32)).cpu().numpy())
    t0 = time.perf_counter()
    vals = eigsh(lin32, k=k, which="LA", tol=1e-6)[0]
    sync(dev)
    rows.append(("scipy eigsh (ARPACK) on our HVP, tol 1e-6", op.n_matvec, time.perf_counter() - t0, relerr(vals)))

    try:
        import pyhessian  # noqa: F401

        ph = sys.modules["pyhessian.hessian"]  # the module (the package re-exports the class under this name)

        counter = {"n": 0}
        base = ph.hessian_vector_product

        def counted(gradsH, params, v):
            counter["n"] += 1
            return base(gradsH, params, v)

        ph.hessian_vector_product = counted
        for tol in (1e-3, 1e-4):
            counter["n"] = 0
            sync(dev)
            t0 = time.perf_counter()
            h = ph.hessian(model, torch.nn.CrossEntropyLoss(), data=(x, y), cuda=dev == "cuda")
            vals, _ = h.eigenvalues(maxIter=100, tol=tol, top_n=k)
            sync(dev)
            rows.append((f"PyHessian 0.1 power iteration + deflation, tol {tol:g}", counter["n"],
                         time.perf_counter() - t0, relerr(vals)))
    except ImportError:
        print("PyHessian is not installed (pip install pyhessian); its row is missing")

    pyh = [r for r in rows if r[0].startswith("PyHessian")]
    base = pyh[0] if pyh else ("", float("nan"), float("nan"), float("nan"))  # PyHessian at its default tol 1e-3
    print(f"{'method':55s} {'HVPs':>6s} {'seconds':>9s} {'max rel err':>12s} {'time vs PyH':>12s} {'HVPs vs PyH':>12s}")
    for name, n, t, e in rows:
        print(f"{name:55s} {n:6d} {t:9.3f} {e:12.2e} {base[2] / t:11.1f}x {base[1] / n:11.1f}x")
    print("ratios: PyHessian at its default tol 1e-3 divided by the row's (> 1: the row is faster / uses fewer HVPs)")


if __name__ == "__main__":
    main()

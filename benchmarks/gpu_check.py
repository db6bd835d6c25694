"""One-command GPU check (at most ~8 minutes on one H200): precision, throughput and the paper recipe, in one summary.

    make gpu-check DATA_ROOT=/path/to/data      # python benchmarks/gpu_check.py --data-root $DATA_ROOT --out DIR
    python benchmarks/gpu_check.py --smoke --out /tmp/gpu_check   # the same code path on the CPU, tiny, < 1 minute

Data: the CIFAR-10 dev ImageFolder at <data root>/cifar10-jpeg-dev (10k train / 2k test; `--smoke` writes a tiny
random one into a temporary directory when it is absent). Phases, each timed:
1. environment: device, torch / CUDA / cuDNN versions;
2. precision against float64 (same weights, probes, start vector; ||a - a64|| / ||a64||) on a CIFAR ResNet-18 a few
   SGD steps in: input curvature by fd (h=1e-2, 1e-3) and exact in fp32 with TF32 off (`utils.evaluate.fp32`, the
   scorer; with and without cudnn.benchmark), fp32 with TF32 allowed, bf16 autocast; `HessianOperator` products and
   `lanczos` top-10 eigenvalues in fp32;
3. throughput (images/s) side by side: training steps, curvature scoring and evaluation through the device-resident
   path (`data.on_device=true`) and the DataLoader path (`--workers`); training with `train.compile=true` on CUDA;
4. the paper recipe at full width (CIFAR ResNet-18 width 64, pad-4 crop + flip, SGD 0.1 Nesterov, weight decay 5e-4,
   batch 128, 10 % symmetric noise, lr /10 at 60 % and 90 % of the epochs), device-resident data, online scoring every
   epoch (fd, h=1e-2, one probe); `--epochs` (200) is cut to what the measured rates fit into `--budget-s` (said in
   the summary) and a deadline ends training in time regardless; then the mislabel AUROC table
   (`utils.curvature.analysis`; Confident Learning skipped, and said, when cleanlab is not importable).
Writes `--out`/summary.json and summary.md (and the run's pretrained/, curv_scores/, logs/ there).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

T0 = time.time()  # the budget counts from here (before torch is imported)

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import utils.curvature.estimator as est  # noqa: E402
from utils.callbacks import Callback, TrainState  # noqa: E402
from utils.config import load_config  # noqa: E402
from utils.curvature.analysis import analyze  # noqa: E402
from utils.curvature.scoring import score_model, score_run  # noqa: E402
from utils.data import build_data  # noqa: E402
from utils.device_data import DeviceDataset  # noqa: E402
from utils.distributed import setup  # noqa: E402
from utils.evaluate import autocast, evaluate, fp32  # noqa: E402
from utils.models import build_model, forward, per_sample_loss  # noqa: E402
from utils.spectral.hessian import HessianOperator, lanczos  # noqa: E402
from utils.train import _build, train  # noqa: E402

FOLDER = "cifar10-jpeg-dev"
RUN = "gpu_check_paper"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    """||a - ref|| / ||ref|| in float64."""
    a, ref = a.detach().double().flatten().cpu(), ref.detach().double().flatten().cpu()
    return float((a - ref).norm() / ref.norm().clamp_min(1e-300))


@contextlib.contextmanager
def _precision(mode: str, device: torch.device) -> Iterator[None]:
    """'tf32': TF32 matmul / cuDNN allowed; 'bf16': bf16 autocast (what training uses); restored after."""
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = mode == "tf32"
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=mode == "bf16"):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


def _raw_curvature(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, probes: torch.Tensor, method: str,
                   h: float) -> torch.Tensor:
    """mean_k ||H v_k||^2 (B,) float64 like `input_curvature`, but in whatever precision the caller sets
    (input_curvature itself always runs in `fp32`)."""
    with est.eval_mode(model), est.frozen(model):
        if method == "exact":
            hvp = est._ExactHVP(model, x, y)
            hv = torch.stack([hvp(v, last=k == len(probes) - 1) for k, v in enumerate(probes)])
        else:
            hv = est._hvp_fd(model, x, y, probes, est._input_grad(model, x, y), h)
    hv = hv.flatten(2).double()
    return (hv * hv).sum(-1).mean(0)


def environment(device: torch.device) -> dict[str, Any]:
    cuda = device.type == "cuda"
    return {"device": torch.cuda.get_device_name(device) if cuda else f"cpu ({os.cpu_count()} cores)",
            "torch": torch.__version__, "cuda": torch.version.cuda if cuda else None,
            "cudnn": torch.backends.cudnn.version() if cuda else None, "python": sys.version.split()[0]}


def precision(ds: Any, device: torch.device, width: int, batch: int, lanczos_iter: int) -> dict[str, Any]:
    """Relative errors against float64 (same weights, same probes / start vector) of the curvature estimators,
    Hessian-vector products and Lanczos top-10 eigenvalues."""
    idx = torch.arange(min(batch, len(ds)), device=device)
    x, y = DeviceDataset(ds, device).device_batch(idx)
    torch.manual_seed(0)
    model = build_model("cifar_resnet18", 10, x.shape[1], x.shape[-1], width).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    with fp32(device):  # a few steps: BN statistics and weights away from their initial values
        for _ in range(10):
            opt.zero_grad()
            per_sample_loss(model(x), y).mean().backward()
            opt.step()
    model.eval()
    m64 = copy.deepcopy(model).double()
    probes = est.sample_probes(idx, tuple(x.shape[1:]), 2, seed=0, device=device)
    rows, fd, ref64 = [], {}, {}

    def row(quantity: str, prec: str, rel: float, med: float = float("nan")) -> float:
        rows.append({"quantity": quantity, "precision": prec, "rel_error": rel, "median_sample_rel": med})
        return rel

    for name, method, h in (("fd h=1e-2", "fd", 1e-2), ("fd h=1e-3", "fd", 1e-3), ("exact", "exact", 1e-3)):
        c64 = est.input_curvature(m64, x.double(), y, method=method, h=h, probes=probes.double())["curvature"]
        ref64[name] = c64
        for prec, mode in (("fp32, TF32 off (offline scorer)", "fp32"), ("fp32, TF32 off, cudnn.benchmark (online "
                           "scorer)", "fp32b"), ("fp32, TF32 allowed", "tf32"), ("bf16 autocast", "bf16")):
            if mode.startswith("fp32"):
                torch.backends.cudnn.benchmark = mode == "fp32b"  # training sets it, so online scoring runs with it
                c = est.input_curvature(model, x, y, method=method, h=h, probes=probes)["curvature"]
                torch.backends.cudnn.benchmark = False
            else:
                with _precision(mode, device):
                    c = _raw_curvature(model, x, y, probes, method, h)
            med = float(((c.double().cpu() - c64.cpu()).abs() / c64.cpu().abs().clamp_min(1e-300)).median())
            row(f"curvature {name}", prec, _rel(c, c64), med)
            if mode == "fp32" and method == "fd":
                fd[name.split()[1]] = _rel(c, c64)
    for name in ("fd h=1e-2", "fd h=1e-3"):  # the step's own (discretisation) error, fp64 against exact fp64
        row(f"curvature {name} vs exact (discretisation)", "fp64", _rel(ref64[name], ref64["exact"]))
    op32, op64 = HessianOperator(model, [(idx, x, y)]), HessianOperator(m64, [(idx, x.double(), y)])
    v = torch.randn(op32.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(device)
    hvp = row("Hessian-vector product (HessianOperator)", "fp32, TF32 off", _rel(op32.matvec(v.float()), op64.matvec(v)))
    k = min(10, op32.dim)
    e32, _, _ = lanczos(op32.matvec, op32.dim, k, max_iter=lanczos_iter, tol=0.0, device=device, v0=v.float())
    e64, _, _ = lanczos(op64.matvec, op64.dim, k, max_iter=lanczos_iter, tol=0.0, device=device, dtype=torch.float64, v0=v)
    lz = row(f"Lanczos top-{k} eigenvalues ({lanczos_iter} steps)", "fp32, TF32 off",
             float(((e32 - e64).abs() / e64.abs().clamp_min(1e-300)).max()))
    return {"rows": rows, "fd_rel_error_vs_fp64": fd, "hvp_rel_error_vs_fp64": hvp, "lanczos_top10_rel_error_vs_fp64": lz,
            "lanczos_top10_fp64": e64.tolist(), "params": op32.dim, "batch": len(y), "width": width}


def _cycle(loader: Any) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Training batches over as many epochs as asked for (set_epoch as the training loop does)."""
    epoch = 0
    while True:
        epoch += 1
        loader.batch_sampler.set_epoch(epoch)
        yield from loader


def throughput(cfg: dict[str, Any], steps: int, warm: int, passes: bool = True) -> dict[str, float]:
    """images/s of `steps` training steps (the loop's step: channels-last, bf16 autocast on CUDA, SGD) after `warm`
    steps and (`passes`) of one curvature-scoring pass and one evaluation pass over the un-augmented training set."""
    dist = setup()
    state, loader = _build(cfg, dist)
    dev, model, net, opt, t = dist.device, state.model, state.net, state.optimizer, cfg["train"]
    model.train()
    batches = _cycle(loader)

    def step() -> int:
        idx, x, y = next(batches)
        idx, x, y = idx.to(dev, non_blocking=True), x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
        if dev.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(dev, t["amp"]):
            loss = per_sample_loss(forward(net, x, idx), y).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return len(y)

    t0 = time.perf_counter()
    for _ in range(warm):
        step()
    _sync(dev)
    t1 = time.perf_counter()
    n = sum(step() for _ in range(steps))
    _sync(dev)
    out = {"train_images_per_s": n / (time.perf_counter() - t1), "warmup_s": t1 - t0}
    t1 = time.perf_counter()  # the data path alone: batches made (augmented) and on the device
    n = sum(len(next(batches)[1].to(dev, non_blocking=True)) for _ in range(steps))
    _sync(dev)
    out["loader_images_per_s"] = n / (time.perf_counter() - t1)
    ds, sc, w = {"train": state.data.train_eval}, cfg["score"], cfg["data"]["num_workers"]
    for key, fn in (("score", lambda: score_model(model, ds, sc, 0, dist, num_workers=w)),
                    ("eval", lambda: evaluate(model, ds["train"], dist, t["eval_batch_size"], num_workers=w)))[:2 * passes]:
        fn()  # warm-up (cuDNN autotuning of the new shapes, worker start-up)
        _sync(dev)
        t1 = time.perf_counter()
        fn()
        _sync(dev)
        out[f"{key}_images_per_s"] = len(ds["train"]) / (time.perf_counter() - t1)
    return out


class Deadline(Callback):
    """Stops training (after the current step; the epoch is then closed, saved and scored) at a wall-clock time."""

    def __init__(self, at: float) -> None:
        self.at, self.hit = at, False

    def on_step_end(self, state: TrainState) -> None:
        if time.time() > self.at:
            state.stop = self.hit = True


def recipe_cfg(root: Path, folder: str, out: Path, epochs: int, extra: list[str]) -> dict[str, Any]:
    milestones = sorted({m for m in (round(0.6 * epochs), round(0.9 * epochs)) if 0 < m < epochs})
    return load_config(ROOT / "configs/cifar10_dev_paper.yaml", [
        f"run={RUN}", "resume=false", f"paths.pretrained={out}/pretrained", f"paths.scores={out}/curv_scores",
        f"paths.logs={out}/logs", f"data.root={root}", f"data.folder={folder}", "data.crop_pad=4",
        "data.on_device=true", "data.num_workers=0", f"train.epochs={epochs}", f"train.milestones={milestones}",
        f"train.checkpoint_every={epochs}", "score.online=true", "score.every=1", "score.method=fd", "score.h=0.01",
        "score.n_probes=1", "score.split=train", *extra])


def paper_run(cfg: dict[str, Any], deadline: float) -> dict[str, Any]:
    for sub in ("pretrained", "scores"):  # this script's own run only
        shutil.rmtree(Path(cfg["paths"][sub]) / RUN, ignore_errors=True)
    (Path(cfg["paths"]["logs"]) / f"{RUN}.jsonl").unlink(missing_ok=True)
    stop, t0 = Deadline(deadline), time.time()
    train(cfg, [stop])
    score_run(cfg)  # every epoch was scored online: this only aggregates curvature.npz
    t_train, t1 = time.time() - t0, time.time()
    res = analyze(cfg, progress=False, figures=False)
    log = [json.loads(s) for s in (Path(cfg["paths"]["logs"]) / f"{RUN}.jsonl").read_text().splitlines()]
    rows = [r for r in res["rows"] if r["target"] == "mislabeled" and r["group"] == "score"]
    auroc = {r["score"]: r["auroc"] for r in rows}
    return {"epochs": int(log[-1]["epoch"]), "stopped_by_deadline": stop.hit, "train_and_score_s": t_train,
            "analysis_s": time.time() - t1, "auroc_curvature": auroc.get("curvature", float("nan")), "auroc": auroc,
            "auroc_rows": [{k: r[k] for k in ("score", "label", "auroc", "auprc")} for r in rows],
            "final": {k: log[-1].get(k) for k in ("train_acc", "clean_acc", "noisy_acc", "test_acc", "aug_loss")},
            "epoch_s": float(np.mean([m["time"] for m in log])), "cl_source": res["cl_source"]}


def summary_md(s: dict[str, Any]) -> str:
    _fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = [f"# GPU check{' (smoke, CPU)' if s['smoke'] else ''}", "",
             f"{s['device']}; torch {s['torch']}, CUDA {s['cuda']}, cuDNN {s['cudnn']}; wall {s['wall_s']:.0f} s", "",
             "## Precision against float64", "", "| quantity | precision | rel. error | median per-sample |", "|---|---|---|---|"]
    lines += [f"| {r['quantity']} | {r['precision']} | {r['rel_error']:.3g} | {_fmt(r['median_sample_rel'])} |"
              for r in s["precision"]["rows"]]
    keys = ("train", "loader", "score", "eval")
    lines += ["", "## Throughput (images/s)", "", "| path | train | data path alone | score (fd, 1 probe) | eval |",
              "|---|---|---|---|---|"] + [f"| {name} | " + " | ".join(_fmt(t.get(f"{k}_images_per_s")) for k in keys) + " |"
                                          for name, t in s["throughput"].items()]
    ratio = "; ".join(f"{k} {s[f'device_vs_dataloader_{k}']:.2f}x" for k in ("train", "loader", "score"))
    lines += ["", f"device path / DataLoader path: {ratio}", "", "## Paper recipe (mislabel AUROC)", "", s["epochs_note"],
              "", f"final: {json.dumps(s['final'])}", "", "| score | AUROC | AUPRC |", "|---|---|---|"]
    lines += [f"| {r['label'].replace('|', '/')} | {r['auroc']:.4f} | {r['auprc']:.4f} |" for r in s["auroc_rows"] or []]
    lines += ["", f"phases (s): {json.dumps({k: round(v) for k, v in s['phase_s'].items()})}", "", *s["notes"], ""]
    return "\n".join(lines)


def _tiny_folder(base: Path, n_train: int = 8, n_test: int = 2, size: int = 32) -> Path:
    """A random 10-class ImageFolder (PNG) under base/tiny: the smoke run's data when the dev set is absent."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        for c in range(10):
            (d := base / "tiny" / split / f"c{c}").mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return base


def _phase(s: dict[str, Any], name: str, fn: Any, *args: Any) -> Any:
    """Run one phase, time it; a failure is recorded (and the check goes on) instead of losing the other phases."""
    t = time.time()
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001 - a failing phase is a finding of the check
        s["notes"].append(f"{name} failed: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}")
        return None
    finally:
        s["phase_s"][name] = time.time() - t
        print(f"[gpu_check] {name}: {s['phase_s'][name]:.1f} s", flush=True)


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-root", default="", help="holds cifar10-jpeg-dev/ (default: $DATA_ROOT, else ./data)")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/gpu_check"))
    p.add_argument("--epochs", type=int, default=200, help="paper-recipe epochs, cut to fit --budget-s")
    p.add_argument("--budget-s", type=float, default=420.0, help="wall-clock budget of the whole check, seconds")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--bench-steps", type=int, default=300, help="timed training steps per data path")
    p.add_argument("--workers", type=int, default=8, help="DataLoader workers of the DataLoader path")
    p.add_argument("--compile", choices=("auto", "on", "off"), default="auto", help="also time train.compile=true (auto: CUDA)")
    p.add_argument("--smoke", action="store_true", help="tiny, on the CPU: checks the code path in < 1 minute")
    a = p.parse_args(argv)
    a.data_root = a.data_root or os.environ.get("DATA_ROOT", "") or "data"
    if a.smoke:
        a.width, a.bench_steps, a.workers, a.epochs = min(a.width, 4), min(a.bench_steps, 4), 0, min(a.epochs, 2)
    return a


def main(argv: list[str] | None = None) -> dict[str, Any]:
    a = _args(argv)
    deadline = T0 + a.budget_s
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() and not a.smoke else "cpu")
    s: dict[str, Any] = {"smoke": a.smoke, **environment(device), "phase_s": {}, "notes": []}
    notes = s["notes"]
    if device.type == "cpu" and not a.smoke:
        notes.append("no CUDA device: ran on the CPU")
    root, folder, tmp = Path(a.data_root).resolve(), FOLDER, None
    extra = [f"model.width={a.width}", "data.subset=0"]
    if a.smoke:
        extra[1:] = ["train.batch_size=16", "train.eval_batch_size=64", "score.batch_size=32"]
        if (root / FOLDER / "train").is_dir():
            extra.append("data.subset=160")
        else:
            tmp = tempfile.TemporaryDirectory(prefix="gpu_check_")
            notes.append(f"smoke: {root / FOLDER} absent; a random 10-class ImageFolder of 80 + 20 images was used")
            root, folder = _tiny_folder(Path(tmp.name)), "tiny"
    elif not (root / FOLDER / "train").is_dir():
        raise SystemExit(f"{root / FOLDER} not found: pass --data-root (or DATA_ROOT) holding the CIFAR-10 dev ImageFolder")
    if importlib.util.find_spec("cleanlab") is None:
        extra.append("analysis.cl_probs=none")
        notes.append("cleanlab is not importable: analysis.cl_probs=none (no Confident Learning rows)")
    print(f"[gpu_check] {s['device']}, torch {s['torch']}, CUDA {s['cuda']}", flush=True)

    base = recipe_cfg(root, folder, out, a.epochs, extra)
    data = build_data(base)
    n_train, n_test = len(data.train), len(data.test)
    small = (4, 8, 20) if a.smoke else (16, 64, 80)  # precision model width, batch, Lanczos steps
    s["precision"] = _phase(s, "precision", precision, data.train_eval, device, *small) or {"rows": []}
    s["fd_rel_error_vs_fp64"] = s["precision"].get("fd_rel_error_vs_fp64", {})
    del data

    warm, dl_name = (2 if a.smoke else 30), f"DataLoader ({a.workers} workers)"
    dl = copy.deepcopy(base)
    dl["data"].update(on_device=False, num_workers=a.workers)
    s["throughput"] = {"device-resident": _phase(s, "throughput_device", throughput, base, a.bench_steps, warm),
                       dl_name: _phase(s, "throughput_dataloader", throughput, dl, a.bench_steps, warm)}
    if a.compile == "on" or (a.compile == "auto" and device.type == "cuda" and deadline - time.time() > 0.6 * a.budget_s):
        comp = copy.deepcopy(base)
        comp["train"]["compile"] = True  # warm-up: the compilations (full and last batch shapes)
        s["throughput"]["device-resident + compile"] = _phase(s, "throughput_compile", throughput, comp, a.bench_steps,
                                                              warm + 100, False)
    s["throughput"] = {k: v for k, v in s["throughput"].items() if v}
    dl_t = s["throughput"].get(dl_name, {})
    if not (dev_t := s["throughput"].get("device-resident") or dl_t):
        raise SystemExit("gpu_check: both throughput phases failed: " + "; ".join(notes))
    s.update({k: dev_t[k] for k in ("train_images_per_s", "score_images_per_s", "eval_images_per_s")})
    for k in ("train", "score", "loader"):
        s[f"dataloader_{k}_images_per_s"] = dl_t.get(f"{k}_images_per_s", float("nan"))
        s[f"device_vs_dataloader_{k}"] = dev_t[f"{k}_images_per_s"] / s[f"dataloader_{k}_images_per_s"]

    # epochs that fit: training + online scoring + the stats and test passes at the measured rates; a reserve for
    # the last epoch's overrun and the analysis; the epoch-0 scoring comes first
    per_epoch = (n_train / s["train_images_per_s"] + n_train / s["score_images_per_s"]
                 + (n_train + n_test) / s["eval_images_per_s"]) * 1.15 + (0.0 if a.smoke else 0.5)
    reserve = 10.0 if a.smoke else 45.0
    fit = max(1, math.floor((deadline - time.time() - reserve - n_train / s["score_images_per_s"]) / per_epoch))
    s["epochs_requested"] = a.epochs
    cfg = recipe_cfg(root, folder, out, min(a.epochs, fit), extra)
    s["epochs_note"] = (f"{cfg['train']['epochs']} epochs of the requested {a.epochs}" + (
        f", cut to fit --budget-s {a.budget_s:g} (estimated {per_epoch:.1f} s per epoch)" if fit < a.epochs else "")
        + f"; lr /10 at epochs {cfg['train']['milestones']}")
    r = _phase(s, "paper_recipe", paper_run, cfg, deadline - reserve) or {}
    if r.get("stopped_by_deadline"):
        s["epochs_note"] += f"; stopped by the deadline after epoch {r['epochs']}"
    s.update({k: r.get(k) for k in ("epochs", "auroc_curvature", "auroc", "auroc_rows", "final", "epoch_s")})
    if r.get("cl_source"):
        notes.append(f"Confident Learning: {r['cl_source']}")
    s["wall_s"] = time.time() - T0
    (out / "summary.json").write_text(json.dumps(s, indent=1, default=float) + "\n")
    (out / "summary.md").write_text(summary_md(s))
    print(summary_md(s) + f"\nwritten: {out / 'summary.json'}, {out / 'summary.md'}", flush=True)
    if tmp is not None:
        tmp.cleanup()
    return s


if __name__ == "__main__":
    main()

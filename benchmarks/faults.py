"""The fault suite: inject the faults of a shared GPU node into real runs and check that nothing is lost.

    python benchmarks/faults.py [--seed 0] [--only digits|cifar|ddp|format] [--keep DIR]

For a digits run (MLP, 300 images) and a CIFAR-shaped run (32x32 RGB ImageFolder written here, CIFAR ResNet-18
width 4 with BatchNorm), each fault is injected through $TOOLKIT_FAULT (utils/faults.py) into the same training
or scoring command a user runs, then the command is run again as a user would. A fault is survived when:
- SIGKILL (training: mid-epoch, inside a checkpoint write, during the stats pass; scoring: mid-epoch file, inside
  the write of curvature.npz): the rerun ends with files bit-identical to an unfaulted run and no temporary file;
- a full disk (OSError ENOSPC inside a write): the command exits 2 with one `error:` line, every file already
  there still reads, no temporary file; the rerun resumes and ends bit-identical;
- a rank SIGKILLed under `torchrun --max-restarts=1`: the job restarts, resumes and ends bit-identical to an
  unfaulted 2-rank run; with `--max-restarts=0` the surviving rank exits within TIMEOUT_S instead of hanging;
- a checkpoint or score file of a newer format version or of another project: the reader exits 2 in one line.
Prints one line per fault and `faults survived N / N`; exit status 1 if any was not survived."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from utils.io import NPZ_KEY  # noqa: E402

TIMEOUT_S = 60  # a surviving rank must exit within this after its peer was killed (no restarts)
RESULTS: list[tuple[str, bool, str]] = []


class Case:
    """One kind of run: its training and scoring commands under `tmp`."""

    def __init__(self, name: str, tmp: Path, train: list[str], score: list[str], args: list[str]) -> None:
        self.name, self.tmp, self.train_cmd, self.score_cmd, self.args = name, tmp, train, score, args

    def paths(self, run: str) -> list[str]:
        return [f"run={run}", f"paths.pretrained={self.tmp}/pre", f"paths.scores={self.tmp}/scores",
                f"paths.logs={self.tmp}/logs"]

    def run(self, stage: str, run: str, fault: str = "", nproc: int = 0, restarts: int = 0,
            once: str = "", timeout: int = 600) -> subprocess.CompletedProcess:
        script = self.train_cmd if stage == "train" else self.score_cmd
        cmd = [sys.executable]
        if nproc:
            cmd += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                    f"--max-restarts={restarts}", "--monitor-interval=0.5"]
        cmd += [str(ROOT / script[0]), *script[1:], *self.args, *self.paths(run)]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "TOOLKIT_FAULT": fault, "TOOLKIT_FAULT_ONCE": once}
        return subprocess.run(cmd, cwd=self.tmp, capture_output=True, text=True, env=env, timeout=timeout)

    def files(self, run: str) -> dict[str, str]:
        """A digest of every file of the run (checkpoints, record, stats, scores) by its path under the run."""
        out = {}
        for kind in ("pre", "scores"):
            base = self.tmp / kind / run
            for p in sorted(base.rglob("*")) if base.is_dir() else []:
                if p.is_file() and "analysis" not in p.parts:
                    out[f"{kind}/{p.relative_to(base).as_posix()}"] = digest(p)
        return out

    def temporaries(self, run: str) -> list[str]:
        return [p.name for base in (self.tmp / "pre" / run, self.tmp / "scores" / run) if base.is_dir()
                for p in base.rglob("*.tmp")]


def digest(p: Path) -> str:
    """sha256 of a file's content, less what may differ between two equal runs: wall times (`metrics.time` in
    checkpoints) and the run's own name (run.json). Tensors and arrays are hashed bit for bit."""
    h = hashlib.sha256()
    if p.suffix == ".pt":
        ck = torch.load(p, weights_only=True)
        ck.get("metrics", {}).pop("time", None)
        h.update(repr(_flat(ck)).encode())
    elif p.name == "run.json":
        d = json.loads(p.read_text())
        d.get("config", {}).pop("run", None)
        h.update(json.dumps(d, sort_keys=True).encode())
    else:
        h.update(p.read_bytes())
    return h.hexdigest()


def _flat(x: object) -> object:
    if isinstance(x, torch.Tensor):
        return hashlib.sha256(x.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest() \
            if x.numel() else str(x.dtype)
    if isinstance(x, dict):
        return sorted((str(k), _flat(v)) for k, v in x.items())
    if isinstance(x, (list, tuple)):
        return [_flat(v) for v in x]
    return x


def record(name: str, ok: bool, what: str) -> None:
    RESULTS.append((name, ok, what))
    print(f"{'survived' if ok else 'LOST    '}  {name:<44} {what}", flush=True)


def one_error_line(res: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    return lines[-1] if res.returncode == 2 and lines and lines[-1].startswith("error:") else ""


def compare(case: Case, run: str, ref: dict[str, str]) -> str:
    got = case.files(run)
    diff = sorted(k for k in ref.keys() | got.keys() if ref.get(k) != got.get(k))
    tmp = case.temporaries(run)
    return "" if not diff and not tmp else f"differs: {diff[:4]} temporaries: {tmp[:4]}"


def kill_and_rerun(case: Case, ref: dict[str, str], label: str, stage: str, fault: str) -> None:
    run = f"{case.name}_{label}"
    if stage == "score":
        case.run("train", run).check_returncode()
    res = case.run(stage, run, fault=fault)
    killed = res.returncode == -9
    again = case.run(stage, run)
    if stage == "train":
        case.run("score", run).check_returncode()
    problem = compare(case, run, ref)
    record(f"{case.name}: SIGKILL {label}", killed and again.returncode == 0 and not problem,
           f"[{fault}] killed={killed}, rerun exit {again.returncode}"
           + (f"; {problem}" if problem else "; bit-identical, no temporary file"))


def full_disk(case: Case, ref: dict[str, str], label: str, stage: str, fault: str) -> None:
    run = f"{case.name}_{label}"
    if stage == "score":
        case.run("train", run).check_returncode()
    res = case.run(stage, run, fault=fault)
    line = one_error_line(res)
    readable, temporaries = _all_readable(case, run), case.temporaries(run)
    again = case.run(stage, run)
    if stage == "train":
        case.run("score", run).check_returncode()
    problem = compare(case, run, ref)
    ok = bool(line) and "No space left" in line and readable and not temporaries and again.returncode == 0 \
        and not problem
    record(f"{case.name}: full disk {label}", ok,
           f"[{fault}] exit {res.returncode}, '{line[:70]}...', files readable={readable}, rerun exit "
           f"{again.returncode}" + (f"; {problem}" if problem else "; bit-identical"))


def _all_readable(case: Case, run: str) -> bool:
    from utils.io import load_npz
    from utils.runs import load_checkpoint

    try:
        for base in (case.tmp / "pre" / run, case.tmp / "scores" / run):
            for p in base.rglob("*") if base.is_dir() else []:
                if p.suffix == ".pt":
                    load_checkpoint(p)
                elif p.suffix == ".npz":
                    load_npz(p)
    except Exception:  # noqa: BLE001 - any unreadable file is the finding
        return False
    return True


def ranks(case: Case, ref2: dict[str, str], seed: random.Random) -> None:
    run = f"{case.name}_rank_restart"
    n = seed.randint(3, 25)
    once = str(case.tmp / f"{run}.fired")
    res = case.run("train", run, fault=f"kill:step:{n}:1", nproc=2, restarts=1, once=once)
    got = {k: v for k, v in case.files(run).items() if not k.startswith("scores/")}
    diff = sorted(k for k in ref2.keys() | got.keys() if ref2.get(k) != got.get(k))
    restarted = Path(once).exists() and res.returncode == 0
    record(f"{case.name}: rank 1 SIGKILLed, --max-restarts=1", restarted and not diff and not case.temporaries(run),
           f"[kill:step:{n}:1] exit {res.returncode}, restarted={restarted}"
           + (f"; differs: {diff[:4]}" if diff else "; bit-identical to an unfaulted 2-rank run"))
    run = f"{case.name}_rank_norestart"
    fired = case.tmp / f"{run}.fired"
    try:
        res = case.run("train", run, fault=f"kill:step:{n}:1", nproc=2, restarts=0, once=str(fired),
                       timeout=TIMEOUT_S + 60)
        end, code = time.time(), res.returncode
    except subprocess.TimeoutExpired:
        end, code = time.time(), None
    took = end - float(fired.read_text()) if fired.is_file() else float("nan")
    record(f"{case.name}: rank 1 SIGKILLed, no restarts", code not in (None, 0) and took < TIMEOUT_S,
           f"[kill:step:{n}:1] the whole job exited ({code}) {took:.1f} s after the kill (limit {TIMEOUT_S} s)")


def formats(case: Case, run: str) -> None:
    """Newer-format and foreign checkpoint / score files, each met by the stage that reads it."""
    pre, sc = case.tmp / "pre" / run, case.tmp / "scores" / run
    ck = torch.load(pre / "epoch_001.pt", weights_only=True)
    z = dict(np.load(sc / "curvature.npz"))
    saved = {p: p.read_bytes() for p in (pre / "epoch_001.pt", sc / "curvature.npz")}
    trials = [
        ("checkpoint of a newer format", pre / "epoch_001.pt", lambda p: torch.save({**ck, "format_version": 99}, p),
         "score", "format 99"),
        ("checkpoint of another project", pre / "epoch_001.pt",
         lambda p: torch.save({"state_dict": ck["model"], "epoch": 1}, p), "score", "not a checkpoint"),
        ("score file of a newer format", sc / "curvature.npz",
         lambda p: np.savez(p, **{**z, NPZ_KEY: np.int64(99)}), "analyse", "file format 99"),
        ("score file of another project", sc / "curvature.npz",
         lambda p: np.savez(p, scores=np.zeros(3)), "analyse", "not a file of this toolkit"),
    ]
    for label, path, write, stage, expect in trials:
        with open(path, "wb") as f:
            write(f)
        if stage == "score":
            shutil.rmtree(sc, ignore_errors=True)
            res = case.run("score", run)
        else:
            cmd = [sys.executable, str(ROOT / "analyze_curvature.py"), *case.paths(run)]
            res = subprocess.run(cmd, cwd=case.tmp, capture_output=True, text=True,
                                 env={**os.environ, "OMP_NUM_THREADS": "1"})
        line = one_error_line(res)
        record(f"{case.name}: {label}", bool(line) and expect in line,
               f"exit {res.returncode}: '{line[:110]}'")
        for p, b in saved.items():
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(b)


def digits_case(tmp: Path) -> Case:
    return Case("digits", tmp, ["train_digits.py"], ["score_digits_checkpoint.py"],
                ["data.subset=300", "train.epochs=4", "train.batch_size=32"])


def cifar_case(tmp: Path) -> Case:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("test", 3)):
        for k in range(10):
            d = tmp / "data" / "cifar_shaped" / split / f"class{k}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = (rng.integers(0, 256, (32, 32, 3)) * 0.5 + 12 * k).astype(np.uint8)
                Image.fromarray(img).save(d / f"{i}.png")
    return Case("cifar", tmp, ["train_cifar10.py"], ["score_cifar10_checkpoint.py"],
                ["data.name=imagefolder", f"data.root={tmp}/data", "data.folder=cifar_shaped",
                 "model.name=cifar_resnet18", "model.width=4", "train.epochs=3", "train.batch_size=24",
                 "train.lr=0.05", "train.milestones=[]", "noise.kind=symmetric", "noise.rate=0.1"])


def suite(case: Case, rng: random.Random, steps_per_epoch: int, epochs: int, score_batches: int,
          do: set[str]) -> None:
    """The kill, full-disk and format faults on one case (`score_batches`: scorer batches per checkpoint)."""
    case.run("train", "ref").check_returncode()
    case.run("score", "ref").check_returncode()
    ref = case.files("ref")
    writes_per_epoch = 3  # stats/epoch_XXX.npz, epoch_XXX.pt, resume.pt
    if "kill" in do:
        mid = rng.randint(steps_per_epoch + 1, steps_per_epoch * epochs - 1)
        kill_and_rerun(case, ref, "mid-epoch", "train", f"kill:step:{mid}")
        w = 4 + writes_per_epoch * rng.randint(0, epochs - 2) + rng.choice([1, 2])  # record + epoch 0, then an epoch
        kill_and_rerun(case, ref, "inside a checkpoint write", "train", f"kill:write:{w}")
        kill_and_rerun(case, ref, "during the stats pass", "train", f"kill:stats:{rng.randint(2, 2 * epochs)}")
        n = rng.randint(2, score_batches * (epochs + 1))
        kill_and_rerun(case, ref, "scoring mid-epoch file", "score", f"kill:score:{n}")
        kill_and_rerun(case, ref, "scoring inside curvature.npz", "score", f"kill:write:{epochs + 2}")
    if "disk" in do:
        full_disk(case, ref, "training", "train", f"enospc:write:{4 + writes_per_epoch * rng.randint(0, epochs - 2) + 2}")
        full_disk(case, ref, "scoring", "score", f"enospc:write:{rng.randint(1, epochs + 2)}")
    if "format" in do:
        formats(case, "ref")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0, help="draws the points at which faults are injected")
    ap.add_argument("--only", choices=["digits", "cifar", "ddp", "format"], default=None)
    ap.add_argument("--keep", default="", help="work in this directory and keep it (default: a temporary one)")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    t0 = time.time()
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="faults_"))
    try:
        if args.only in (None, "digits", "format"):
            d = digits_case(work / "digits")
            d.tmp.mkdir(parents=True, exist_ok=True)
            suite(d, rng, steps_per_epoch=10, epochs=4, score_batches=2, do={"format"} if args.only == "format" else
                  {"kill", "disk", "format"})
        if args.only in (None, "ddp"):
            c = cifar_case(work / "cifar")
            c.run("train", "ref2", nproc=2).check_returncode()
            ranks(c, c.files("ref2"), rng)
        if args.only in (None, "cifar"):
            c = cifar_case(work / "cifar")
            suite(c, rng, steps_per_epoch=5, epochs=3, score_batches=1, do={"kill", "disk"})
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    n = sum(ok for _, ok, _ in RESULTS)
    print(f"\nfaults survived {n} / {len(RESULTS)}  ({time.time() - t0:.0f} s)")
    sys.exit(0 if n == len(RESULTS) else 1)


if __name__ == "__main__":
    main()

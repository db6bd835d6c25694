"""The fault suite: inject the faults of a shared GPU node into real runs and check that nothing is lost.

    python benchmarks/faults.py [--seed 0] [--only digits,cifar,ddp,worker,format] [--keep DIR]

For a digits run (MLP, 300 images) and a CIFAR-shaped run (32x32 RGB ImageFolder written here, CIFAR ResNet-18
width 4 with BatchNorm), each fault is injected through $TOOLKIT_FAULT (utils/faults.py) into the same training
or scoring command a user runs, then the command is run again as a user would. A fault is survived when:
- SIGKILL (training: mid-epoch, inside a checkpoint write, during the stats pass; scoring: mid-epoch file, inside
  the write of curvature.npz): the rerun ends with files bit-identical to an unfaulted run and no temporary file;
- a full disk (OSError ENOSPC inside a write): the command exits 2 with one `error:` line, every file already
  there still reads, no temporary file; the rerun resumes and ends bit-identical;
- a rank SIGKILLed under `torchrun --max-restarts=1`: the job restarts, resumes and ends bit-identical to an
  unfaulted 2-rank run; with `--max-restarts=0` the surviving rank exits within TIMEOUT_S of the kill;
- a DataLoader worker of rank 1 SIGKILLed mid-epoch under `--max-restarts=1`: rank 1 ends in one `error:` line
  naming its rank and the DataLoader wait, the job restarts, resumes and ends bit-identical (it does not hang);
- a checkpoint or score file of a newer format version or of another project: the reader exits 2 in one line.
Every fault point is drawn from the points its run has (steps, writes, batches, a worker's samples: computed from
the run's shape); a fault that never fired is reported as lost. Every command runs in its own session with a
marker in its environment; on a timeout, and after it ends, the suite SIGKILLs its process group and every
process carrying the marker (torchrun's ranks run in sessions of their own, DataLoader workers under a fork
server): nothing it started outlives it. Prints one line per fault and `faults survived N / N`; exit status 1 if
any was not survived."""

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

from benchmarks.procs import launch  # noqa: E402
from utils.io import NPZ_KEY  # noqa: E402

TIMEOUT_S = 60  # a surviving rank must exit within this after its peer was killed (no restarts)
RESTART_S = 400  # a restarted job must end within this after the fault fired
RESULTS: list[tuple[str, bool, str]] = []


class Case:
    """One kind of run: its training and scoring commands under `tmp`; `n_train`, `batch`, `epochs` and `workers`
    (DataLoader workers per rank) give the run's shape, from which fault points are drawn."""

    def __init__(self, name: str, tmp: Path, train: list[str], score: list[str], args: list[str], n_train: int,
                 batch: int, epochs: int, workers: int) -> None:
        self.name, self.tmp, self.train_cmd, self.score_cmd, self.args = name, tmp, train, score, args
        self.n_train, self.batch, self.epochs, self.workers = n_train, batch, epochs, workers

    def batches(self, epoch: int = 1, rank: int = 0, world: int = 1) -> list[list[int]]:
        """This rank's sample indices of each batch of `epoch` (the training loader's own sampler)."""
        from utils.data import GlobalBatchSampler

        s = GlobalBatchSampler(self.n_train, self.batch, rank, world, shuffle=True, seed=0)
        s.set_epoch(epoch)
        return list(s)

    def steps(self, world: int = 1) -> int:
        """Optimizer steps of the whole run."""
        return self.epochs * len(self.batches(world=world))

    def worker0_samples(self, rank: int, world: int) -> int:
        """Samples DataLoader worker 0 of `rank` reads in epoch 1 (batches go to the workers in turn)."""
        return sum(len(b) for b in self.batches(1, rank, world)[:: max(self.workers, 1)])

    def paths(self, run: str) -> list[str]:
        return [f"run={run}", f"paths.pretrained={self.tmp}/pre", f"paths.scores={self.tmp}/scores",
                f"paths.logs={self.tmp}/logs"]

    def run(self, stage: str, run: str, fault: str = "", nproc: int = 0, restarts: int = 0,
            once: str = "", timeout: int = 600, after_fire: float = 0.0) -> subprocess.CompletedProcess:
        """The stage's command (`launch`); with `after_fire`, its clock after the fault is `once`'s time."""
        script = self.train_cmd if stage == "train" else self.score_cmd
        cmd = [sys.executable]
        if nproc:
            cmd += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                    f"--max-restarts={restarts}", "--monitor-interval=0.5"]
        cmd += [str(ROOT / script[0]), *script[1:], *self.args, *self.paths(run)]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "TOOLKIT_FAULT": fault, "TOOLKIT_FAULT_ONCE": once}
        return launch(cmd, self.tmp, env, timeout, Path(once) if once and after_fire else None, after_fire)

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


def _fired(once: Path) -> str:
    return "" if once.is_file() else "LOST: the fault never fired; "


def _restart_run(case: Case, ref2: dict[str, str], run: str, fault: str) -> tuple[subprocess.CompletedProcess | None,
                                                                                  bool, str]:
    """A 2-rank training under `--max-restarts=1` with `fault` firing once: (result or None if it outlived
    RESTART_S after the fault, survived without a diff, what happened)."""
    once = case.tmp / f"{run}.fired"
    try:
        res = case.run("train", run, fault=fault, nproc=2, restarts=1, once=str(once), after_fire=RESTART_S)
    except subprocess.TimeoutExpired:
        return None, False, f"{_fired(once)}[{fault}] still running {RESTART_S} s after the fault: killed (a hang)"
    got = {k: v for k, v in case.files(run).items() if not k.startswith("scores/")}
    diff = sorted(k for k in ref2.keys() | got.keys() if ref2.get(k) != got.get(k))
    restarted = once.is_file() and res.returncode == 0
    ok = restarted and not diff and not case.temporaries(run) and not res.orphans
    return res, ok, (f"{_fired(once)}[{fault}] exit {res.returncode}, restarted={restarted}"
                     + (f"; differs: {diff[:4]}" if diff else "; bit-identical to an unfaulted 2-rank run")
                     + (f"; {res.orphans} process(es) outlived it" if res.orphans else ""))


def ranks(case: Case, ref2: dict[str, str], seed: random.Random) -> None:
    n = seed.randint(2, case.steps(world=2) - 1)  # a step the 2-rank run has, neither the first nor the last
    _, ok, what = _restart_run(case, ref2, f"{case.name}_rank_restart", f"kill:step:{n}:1")
    record(f"{case.name}: rank 1 SIGKILLed, --max-restarts=1", ok, what)
    run = f"{case.name}_rank_norestart"
    fired = case.tmp / f"{run}.fired"
    try:  # the clock starts at the kill: TIMEOUT_S (+ 30 s to measure a late exit) after the time in `fired`
        res = case.run("train", run, fault=f"kill:step:{n}:1", nproc=2, restarts=0, once=str(fired),
                       after_fire=TIMEOUT_S + 30)
        end, code = time.time(), res.returncode
    except subprocess.TimeoutExpired:
        end, code = time.time(), None
    took = end - float(fired.read_text()) if fired.is_file() else float("nan")
    record(f"{case.name}: rank 1 SIGKILLed, no restarts", code not in (None, 0) and took < TIMEOUT_S,
           f"{_fired(fired)}[kill:step:{n}:1] the whole job exited ({code}) {took:.1f} s after the kill "
           f"(limit {TIMEOUT_S} s)")


def worker_kill(case: Case, ref2: dict[str, str], seed: random.Random) -> None:
    """DataLoader worker 0 of rank 1 SIGKILLed at a sample it reads in epoch 1 (not its first)."""
    n = seed.randint(2, case.worker0_samples(rank=1, world=2))
    res, ok, what = _restart_run(case, ref2, f"{case.name}_worker_kill", f"kill:worker:{n}:1")
    lines = [ln for ln in (res.stderr if res else "").splitlines() if ln.startswith("error: rank 1:")]
    named = bool(lines) and "DataLoader" in lines[0]
    record(f"{case.name}: DataLoader worker SIGKILLed, restarts=1", ok and named,
           what + (f"; rank 1: '{lines[0][:110]}...'" if lines else "; no `error: rank 1:` line"))


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
            res = launch(cmd, case.tmp, {**os.environ, "OMP_NUM_THREADS": "1"}, 600)
        line = one_error_line(res)
        record(f"{case.name}: {label}", bool(line) and expect in line,
               f"exit {res.returncode}: '{line[:110]}'")
        for p, b in saved.items():
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(b)


def digits_case(tmp: Path) -> Case:
    return Case("digits", tmp, ["train_digits.py"], ["score_digits_checkpoint.py"],
                ["data.subset=300", "train.epochs=4", "train.batch_size=32"], n_train=300, batch=32, epochs=4, workers=0)


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
                 "train.lr=0.05", "train.milestones=[]", "noise.kind=symmetric", "noise.rate=0.1", "data.num_workers=4"],
                n_train=120, batch=24, epochs=3, workers=4)


def suite(case: Case, rng: random.Random, score_batches: int, do: set[str]) -> None:
    """The kill, full-disk and format faults on one case (`score_batches`: scorer batches per checkpoint)."""
    steps_per_epoch, epochs = len(case.batches()), case.epochs
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


CASES = {"digits", "cifar", "ddp", "worker", "format"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0, help="draws the points at which faults are injected")
    ap.add_argument("--only", default="", help="comma-separated cases: digits, cifar, ddp (rank kills), worker "
                    "(DataLoader worker kill), format (default: all but format alone)")
    ap.add_argument("--keep", default="", help="work in this directory and keep it (default: a temporary one)")
    args = ap.parse_args()
    only = set(filter(None, args.only.split(",")))
    if only - CASES:
        ap.error(f"--only: unknown case(s) {', '.join(sorted(only - CASES))}; choose from {', '.join(sorted(CASES))}")
    want = lambda name: not only or name in only  # noqa: E731
    rng = random.Random(args.seed)
    t0 = time.time()
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="faults_"))
    try:
        if want("digits") or "format" in only:
            d = digits_case(work / "digits")
            d.tmp.mkdir(parents=True, exist_ok=True)
            suite(d, rng, score_batches=2, do={"kill", "disk", "format"} if want("digits") else {"format"})
        if want("ddp") or want("worker"):
            c = cifar_case(work / "cifar")
            c.run("train", "ref2", nproc=2).check_returncode()
            ref2 = c.files("ref2")
            if want("ddp"):
                ranks(c, ref2, rng)
            if want("worker"):
                worker_kill(c, ref2, rng)
        if want("cifar"):
            c = cifar_case(work / "cifar")
            suite(c, rng, score_batches=1, do={"kill", "disk"})
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    n = sum(ok for _, ok, _ in RESULTS)
    print(f"\nfaults survived {n} / {len(RESULTS)}  ({time.time() - t0:.0f} s)")
    sys.exit(0 if n == len(RESULTS) else 1)


if __name__ == "__main__":
    main()

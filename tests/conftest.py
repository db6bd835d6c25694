"""Shared fixtures: tiny digits runs in a temporary directory (no network, no ../shared)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# under pytest-xdist (`make test`: two workers on the two cores) each worker computes on one thread
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, torch.get_num_threads()))

from utils.config import load_config  # noqa: E402


def tiny_cfg(tmp: Path, *overrides: str) -> dict:
    """A fast digits config (300 training images, MLP) writing under `tmp`."""
    base = [f"paths.pretrained={tmp}/pretrained", f"paths.scores={tmp}/curv_scores", f"paths.logs={tmp}/logs",
            "data.subset=300", "train.epochs=3", "train.batch_size=32", "run=tiny"]
    return load_config(ROOT / "configs/digits.yaml", base + list(overrides))


def run_script(script: str, *args: str, cwd: Path = ROOT, nproc: int = 0, env: dict | None = None,
               timeout: int = 300) -> subprocess.CompletedProcess:
    """Run a top-level script (optionally under torchrun with `nproc` CPU processes)."""
    cmd = [sys.executable]
    if nproc:
        cmd += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    cmd += [str(ROOT / script), *args]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env)


def write_image_folder(root: Path, classes=("a", "b", "c"), n: int = 4, ext: str = "png", size: int = 32,
                       noise: bool = False) -> Path:
    """An ImageFolder tree root/{train,test}/<class>/<i>.<ext> of RGB images (flat per class, or random)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for k, c in enumerate(classes):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                arr = (rng.integers(0, 256, (size, size, 3)) if noise else np.full((size, size, 3), 40 * k + i))
                Image.fromarray(arr.astype(np.uint8)).save(root / split / c / f"{i}.{ext}")
    return root


@pytest.fixture
def tiny(tmp_path):
    return lambda *o: tiny_cfg(tmp_path, *o)


def execute_notebook(name: str, parameters: str, timeout: int = 300) -> list[dict]:
    """Run notebooks/<name>.ipynb headless (nbclient) with its one cell tagged 'parameters' replaced by `parameters`;
    returns the code cells' outputs after checking that no cell raised."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "the run is chosen in exactly one cell tagged 'parameters'"
    tagged[0].source = parameters
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(ROOT / "notebooks")}})
    client.execute(env={**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"})
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    return outputs

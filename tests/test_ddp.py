"""torchrun with 2 CPU (gloo) processes writes what one process writes; only rank 0 writes."""

import numpy as np
import torch

from utils.checkpoint import list_checkpoints, load_checkpoint

from .conftest import run_script


def test_two_ranks_match_one_process(tmp_path):
    args = [f"paths.pretrained={tmp_path}/pre", f"paths.logs={tmp_path}/logs", "data.subset=256",
            "train.epochs=2", "train.batch_size=32", "train.lr=0.01"]
    one = run_script("train_digits.py", *args, "run=one", cwd=tmp_path)
    assert one.returncode == 0, one.stderr[-2000:]
    two = run_script("train_digits.py", *args, "run=two", cwd=tmp_path, nproc=2)
    assert two.returncode == 0, two.stderr[-2000:]
    a, b = list_checkpoints(tmp_path / "pre/one"), list_checkpoints(tmp_path / "pre/two")
    assert [e for e, _ in a] == [e for e, _ in b] == [0, 1, 2]
    wa, wb = load_checkpoint(a[-1][1])["model"], load_checkpoint(b[-1][1])["model"]
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5)
    with np.load(tmp_path / "pre/one/train_stats.npz") as za, np.load(tmp_path / "pre/two/train_stats.npz") as zb:
        np.testing.assert_allclose(za["loss"], zb["loss"], rtol=1e-3, atol=1e-4)
    assert len((tmp_path / "logs/two.jsonl").read_text().splitlines()) == 2  # one writer

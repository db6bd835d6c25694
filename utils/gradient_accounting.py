"""Gradient accounting (Maini et al., ICML 2023): how much of each layer group's gradient comes from
the mislabeled examples, recorded during training by a `utils.train.Callback` (no second pass)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import list_checkpoints, record_to_numpy, run_dir, save_npz
from .distributed import setup
from .errors import UserError
from .layer_groups import layer_groups, merge_groups
from .localization import out_dir
from .localization_report import write_accounting_md, write_table
from .train import Callback, TrainState, train


class GradientAccounting(Callback):
    """Per optimizer step and layer group: squared norms of the gradients of the clean and the noisy
    examples' share of the batch loss and their dot product (clean + noisy = the step's gradient).
    Single process only (per-rank partial gradients would need an all-reduce of whole gradients).
    Rows are saved to `path` (.npz) after every epoch; a resumed run keeps the rows up to its epoch."""

    def __init__(self, path: Path, every: int = 1, group_depth: int = 0, keep_last: bool = False) -> None:
        self.path, self.every, self.depth, self.keep_last = Path(path), max(1, every), group_depth, keep_last
        self.rows: dict[str, list] = {k: [] for k in ("epoch", "step", "n_clean", "n_noisy", "clean_sq", "noisy_sq", "dot")}
        self.last: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None

    def on_train_start(self, state: TrainState) -> None:
        if state.dist.world > 1:
            raise UserError("gradient accounting runs in a single process; start it without torchrun")
        self.groups = merge_groups(layer_groups(state.model), self.depth)
        named = dict(state.model.named_parameters())
        self.params = [named[k] for g in self.groups for k in g.params]
        self.owner = torch.tensor([i for i, g in enumerate(self.groups) for _ in g.params])
        self.noisy = state.data.record["is_noisy"].to(state.dist.device)
        if self.path.is_file() and state.epoch > 0:
            with np.load(self.path, allow_pickle=False) as z:
                keep = z["epoch"] <= state.epoch
                for k in self.rows:
                    self.rows[k] = list(z[k][keep])

    def on_batch_loss(self, state: TrainState, losses: torch.Tensor, index: torch.Tensor, loss: torch.Tensor) -> None:
        if state.step % self.every:
            return
        noisy = self.noisy[index]
        scale = 1.0 / len(losses)  # the loop's loss is losses.sum() / batch size in one process
        parts = []
        for sel in (~noisy, noisy):
            part = (losses * sel).sum() * scale
            if sel.any():
                g = torch.autograd.grad(part, self.params, retain_graph=True, allow_unused=True)
                g = [torch.zeros_like(p) if gi is None else gi.detach() for p, gi in zip(self.params, g)]
            else:
                g = [torch.zeros_like(p) for p in self.params]
            parts.append(g)
        gc, gn = parts
        n = len(self.groups)
        cc, nn_, cn = (torch.zeros(n, dtype=torch.float64) for _ in range(3))
        for i, a, b in zip(self.owner.tolist(), gc, gn):
            a64, b64 = a.double(), b.double()
            cc[i] += float((a64 * a64).sum())
            nn_[i] += float((b64 * b64).sum())
            cn[i] += float((a64 * b64).sum())
        if self.keep_last:
            self.last = (gc, gn)
        self.rows["epoch"].append(state.epoch + 1)
        self.rows["step"].append(state.step + 1)
        self.rows["n_clean"].append(int((~noisy).sum()))
        self.rows["n_noisy"].append(int(noisy.sum()))
        self.rows["clean_sq"].append(cc.numpy())
        self.rows["noisy_sq"].append(nn_.numpy())
        self.rows["dot"].append(cn.numpy())

    def on_epoch_end(self, state: TrainState, metrics: dict[str, Any]) -> None:
        if state.dist.is_main:
            self.save(state.data.record)

    def save(self, record: dict[str, Any]) -> None:
        g = len(self.groups)
        arr = lambda k, dt: np.asarray(self.rows[k], dt)  # noqa: E731
        mat = lambda k: np.asarray(self.rows[k], np.float64).reshape(-1, g)  # noqa: E731
        save_npz(self.path, epoch=arr("epoch", np.int64), step=arr("step", np.int64), n_clean=arr("n_clean", np.int64),
                 n_noisy=arr("n_noisy", np.int64), clean_sq=mat("clean_sq"), noisy_sq=mat("noisy_sq"), dot=mat("dot"),
                 group_names=np.array([x.name for x in self.groups]),
                 group_params=np.array([sum(1 for _ in x.params) for x in self.groups], np.int64),
                 **record_to_numpy(record))


def accounting_summary(z: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Per (epoch, group): mean over steps of the clean / noisy gradient norms, their cosine, the noisy
    examples' share |g_noisy| / (|g_clean| + |g_noisy|) and the noisy share of the batches' examples."""
    rows = []
    epochs = np.unique(z["epoch"])
    for e in epochs:
        s = z["epoch"] == e
        cn, nn_, dot = np.sqrt(z["clean_sq"][s]), np.sqrt(z["noisy_sq"][s]), z["dot"][s]
        with np.errstate(invalid="ignore", divide="ignore"):
            cos = np.where(cn * nn_ > 0, dot / (cn * nn_), np.nan)
            share = np.where(cn + nn_ > 0, nn_ / (cn + nn_), np.nan)
        data_share = float(z["n_noisy"][s].sum() / max(1, (z["n_noisy"][s] + z["n_clean"][s]).sum()))
        for j, name in enumerate(z["group_names"]):
            rows.append({"epoch": int(e), "group": str(name), "clean_norm": float(np.nanmean(cn[:, j])),
                         "noisy_norm": float(np.nanmean(nn_[:, j])), "cosine": float(np.nanmean(cos[:, j])),
                         "noisy_share": float(np.nanmean(share[:, j])), "data_share": data_share})
    return rows


def run_gradient_accounting(cfg: dict[str, Any]) -> Path:
    """Train `cfg`'s run with gradient accounting, then write the per-epoch table and figure."""
    from .localization_report import plot_accounting

    out = out_dir(cfg)
    path = out / "accounting.npz"
    done = list_checkpoints(run_dir(cfg))
    if done and done[-1][0] >= cfg["train"]["epochs"] and not path.is_file():
        raise UserError(f"run {cfg['run']} is already trained without gradient accounting; pass run=<new name>")
    loc = cfg["localization"]
    train(cfg, [GradientAccounting(path, loc["accounting_every"], loc["group_depth"])])
    if not setup().is_main:
        return path
    with np.load(path, allow_pickle=False) as f:
        z = dict(f)
    rows = accounting_summary(z)
    write_table(out / "accounting", rows, markdown=False)
    write_accounting_md(rows, out / "accounting.md")
    plot_accounting(rows, out / "accounting.png")
    return path



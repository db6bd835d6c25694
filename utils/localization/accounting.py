"""Gradient accounting (Maini et al., ICML 2023): how much of each layer group's gradient comes from
the mislabeled examples (or any examples under study, `localization.examples`; "noisy" / "clean" in the array
names = studied / reference), recorded during training by a `utils.callbacks.Callback` (no second pass).

The per-step sums stay on the device: each accounted step adds one (3 * G + 1,) float64 tensor (clean
and noisy squared norms and their dot product per group, then the number of noisy examples), with no
host synchronisation; they are moved to the host once per epoch, when the rows are written."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..callbacks import Callback, TrainState
from ..distributed import setup
from ..errors import UserError
from ..io import load_npz, save_npz, write_table
from ..runs import list_checkpoints, record_to_numpy, run_dir
from ..train import train
from .groups import layer_groups, merge_groups
from .methods import out_dir, pct, print_summary, selection_suffix
from .report import plot_accounting, write_accounting_md
from .selection import NAMES, Selection, caption, check_source, relabel, resolve_selection, write_selection

ROW_KEYS = ("epoch", "step", "n_clean", "n_noisy", "clean_sq", "noisy_sq", "dot")


class GradientAccounting(Callback):
    """Per optimizer step and layer group: squared norms of the gradients of the clean and the noisy
    examples' share of the batch loss and their dot product (clean + noisy = the step's gradient).
    Single process only (per-rank partial gradients would need an all-reduce of whole gradients).
    Rows are saved to `path` (.npz) after every epoch; a resumed run keeps the rows up to its epoch.
    `select(record) -> Selection` chooses the "noisy" examples (default: the record's is_noisy)."""

    def __init__(self, path: Path, every: int = 1, group_depth: int = 0, keep_last: bool = False,
                 select: Callable[[dict[str, Any]], Selection] | None = None) -> None:
        self.path, self.every, self.depth, self.keep_last = Path(path), max(1, every), group_depth, keep_last
        self.select, self.selection = select, None
        self.rows: dict[str, list] = {k: [] for k in ROW_KEYS}  # host rows (flushed epochs)
        self.pending: list[tuple[int, int, int, torch.Tensor]] = []  # (epoch, step, batch size, sums on the device)
        self.last: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None

    def on_train_start(self, state: TrainState) -> None:
        if state.dist.world > 1:
            raise UserError("gradient accounting runs in a single process; start it without torchrun")
        dev = state.dist.device
        self.groups = merge_groups(layer_groups(state.model), self.depth)
        named = dict(state.model.named_parameters())
        self.params = [named[k] for g in self.groups for k in g.params]
        self.owner_ids = [i for i, g in enumerate(self.groups) for _ in g.params]  # group of each parameter
        self.owner = torch.tensor(self.owner_ids, dtype=torch.int64)
        if self.select is None:
            self.noisy = state.data.record["is_noisy"].to(dev)
        else:
            self.selection = self.select(state.data.record)
            self.noisy = torch.as_tensor(self.selection.mask).to(dev)
        if self.path.is_file() and state.epoch > 0:
            z = load_npz(self.path)
            keep = z["epoch"] <= state.epoch
            for k in self.rows:
                self.rows[k] = list(z[k][keep])

    def on_batch_loss(self, state: TrainState, losses: torch.Tensor, index: torch.Tensor, loss: torch.Tensor) -> None:
        if state.step % self.every:
            return
        noisy = self.noisy[index]
        scale = 1.0 / len(losses)  # the loop's loss is losses.sum() / batch size in one process
        parts = []
        for sel in (~noisy, noisy):  # an empty selection gives zero gradients (no host sync to test for it)
            g = torch.autograd.grad((losses * sel).sum() * scale, self.params, retain_graph=True, allow_unused=True)
            parts.append([torch.zeros_like(p) if gi is None else gi.detach() for p, gi in zip(self.params, g)])
        gc, gn = parts
        # per group: |g_clean|^2, |g_noisy|^2, <g_clean, g_noisy> in float64, added in parameter order on the
        # device (the same additions as a host-side sum, bit for bit and on every device; no index_add_ atomics)
        sums = torch.zeros(len(self.groups), 3, dtype=torch.float64, device=noisy.device)
        for i, a, b in zip(self.owner_ids, gc, gn):
            a64, b64 = a.double(), b.double()
            sums[i] += torch.stack([(a64 * a64).sum(), (b64 * b64).sum(), (a64 * b64).sum()])
        self.pending.append((state.epoch + 1, state.step + 1, len(losses),
                             torch.cat([sums.T.flatten(), noisy.sum().double().view(1)])))
        if self.keep_last:
            self.last = (gc, gn)

    def flush(self) -> None:
        """Move the pending steps' sums to the host (one transfer)."""
        if not self.pending:
            return
        g = len(self.groups)
        host = torch.stack([p[3] for p in self.pending]).cpu().numpy()  # (S, 3 G + 1)
        for (epoch, step, n, _), row in zip(self.pending, host):
            n_noisy = int(row[-1])
            self.rows["epoch"].append(epoch)
            self.rows["step"].append(step)
            self.rows["n_clean"].append(n - n_noisy)
            self.rows["n_noisy"].append(n_noisy)
            for j, k in enumerate(("clean_sq", "noisy_sq", "dot")):
                self.rows[k].append(row[j * g:(j + 1) * g])
        self.pending = []

    def on_epoch_end(self, state: TrainState, metrics: dict[str, Any]) -> None:
        if state.dist.is_main:
            self.save(state.data.record)

    def save(self, record: dict[str, Any]) -> Path:
        """Write every row so far (pending steps flushed) with the group names and the run's record."""
        self.flush()
        g = len(self.groups)
        arr = lambda k, dt: np.asarray(self.rows[k], dt)  # noqa: E731
        mat = lambda k: np.asarray(self.rows[k], np.float64).reshape(-1, g)  # noqa: E731
        extra = {} if self.selection is None or self.selection.default else {"studied": self.selection.mask}
        return save_npz(self.path, epoch=arr("epoch", np.int64), step=arr("step", np.int64),
                        n_clean=arr("n_clean", np.int64), n_noisy=arr("n_noisy", np.int64), clean_sq=mat("clean_sq"),
                        noisy_sq=mat("noisy_sq"), dot=mat("dot"), group_names=np.array([x.name for x in self.groups]),
                        group_params=np.array([len(x.params) for x in self.groups], np.int64),
                        **record_to_numpy(record), **extra)


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


def headline(rows: list[dict[str, Any]], names: tuple[str, str] = NAMES) -> list[str]:
    """Summary lines: per group, the noisy share of the gradient norm in the first and the last epoch."""
    epochs = sorted({r["epoch"] for r in rows})
    if not epochs:
        return ["no accounted steps (localization.accounting_every larger than the run's steps?)"]
    first, last = epochs[0], epochs[-1]
    at = {(r["group"], r["epoch"]): r for r in rows}
    groups = list(dict.fromkeys(r["group"] for r in rows))
    share = {r["epoch"]: r["data_share"] for r in rows}
    w = max([len(g) for g in groups] + [5])
    lines = [f"{names[0]} share of the gradient norm, epoch {first} -> epoch {last} "
             f"({names[0]} share of the examples {pct(share[first])} -> {pct(share[last])}):"]
    lines += [f"  {g:<{w}}  {pct(at[(g, first)]['noisy_share']):>8} -> {pct(at[(g, last)]['noisy_share']):>8}"
              for g in groups]
    return lines


def run_gradient_accounting(cfg: dict[str, Any]) -> Path:
    """Train `cfg`'s run with gradient accounting, then write the per-epoch table and figure; rank 0
    prints the noisy share of the gradient at the first and last epoch and the paths written."""
    out = out_dir(cfg)
    path = out / "accounting.npz"
    done = list_checkpoints(run_dir(cfg))
    if done and done[-1][0] >= cfg["train"]["epochs"] and not path.is_file():
        raise UserError(f"run {cfg['run']} is already trained without gradient accounting; pass run=<new name>")
    check_source(cfg, "gradient accounting records while it trains the run")
    loc = cfg["localization"]
    select = lambda record: resolve_selection(cfg, record)  # noqa: E731
    train(cfg, [GradientAccounting(path, loc["accounting_every"], loc["group_depth"], select=select)])
    if not setup().is_main:
        return path
    z = load_npz(path, f"train with gradient accounting first (gradient_accounting.py run={cfg['run']})")
    sel = select({"is_noisy": z["is_noisy"], "given_labels": z["given_label"]})
    rows = accounting_summary(z)
    paths = [path, *write_table(out / "accounting", relabel(rows, sel), markdown=False),
             write_accounting_md(rows, out / "accounting.md", names=sel.names, head=caption(sel)),
             plot_accounting(rows, out / "accounting.png", sel.names), write_selection(out, sel)]
    print_summary(f"gradient accounting of {cfg['run']}{selection_suffix(sel)}", headline(rows, sel.names), paths)
    return path

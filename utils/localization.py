"""Localizing memorization (Maini et al., ICML 2023): shared helpers (`open_run`, `split_accuracy`),
layer rewinding, layer retraining and the evaluation of example-tied dropout. Gradient accounting
lives in `utils.gradient_accounting`, neuron flipping in `utils.neuron_flipping`, the dropout module
in `utils.example_tied_dropout`, tables and figures in `utils.localization_report`.

Every method works on the layer groups of `utils.layer_groups` and writes to
`curv_scores/<run>/localization/`: tables (.csv + .md), arrays (.npz), figures (.png, 150 dpi).
Accuracies are measured on the un-augmented training set split into clean and noisy examples
(noisy ones against their *given* label, i.e. "still memorized") and on the test set.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Subset

from .checkpoint import list_checkpoints, load_checkpoint, run_dir, save_npz, score_dir
from .data import DataBundle, build_data, make_loader
from .distributed import Dist, setup
from .errors import UserError
from .evaluate import autocast, sharded_map
from .example_tied_dropout import MODES, etd_layers, etd_mode
from .layer_groups import LayerGroup, frozen_except, layer_groups, merge_groups
from .localization_report import write_table
from .models import forward, per_sample_loss
from .train import load_model, train


# ----------------------------------------------------------------------------- runs and accuracies
@dataclass
class Run:
    """A trained run opened for analysis: its checkpoints, final model, data and device."""

    cfg: dict[str, Any]  # the run's own (checkpoint) config, with this invocation's paths / data.root
    ckpts: list[tuple[int, Path]]
    final: dict[str, Any]
    model: nn.Module
    data: DataBundle
    dist: Dist

    @property
    def is_noisy(self) -> torch.Tensor:
        return self.data.record["is_noisy"]


def out_dir(cfg: dict[str, Any]) -> Path:
    """Where the localization outputs of a run go: curv_scores/<run>/localization/."""
    return score_dir(cfg) / "localization"


def open_run(cfg: dict[str, Any]) -> Run:
    """Load the newest checkpoint of `cfg`'s run and rebuild its data from the run's own config."""
    rdir = run_dir(cfg)
    ckpts = list_checkpoints(rdir)
    if not ckpts:
        raise UserError(f"no checkpoints in {rdir}; train the run first (e.g. python gradient_accounting.py run={cfg['run']})")
    final = load_checkpoint(ckpts[-1][1])
    rcfg = copy.deepcopy(final["config"])
    rcfg["paths"] = dict(cfg["paths"])
    for k in ("root", "num_workers"):
        rcfg["data"][k] = cfg["data"][k]
    rcfg["localization"] = dict(cfg["localization"])
    dist = setup()
    data = build_data(rcfg)
    if not torch.equal(final["record"]["given_labels"], data.record["given_labels"]):
        raise UserError(f"{ckpts[-1][1]} holds other labels than its config's data gives; check data.root / $DATA_ROOT")
    model = load_model(final, dist.device)
    return Run(rcfg, ckpts, final, model, data, dist)


def checkpoint_at(run: Run, epoch: int) -> dict[str, Any]:
    """The state dict saved at `epoch` (negative: counted from the last saved epoch)."""
    epochs = [e for e, _ in run.ckpts]
    if epoch < 0:
        epoch = epochs[-1] + epoch
    if epoch not in epochs:
        raise UserError(f"run {run.cfg['run']} has no checkpoint of epoch {epoch}; saved epochs: {epochs}")
    return load_checkpoint(dict(run.ckpts)[epoch])["model"]


@torch.no_grad()
def predict(model: nn.Module, dataset, dist: Dist, batch_size: int = 512, amp: bool = True,
            with_index: bool = False) -> torch.Tensor:
    """Predicted classes (N,) in index order; `with_index` passes the example indices to the model."""
    was = model.training
    model.eval()

    def fn(idx, x, y):
        with autocast(dist.device, amp):
            return {"pred": forward(model, x, idx if with_index else None).argmax(1)}

    out = sharded_map(dataset, fn, dist, batch_size, progress=False)["pred"]
    model.train(was)
    return out


def split_accuracy(model: nn.Module, run: Run, test: bool = True, with_index: bool = False) -> dict[str, float]:
    """clean_acc, noisy_acc (given labels: memorized), noisy_true_acc (true labels) on the un-augmented
    training set, and test_acc. Fractions in [0, 1]."""
    loc = run.cfg["localization"]
    bs, amp, k = loc["batch_size"], run.cfg["train"]["amp"], int(loc.get("eval_subset", 0))
    rec = run.data.record
    train_ds, test_ds = run.data.train_eval, run.data.test
    if k > 0:
        train_ds, test_ds = Subset(train_ds, range(min(k, len(train_ds)))), Subset(test_ds, range(min(k, len(test_ds))))
    n, nt = len(train_ds), len(test_ds)
    pred = predict(model, train_ds, run.dist, bs, amp, with_index)
    noisy = rec["is_noisy"][:n]
    given, true = pred == rec["given_labels"][:n], pred == rec["true_labels"][:n]
    nan = float("nan")
    out = {
        "clean_acc": float(given[~noisy].float().mean()) if (~noisy).any() else nan,
        "noisy_acc": float(given[noisy].float().mean()) if noisy.any() else nan,
        "noisy_true_acc": float(true[noisy].float().mean()) if noisy.any() else nan,
    }
    if test:
        tp = predict(model, test_ds, run.dist, bs, amp)
        out["test_acc"] = float((tp == torch.as_tensor(run.data.test.given_labels[:nt])).float().mean())
    return out


def groups_for(model: nn.Module, cfg: dict[str, Any]) -> list[LayerGroup]:
    return merge_groups(layer_groups(model), int(cfg["localization"]["group_depth"]))


# ----------------------------------------------------------------------------- layer rewinding
def load_group(model: nn.Module, group: LayerGroup, state: dict[str, torch.Tensor]) -> None:
    """Copy the group's parameters and buffers (e.g. BN running statistics) from a state dict."""
    own = model.state_dict()
    with torch.no_grad():
        for k in group.keys:
            own[k].copy_(state[k])


def layer_rewinding(run: Run, epochs: list[int]) -> list[dict[str, Any]]:
    """For each rewind epoch and layer group: the final model with that group's weights (and buffers)
    from the epoch's checkpoint; accuracies as in `split_accuracy`. First row: the final model."""
    model = run.model
    final = copy.deepcopy(model.state_dict())
    groups = groups_for(model, run.cfg)
    rows = [{"group": "(none)", "epoch": run.ckpts[-1][0], **split_accuracy(model, run)}]
    for e in epochs:
        state = checkpoint_at(run, e)
        for g in groups:
            model.load_state_dict(final)
            load_group(model, g, state)
            rows.append({"group": g.name, "epoch": e, **split_accuracy(model, run)})
    model.load_state_dict(final)
    return rows


def run_layer_rewinding(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    from .localization_report import plot_rewinding

    run = open_run(cfg)
    rows = layer_rewinding(run, list(cfg["localization"]["rewind_epochs"]))
    if run.dist.is_main:
        out = out_dir(cfg)
        write_table(out / "rewinding", rows)
        plot_rewinding(rows, out / "rewinding.png", "layer rewinding")
    return rows


# ----------------------------------------------------------------------------- layer retraining
def retrain_group(model: nn.Module, group: LayerGroup, run: Run, epochs: int, lr: float, seed: int = 0) -> None:
    """Train only `group` (everything else frozen, in eval mode) on the clean training examples."""
    t = run.cfg["train"]
    clean = torch.nonzero(~run.is_noisy).flatten().tolist()
    k = int(run.cfg["localization"].get("retrain_examples", 0))
    clean = clean[:k] if k > 0 else clean
    loader = make_loader(Subset(run.data.train, clean), t["batch_size"], shuffle=True, seed=seed)
    dev = run.dist.device
    with frozen_except(model, group) as params:
        if not params:
            return
        opt = torch.optim.SGD(params, lr=lr, momentum=t["momentum"])
        for ep in range(epochs):
            torch.manual_seed(seed * 7919 + ep)
            loader.batch_sampler.set_epoch(ep)
            for idx, x, y in loader:
                idx, x, y = idx.to(dev), x.to(dev), y.to(dev)
                with autocast(dev, t["amp"]):
                    loss = per_sample_loss(forward(model, x, idx), y).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        for p in params:
            p.grad = None


def layer_retraining(run: Run, from_epoch: int, epochs: int, lr: float, only: list[str] | None = None,
                     seed: int = 0) -> list[dict[str, Any]]:
    """For each group: reset it to `from_epoch`, retrain it alone on the clean examples, and measure
    whether the noisy examples are still predicted with their given labels. First row: the final model."""
    model = run.model
    final = copy.deepcopy(model.state_dict())
    start = checkpoint_at(run, from_epoch)
    groups = [g for g in groups_for(model, run.cfg) if g.params and (not only or g.name in only)]
    if only and len(groups) != len(only):
        names = [g.name for g in groups_for(model, run.cfg)]
        raise UserError(f"localization.retrain_groups {only} names unknown groups; groups: {', '.join(names)}")
    rows = [{"group": "(none)", "epoch": run.ckpts[-1][0], **split_accuracy(model, run)}]
    for g in groups:
        model.load_state_dict(final)
        load_group(model, g, start)
        reset = split_accuracy(model, run)
        retrain_group(model, g, run, epochs, lr, seed)
        acc = split_accuracy(model, run)
        rows.append({"group": g.name, "epoch": from_epoch, **acc, "reset_noisy_acc": reset["noisy_acc"],
                     "reset_clean_acc": reset["clean_acc"]})
    model.load_state_dict(final)
    return rows


def run_layer_retraining(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    from .localization_report import plot_retraining

    loc = cfg["localization"]
    run = open_run(cfg)
    rows = layer_retraining(run, loc["retrain_from"], loc["retrain_epochs"], loc["retrain_lr"],
                            list(loc["retrain_groups"]), loc["seed"])
    if run.dist.is_main:
        out = out_dir(cfg)
        write_table(out / "retraining", rows)
        plot_retraining(rows, out / "retraining.png")
    return rows


# ----------------------------------------------------------------------------- example-tied dropout
def etd_accuracy(run: Run) -> list[dict[str, Any]]:
    """Rows per evaluation mode: `example` (each training example with its own mask; no test column),
    then `test` and `drop` (see utils.example_tied_dropout)."""
    model = run.model
    if not etd_layers(model):
        raise UserError(f"run {run.cfg['run']} has no example-tied dropout; train it with model.etd_p_mem > 0 "
                        "(e.g. --config configs/localization/digits_etd.yaml)")
    rows = []
    for mode in ("example", *MODES):
        with etd_mode(model, mode):
            if mode == "example":
                acc = {**split_accuracy(model, run, test=False, with_index=True), "test_acc": float("nan")}
            else:
                acc = split_accuracy(model, run)
        rows.append({"mode": mode, **acc})
    return rows


def run_example_tied_dropout(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """Train the configured example-tied-dropout run (resumes / no-op when done), then evaluate it."""
    from .localization_report import plot_etd

    if float(cfg["model"]["etd_p_mem"]) <= 0:
        raise UserError("example_tied_dropout.py needs model.etd_p_mem > 0 (see configs/localization/*_etd.yaml)")
    train(cfg)
    run = open_run(cfg)
    rows = etd_accuracy(run)
    if run.dist.is_main:
        out = out_dir(cfg)
        write_table(out / "etd", rows)
        save_npz(out / "etd.npz", modes=np.array([r["mode"] for r in rows]),
                 **{k: np.array([r[k] for r in rows], np.float64) for k in ("clean_acc", "noisy_acc", "noisy_true_acc",
                                                                             "test_acc")})
        plot_etd(rows, out / "etd.png")
    return rows

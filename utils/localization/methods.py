"""Localizing memorization (Maini et al., ICML 2023): shared helpers (`split_accuracy`, `out_dir`,
`print_summary`), layer rewinding, layer retraining and the evaluation of example-tied dropout. Gradient
accounting lives in `utils.localization.accounting`, neuron flipping in `utils.localization.flipping`, the
dropout module in `utils.localization.etd`, figures in `utils.localization.report`.

Runs are opened with `utils.runs.open_run` (final model: `run.load_model(-1, run.dist.device)`, the weights
of epoch e: `run.checkpoint(e)["model"]`). Every method works on the layer groups of
`utils.localization.groups` and writes to `curv_scores/<run>/localization/`: tables (.csv + .md), arrays
(.npz), figures (.png, 150 dpi). Accuracies are measured on the un-augmented training set split into the
examples under study (`utils.localization.selection`: the injected noise by default, or a memorization report's
top rows / a CSV of indices) and the reference set (studied ones against their *given* label, i.e. "still
memorized"), and on the test set; keys `noisy_*` / `clean_*` = studied / reference.
Each `run_*` entry point prints a short summary (headline numbers and the paths written) on rank 0.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Subset

from ..data import make_loader
from ..errors import UserError
from ..evaluate import autocast, predict
from ..io import markdown_table, save_npz, write_table
from ..models import forward, per_sample_loss
from ..runs import Run, open_run, score_dir
from ..train import train
from .etd import MODES, etd_layers, etd_mode
from .groups import LayerGroup, frozen_except, layer_groups, merge_groups
from .selection import NAMES, Selection, caption, check_source, relabel, selection, selection_tag, write_selection


# ----------------------------------------------------------------------------- shared helpers
def out_dir(cfg: dict[str, Any]) -> Path:
    """Where the localization outputs of a run go: curv_scores/<run>/localization/, and for examples other than
    the injected noise a sub-folder named after them (localization/report_top100/, localization/csv_<stem>/)."""
    tag = selection_tag(cfg)
    return score_dir(cfg) / "localization" / tag if tag else score_dir(cfg) / "localization"


def write_rows(out: Path, stem: str, rows: list[dict[str, Any]], sel: Selection, markdown: bool = True) -> list[Path]:
    """A result table (.csv, .md) with the selection's column names and caption, and selection.json beside it."""
    rows = relabel(rows, sel)
    md = (caption(sel) + markdown_table(rows)) if markdown else False
    return [*write_table(out / stem, rows, markdown=md), write_selection(out, sel)]


def pct(v: float) -> str:
    """A fraction as a percentage for the summaries ('nan' stays 'nan')."""
    return "nan" if math.isnan(v) else f"{100 * v:.1f} %"


def print_summary(title: str, lines: Iterable[str], paths: Iterable[Path]) -> str:
    """Print (and return) a script's closing summary: a title, indented headline lines, the paths written."""
    text = "\n".join([title, *(f"  {ln}" for ln in lines), "written:", *(f"  {p}" for p in paths)])
    print(text, flush=True)
    return text


def figure_title(text: str, sel: Selection) -> str:
    """A figure title naming a non-default selection: 'layer rewinding: report top-100'."""
    return text if sel.default else f"{text}: {sel.label}"


def selection_suffix(sel: Selection) -> str:
    """What a summary's title adds under a non-default selection: ' (report top-100 vs the other examples)'."""
    return "" if sel.default else f" ({sel.label} vs the other examples)"


def final_model(run: Run) -> nn.Module:
    """The run's last saved model on its device, in eval mode."""
    return run.load_model(-1, run.dist.device)


def eval_positions(run: Run, sel: Selection) -> np.ndarray | range:
    """Training examples the accuracies are measured on: all, or with `localization.eval_subset=k` the first k
    (plus, for a selection other than the injected noise, every studied example beyond them)."""
    n, k = len(sel.mask), int(run.cfg["localization"].get("eval_subset", 0))
    if k <= 0 or k >= n:
        return range(n)
    return range(k) if sel.default else np.union1d(np.arange(k), np.flatnonzero(sel.mask))


def split_accuracy(model: nn.Module, run: Run, test: bool = True, with_index: bool = False) -> dict[str, float]:
    """clean_acc, noisy_acc (given labels: memorized), noisy_true_acc (true labels) on the un-augmented
    training set, and test_acc. Fractions in [0, 1]. "noisy" = the examples under study
    (`localization.examples`, default the injected noise), "clean" = the reference set."""
    loc = run.cfg["localization"]
    bs, k = loc["batch_size"], int(loc.get("eval_subset", 0))
    rec, sel = run.record, selection(run)
    pos = eval_positions(run, sel)
    train_ds, test_ds = run.data.train_eval, run.data.test
    if len(pos) < len(train_ds):
        train_ds = Subset(train_ds, pos if isinstance(pos, range) else pos.tolist())
    if k > 0:
        test_ds = Subset(test_ds, range(min(k, len(test_ds))))
    nt = len(test_ds)
    pred = predict(model, train_ds, run.dist, bs, with_index=with_index)
    at = torch.as_tensor(np.asarray(pos), dtype=torch.int64)
    noisy = torch.as_tensor(sel.mask)[at]
    given, true = pred == rec["given_labels"][at], pred == rec["true_labels"][at]
    nan = float("nan")
    out = {
        "clean_acc": float(given[~noisy].float().mean()) if (~noisy).any() else nan,
        "noisy_acc": float(given[noisy].float().mean()) if noisy.any() else nan,
        "noisy_true_acc": float(true[noisy].float().mean()) if noisy.any() else nan,
    }
    if test:
        tp = predict(model, test_ds, run.dist, bs)
        out["test_acc"] = float((tp == torch.as_tensor(run.data.test.given_labels[:nt])).float().mean())
    return out


def groups_for(model: nn.Module, cfg: dict[str, Any]) -> list[LayerGroup]:
    """The model's layer groups merged to `localization.group_depth`."""
    return merge_groups(layer_groups(model), int(cfg["localization"]["group_depth"]))


def _final_line(row: dict[str, Any], names: tuple[str, str] = NAMES) -> str:
    return (f"final model (epoch {row['epoch']}): {names[1]} {pct(row['clean_acc'])}, {names[0]} "
            f"{pct(row['noisy_acc'])} memorized, test {pct(row['test_acc'])}")


# ----------------------------------------------------------------------------- layer rewinding
def load_group(model: nn.Module, group: LayerGroup, state: dict[str, torch.Tensor]) -> None:
    """Copy the group's parameters and buffers (e.g. BN running statistics) from a state dict."""
    own = model.state_dict()
    with torch.no_grad():
        for k in group.keys:
            own[k].copy_(state[k])


def layer_rewinding(run: Run, epochs: list[int], model: nn.Module | None = None) -> list[dict[str, Any]]:
    """For each rewind epoch and layer group: the final model with that group's weights (and buffers)
    from the epoch's checkpoint; accuracies as in `split_accuracy`. First row: the final model.
    `model` (default: the run's final model) is restored afterwards."""
    model = final_model(run) if model is None else model
    final = copy.deepcopy(model.state_dict())
    groups = groups_for(model, run.cfg)
    rows = [{"group": "(none)", "epoch": run.epochs[-1], **split_accuracy(model, run)}]
    for e in epochs:
        state = run.checkpoint(e)["model"]
        for g in groups:
            model.load_state_dict(final)
            load_group(model, g, state)
            rows.append({"group": g.name, "epoch": e, **split_accuracy(model, run)})
    model.load_state_dict(final)
    return rows


def rewinding_summary(rows: list[dict[str, Any]], names: tuple[str, str] = NAMES) -> list[str]:
    """Headline lines: per group, the studied (noisy) examples still memorized after rewinding it to each epoch."""
    body = [r for r in rows if r["group"] != "(none)"]
    epochs = list(dict.fromkeys(r["epoch"] for r in body))
    groups = list(dict.fromkeys(r["group"] for r in body))
    at = {(r["group"], r["epoch"]): r for r in body}
    w = max([len(g) for g in groups] + [5])
    lines = [_final_line(rows[0], names),
             f"{names[0]} still memorized after rewinding one group to epoch {', '.join(map(str, epochs))}:"]
    lines += [f"  {g:<{w}}  " + "  ".join(f"{pct(at[(g, e)]['noisy_acc']):>8}" for e in epochs) for g in groups]
    return lines


def run_layer_rewinding(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """layer_rewinding.py: rewinding table + heatmap figure, summary printed on rank 0."""
    from .report import plot_rewinding

    run = open_run(cfg)
    sel = selection(run)
    rows = layer_rewinding(run, list(run.cfg["localization"]["rewind_epochs"]))
    if run.dist.is_main:
        out = out_dir(run.cfg)
        paths = [*write_rows(out, "rewinding", rows, sel),
                 plot_rewinding(rows, out / "rewinding.png", figure_title("layer rewinding", sel), sel.names)]
        print_summary(f"layer rewinding of {run.name}{selection_suffix(sel)}", rewinding_summary(rows, sel.names), paths)
    return rows


# ----------------------------------------------------------------------------- layer retraining
def retrain_group(model: nn.Module, group: LayerGroup, run: Run, epochs: int, lr: float, seed: int = 0) -> None:
    """Train only `group` (everything else frozen, in eval mode) on the reference (clean) training examples:
    never on an example under study."""
    t = run.cfg["train"]
    clean = np.flatnonzero(~selection(run).mask).tolist()
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
                     seed: int = 0, model: nn.Module | None = None) -> list[dict[str, Any]]:
    """For each group: reset it to `from_epoch`, retrain it alone on the clean examples, and measure
    whether the noisy examples are still predicted with their given labels. First row: the final model."""
    model = final_model(run) if model is None else model
    final = copy.deepcopy(model.state_dict())
    start = run.checkpoint(from_epoch)["model"]
    groups = [g for g in groups_for(model, run.cfg) if g.params and (not only or g.name in only)]
    if only and len(groups) != len(only):
        names = [g.name for g in groups_for(model, run.cfg)]
        raise UserError(f"localization.retrain_groups {only} names unknown groups; groups: {', '.join(names)}")
    rows = [{"group": "(none)", "epoch": run.epochs[-1], **split_accuracy(model, run)}]
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


def retraining_summary(rows: list[dict[str, Any]], names: tuple[str, str] = NAMES) -> list[str]:
    """Headline lines: per group, studied (noisy) still memorized and test accuracy after retraining it alone."""
    body = [r for r in rows if r["group"] != "(none)"]
    w = max([len(r["group"]) for r in body] + [5])
    lines = [_final_line(rows[0], names), f"after resetting one group to epoch {body[0]['epoch'] if body else '-'} "
             f"and retraining it on the {names[1]} examples:"]
    lines += [f"  {r['group']:<{w}}  {names[0]} memorized {pct(r['noisy_acc']):>8}   test {pct(r['test_acc']):>8}"
              for r in body]
    return lines


def run_layer_retraining(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """layer_retraining.py: retraining table + figure, summary printed on rank 0."""
    from .report import plot_retraining

    run = open_run(cfg)
    loc, sel = run.cfg["localization"], selection(run)
    rows = layer_retraining(run, loc["retrain_from"], loc["retrain_epochs"], loc["retrain_lr"],
                            list(loc["retrain_groups"]), loc["seed"])
    if run.dist.is_main:
        out = out_dir(run.cfg)
        paths = [*write_rows(out, "retraining", rows, sel), plot_retraining(rows, out / "retraining.png", sel.names)]
        print_summary(f"layer retraining of {run.name}{selection_suffix(sel)}", retraining_summary(rows, sel.names), paths)
    return rows


# ----------------------------------------------------------------------------- example-tied dropout
def etd_accuracy(run: Run, model: nn.Module | None = None) -> list[dict[str, Any]]:
    """Rows per evaluation mode: `example` (each training example with its own mask; no test column),
    then `test` and `drop` (see utils.localization.etd)."""
    model = final_model(run) if model is None else model
    if not etd_layers(model):
        raise UserError(f"run {run.name} has no example-tied dropout; train it with model.etd_p_mem > 0 "
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


def etd_summary(rows: list[dict[str, Any]], names: tuple[str, str] = NAMES) -> list[str]:
    """Headline lines: studied (noisy) examples memorized in each mode, and test accuracy."""
    lines = [f"{names[0]} examples memorized (given label) / test accuracy per mode:"]
    lines += [f"  {r['mode']:<8} {names[0]} {pct(r['noisy_acc']):>8}   test {pct(r['test_acc']):>8}" for r in rows]
    return lines


def run_example_tied_dropout(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """Train the configured example-tied-dropout run (resumes / no-op when done), then evaluate it."""
    from .report import plot_etd

    if float(cfg["model"]["etd_p_mem"]) <= 0:
        raise UserError("example_tied_dropout.py needs model.etd_p_mem > 0 (see configs/localization/*_etd.yaml)")
    check_source(cfg)
    train(cfg)
    run = open_run(cfg)
    sel = selection(run)
    rows = etd_accuracy(run)
    if run.dist.is_main:
        out = out_dir(run.cfg)
        cols = ("clean_acc", "noisy_acc", "noisy_true_acc", "test_acc")
        named = relabel([{k: 0 for k in cols}], sel)[0]  # the column names as written
        paths = [*write_rows(out, "etd", rows, sel),
                 save_npz(out / "etd.npz", modes=np.array([r["mode"] for r in rows]),
                          **{w: np.array([r[k] for r in rows], np.float64) for k, w in zip(cols, named)}),
                 plot_etd(rows, out / "etd.png", sel.names)]
        print_summary(f"example-tied dropout of {run.name}{selection_suffix(sel)}", etd_summary(rows, sel.names), paths)
    return rows

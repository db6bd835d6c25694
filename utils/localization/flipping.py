"""Neuron flipping (Maini et al., ICML 2023): how many units must be zeroed before a training example's
prediction leaves its given label; few for memorized (mislabeled) examples, many for clean ones. The examples
flipped are drawn from the examples under study (`localization.examples`, default the injected noise) and from
the reference set (the rest; the reference batch too)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Subset
from tqdm import tqdm

from ..evaluate import predict
from ..io import save_npz, write_table
from ..models import forward, per_sample_loss
from ..runs import Run, open_run
from .groups import UnitMasks, hidden_groups, layer_groups, per_unit_sum
from .methods import final_model, out_dir, pct, print_summary, selection_suffix, write_rows
from .selection import NAMES, relabel, selection


def unit_effects(model: nn.Module, masks: UnitMasks, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Predictions (B,) and the first-order estimate of each example's loss increase when a unit is
    zeroed, -sum(activation * d loss / d activation) over the unit's positions: (B, total units)."""
    with torch.enable_grad():
        logits = forward(model, x.detach().clone().requires_grad_(True))  # so every activation is in the graph
        loss = per_sample_loss(logits, y).sum()
        acts = [masks.acts[g.name] for g in masks.groups]
        grads = torch.autograd.grad(loss, acts)
    delta = torch.cat([-per_unit_sum((a * g).detach(), grp.unit_dim) for a, g, grp in zip(acts, grads, masks.groups)], 1)
    return logits.detach().argmax(1), delta


def flip_example(model: nn.Module, masks: UnitMasks, x: torch.Tensor, y: int, ref: tuple[torch.Tensor, torch.Tensor] | None,
                 max_units: int, refresh: int = 0) -> tuple[bool, list[int]]:
    """Greedily zero the unit whose estimated loss increase on the example (x (1, ...), given label y)
    most exceeds its mean estimated increase on the reference batch `ref = (xb, yb)`, until the
    prediction leaves y or `max_units` units are zeroed. Returns (flipped, flat unit ids in order)."""
    offsets = np.cumsum([0] + [g.n_units for g in masks.groups])
    yt = torch.tensor([y], device=x.device)
    zeroed: list[int] = []
    ref_delta = None
    for step in range(max_units + 1):
        pred, dt = unit_effects(model, masks, x, yt)
        if int(pred[0]) != y:
            return True, zeroed
        if step == max_units:
            break
        if ref is not None and (ref_delta is None or (refresh > 0 and step % refresh == 0)):
            ref_delta = unit_effects(model, masks, *ref)[1].mean(0)
        score = dt[0] - (ref_delta if ref_delta is not None else 0.0)
        if zeroed:
            score[torch.tensor(zeroed, device=score.device)] = float("-inf")
        u = int(score.argmax())
        gi = int(np.searchsorted(offsets, u, side="right") - 1)
        masks.zero(masks.groups[gi].name, u - int(offsets[gi]))
        zeroed.append(u)
    return False, zeroed


def neuron_flipping(run: Run, n_clean: int, n_noisy: int, max_units: int, batch: int, refresh: int,
                    test_subset: int = 0, seed: int = 0, model: nn.Module | None = None) -> dict[str, np.ndarray]:
    """Flip distinct sampled reference (`n_clean`) and studied (`n_noisy`) training examples that the final
    model predicts with their given label. Returns arrays: per example (index, is_noisy = injected noise,
    flipped, n_units (-1 if not flipped), test_acc; under a selection other than the injected noise also
    `studied`), per zeroed unit (unit_example = position in the example arrays, unit_group, unit_id), and per
    group (group_names, group_units); test_acc_base. `model`: default the run's final model."""
    model = (final_model(run) if model is None else model).eval()
    dev = run.dist.device
    for p in model.parameters():
        p.requires_grad_(False)
    groups = hidden_groups(model, layer_groups(model))
    rec, ds = run.record, run.data.train_eval
    bs = run.cfg["localization"]["batch_size"]
    pred = predict(model, ds, run.dist, bs)
    ok = (pred == rec["given_labels"]).numpy()
    sel = selection(run)
    noisy = sel.mask
    rng = np.random.default_rng(seed)
    pick = lambda m, k: rng.permutation(np.flatnonzero(m))[:k]  # noqa: E731
    targets = np.concatenate([pick(ok & ~noisy, n_clean), pick(ok & noisy, n_noisy)]).astype(np.int64)
    ref_idx = rng.permutation(np.setdiff1d(np.flatnonzero(~noisy), targets))[:batch]
    ref = None
    if len(ref_idx):
        xb = torch.stack([ds[int(i)][1] for i in ref_idx]).to(dev)
        ref = (xb, torch.as_tensor(rec["given_labels"][ref_idx]).to(dev))
    test = run.data.test
    if test_subset > 0:
        test = Subset(test, list(range(min(test_subset, len(test)))))
    ty = torch.as_tensor(run.data.test.given_labels[: len(test)])
    base = float((predict(model, test, run.dist, bs) == ty).float().mean())
    flipped, n_units, test_acc, u_ex, u_group, u_id = [], [], [], [], [], []
    offsets = np.cumsum([0] + [g.n_units for g in groups])
    bar = tqdm(targets, desc=f"flipping {run.name}", disable=not run.dist.is_main, leave=False)
    for pos, i in enumerate(bar):
        with UnitMasks(model, groups) as masks:
            _, x, y = ds[int(i)]
            ok_flip, zeroed = flip_example(model, masks, x[None].to(dev), int(y), ref, max_units, refresh)
            acc = float((predict(model, test, run.dist, bs) == ty).float().mean())
        flipped.append(ok_flip)
        n_units.append(len(zeroed) if ok_flip else -1)
        test_acc.append(acc)
        for u in zeroed:
            gi = int(np.searchsorted(offsets, u, side="right") - 1)
            u_ex.append(pos)
            u_group.append(gi)
            u_id.append(u - int(offsets[gi]))
    extra = {} if sel.default else {"studied": noisy[targets]}
    return {
        "index": targets, "is_noisy": np.asarray(rec["is_noisy"], bool)[targets], **extra,
        "flipped": np.array(flipped, bool),
        "n_units": np.array(n_units, np.int64), "test_acc": np.array(test_acc, np.float64),
        "test_acc_base": np.array(base), "unit_example": np.array(u_ex, np.int64), "unit_group": np.array(u_group, np.int64),
        "unit_id": np.array(u_id, np.int64), "group_names": np.array([g.name for g in groups]),
        "group_units": np.array([g.n_units for g in groups], np.int64), "max_units": np.array(max_units),
    }


def studied_of(z: dict[str, np.ndarray]) -> np.ndarray:
    """Which flipped examples were under study: `studied`, or the injected noise (the default selection)."""
    return z["studied"] if "studied" in z else z["is_noisy"]


def flipping_summary(z: dict[str, np.ndarray], names: tuple[str, str] = NAMES) -> list[dict[str, Any]]:
    """Per kind (clean / noisy = reference / studied, named by `names`): examples, fraction flipped, median
    units (unflipped count as max_units + 1), mean units over flipped, mean test-accuracy cost in points; on
    the noisy row the one-sided Mann-Whitney p-value that noisy examples need fewer units than clean ones."""
    rows = []
    cap = int(z["max_units"])
    studied = studied_of(z)
    for kind, sel in ((names[1], ~studied), (names[0], studied)):
        n = z["n_units"][sel]
        cens = np.where(n < 0, cap + 1, n)
        rows.append({"examples": kind, "count": int(sel.sum()),
                     "flipped": float(z["flipped"][sel].mean()) if sel.any() else float("nan"),
                     "median_units": float(np.median(cens)) if sel.any() else float("nan"),
                     "mean_units_flipped": float(n[n >= 0].mean()) if (n >= 0).any() else float("nan"),
                     "test_acc_cost_pts": float(100 * (z["test_acc_base"] - z["test_acc"][sel]).mean()) if sel.any()
                     else float("nan")})
    cens = np.where(z["n_units"] < 0, cap + 1, z["n_units"])
    a, b = cens[studied], cens[~studied]
    if len(a) and len(b):  # one-sided Mann-Whitney U: noisy examples need fewer units than clean ones
        from scipy.stats import mannwhitneyu

        rows[1]["p_noisy_fewer"] = float(mannwhitneyu(a, b, alternative="less").pvalue)
    return rows


def flipping_headline(rows: list[dict[str, Any]], names: tuple[str, str] = NAMES) -> list[str]:
    """Summary lines: median units to flip clean vs noisy examples, flipped fraction, test-accuracy cost."""
    lines = [f"{r['examples']:<6} {r['count']} examples: median {r['median_units']:g} units to flip, "
             f"{pct(r['flipped'])} flipped, test cost {r['test_acc_cost_pts']:.2f} points" for r in rows]
    if "p_noisy_fewer" in rows[-1]:
        lines.append(f"one-sided Mann-Whitney p ({names[0]} need fewer units) = {rows[-1]['p_noisy_fewer']:.3g}")
    return lines


def run_neuron_flipping(cfg: dict[str, Any]) -> dict[str, np.ndarray]:
    """neuron_flipping.py: per-example arrays and table, summary table, two figures; summary on rank 0."""
    from .report import plot_flipping

    run = open_run(cfg)
    loc, sel = run.cfg["localization"], selection(run)
    z = neuron_flipping(run, loc["flip_clean"], loc["flip_noisy"], loc["flip_max_units"], loc["flip_batch"],
                        loc["flip_refresh"], loc["flip_test_subset"], loc["seed"])
    if run.dist.is_main:
        out = out_dir(run.cfg)
        per = [{"index": int(i), "noisy": bool(nz), "flipped": bool(f), "n_units": int(n), "test_acc": float(a)}
               for i, nz, f, n, a in zip(z["index"], studied_of(z), z["flipped"], z["n_units"], z["test_acc"])]
        summary = flipping_summary(z, sel.names)
        paths = [save_npz(out / "flipping.npz", **z), *write_table(out / "flipping", relabel(per, sel), markdown=False),
                 *write_rows(out, "flipping_summary", summary, sel),
                 *plot_flipping(z, out / "flipping_hist.png", out / "flipping_layers.png", sel.names)]
        print_summary(f"neuron flipping of {run.name}{selection_suffix(sel)}",
                      flipping_headline(summary, sel.names), paths)
    return z

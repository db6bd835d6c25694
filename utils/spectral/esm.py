"""The early-spectral-memorization grid (spectra are captured by `utils.spectral.capture`).

* `run_grid(cfg)`: trains every (condition, seed) of `cfg.esm` and captures the spectra into the grid
  directory <paths.scores>/esm/<grid>/ (`grid_name`: data set + model, never shared between data sets);
  `main_grid` is esm_experiment.py, `main_analyse` (summary.csv/.md, esm_values.csv, figures) analyse_esm.py.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import identity_hash
from ..distributed import barrier, broadcast_object, setup
from ..errors import UserError
from ..io import markdown_table, write_table
from ..runs import run_dir
from ..train import train
from .capture import SpectrumCallback, dataset_name
from .plots import all_figures, spectrum_grid
from .rmt import esm_from_spectrum, summarise_esm

HEADLINE = ["grid", "step", "n_clean", "n_random", "auc_esm", "threshold", "threshold_accuracy"]
# what each esm_values.csv row carries from its capture besides the ESM fields (NaN in files that lack it)
CAPTURE_COLUMNS = ["num_classes", "loss", "accuracy", "running_loss", "gn_weight_mean", "gn_n_eff", "n_samples",
                   "n_params", "seconds", "run_seconds"]


# ----------------------------------------------------------------------------- the grid
def grid_name(cfg: dict[str, Any]) -> str:
    """<data set>[_sub<n>]_<model>[_w<width>][_<esm.name>]: always derived from the data set and the model,
    so grids of two data sets never share a directory; `esm.name` only adds a tag."""
    d, m = cfg["data"], cfg["model"]
    width = m["width"] and not m["name"].startswith("timm:")  # timm models take no model.width (model.kwargs)
    parts = [dataset_name(cfg), f"sub{d['subset']}" if d["subset"] else "", m["name"],
             f"w{m['width']}" if width else "", str(cfg["esm"]["name"] or "")]
    return "_".join(re.sub(r"[^A-Za-z0-9._+-]+", "-", p) for p in parts if p)


def esm_root(cfg: dict[str, Any]) -> Path:
    """<paths.scores>/esm/: every grid's directory, and analyse_esm.py's outputs."""
    return Path(cfg["paths"]["scores"]) / "esm"


def grid_dir(cfg: dict[str, Any]) -> Path:
    """<paths.scores>/esm/<grid_name>/: the spectra of one grid, <condition>_s<seed>/step_XXXXX.npz."""
    return esm_root(cfg) / grid_name(cfg)


def _label(condition: str) -> str:
    return "clean" if condition == "none" else condition


def spectra_dir(cfg: dict[str, Any], condition: str, seed: int) -> Path:
    return grid_dir(cfg) / f"{_label(condition)}_s{seed}"


def run_config(cfg: dict[str, Any], condition: str, seed: int) -> dict[str, Any]:
    """The training config of one grid point: noise.kind=condition (rate 1 for random), both seeds=seed,
    train.max_steps = the last capture step, a fresh run <grid>_<condition>_s<seed> under <pretrained>/esm/."""
    c = copy.deepcopy(cfg)
    c["noise"]["kind"] = condition
    c["noise"]["rate"] = 1.0 if condition == "random" else (0.0 if condition == "none" else c["noise"]["rate"])
    c["noise"]["seed"] = seed
    c["train"]["seed"] = seed
    c["train"]["max_steps"] = max(int(s) for s in cfg["esm"]["steps"])
    c["run"] = f"{grid_name(cfg)}_{_label(condition)}_s{seed}"
    c["resume"] = False  # spectra are taken at steps inside the first epochs: always from scratch
    c["paths"] = dict(c["paths"], pretrained=str(Path(cfg["paths"]["pretrained"]) / "esm"))
    return c


def point_identity(c: dict[str, Any]) -> str:
    """What a grid point's spectra depend on: the run's identity and the spectrum keys (tw_quantile aside)."""
    spec = {k: v for k, v in c["spectrum"].items() if k != "tw_quantile"}
    return hashlib.sha256(json.dumps([identity_hash(c), spec], sort_keys=True).encode()).hexdigest()[:16]


def _decide_point(c: dict[str, Any], out: Path, steps: list[int]) -> tuple[str, str]:
    """Rank 0: ("reuse", "") when every step file is there and of this config, ("train", "") when one is
    missing or unreadable, ("error", message) when they hold another config's spectra."""
    want = [out / f"step_{s:05d}.npz" for s in steps]
    if not all(p.is_file() for p in want):
        return "train", ""
    ident = point_identity(c)
    for p in want:
        try:
            with np.load(p, allow_pickle=False) as z:
                got = str(z["grid_identity"]) if "grid_identity" in z.files else "(none recorded)"
        except (OSError, ValueError, EOFError, zipfile.BadZipFile):
            return "train", ""
        if got != ident:
            return "error", (f"{p} holds a spectrum of another config (identity {got}, this one {ident}); "
                             f"pass esm.name=<tag> for a separate grid, or delete {out}")
    return "reuse", ""


@dataclass
class GridPoint:
    """One (condition, seed) of a grid: its run name, spectra directory, step files, weights directory and
    whether this call trained it ("trained") or found it complete ("reused")."""

    run: str
    out: Path
    files: list[Path]
    weights: Path
    status: str


def run_grid(cfg: dict[str, Any]) -> list[GridPoint]:
    """Train every (condition, seed) of the grid and capture its spectra; complete points are reused.

    Rank 0 decides for each point (files complete and of this config, or not) and broadcasts it; when a
    point is retrained it deletes the old run directory and step files, and all ranks wait at a barrier."""
    e = cfg["esm"]
    if not e["steps"] or not e["seeds"] or not e["conditions"]:
        raise UserError("esm.steps, esm.seeds and esm.conditions must be non-empty lists")
    steps = sorted({int(s) for s in e["steps"]})
    if steps[0] < 1:
        raise UserError(f"esm.steps must be optimizer steps >= 1, got {e['steps']}")
    dist = setup(cfg)
    points = []
    for condition in e["conditions"]:
        for seed in (int(s) for s in e["seeds"]):
            c = run_config(cfg, condition, seed)
            out, rdir = spectra_dir(cfg, condition, seed), run_dir(c)
            kind, msg = broadcast_object(_decide_point(c, out, steps) if dist.is_main else None)
            if kind == "error":
                raise UserError(msg)
            if kind == "train" and dist.is_main:
                shutil.rmtree(rdir, ignore_errors=True)
                for p in out.glob("step_*.npz"):
                    p.unlink()
            barrier()
            if kind == "train":
                train(c, [SpectrumCallback(c, out, steps, grid=grid_name(cfg), grid_identity=point_identity(c))])
            files = [out / f"step_{s:05d}.npz" for s in steps]
            points.append(GridPoint(c["run"], out, files, rdir, "trained" if kind == "train" else "reused"))
    return points


# ----------------------------------------------------------------------------- analysis
def _read_spectrum(p: Path) -> dict[str, Any]:
    with np.load(p, allow_pickle=False) as z:
        row = {k: (z[k].item() if z[k].ndim == 0 else z[k]) for k in z.files}
    row["path"] = str(p)
    return row


def load_spectra(root: str | Path) -> list[dict[str, Any]]:
    """Every step_XXXXX.npz under `root` (an esm root, or one grid directory) as a dict (numpy scalars
    unwrapped); [] when there is none or `root` does not exist."""
    root = Path(root)
    return [_read_spectrum(p) for p in sorted(root.rglob("step_*.npz"))] if root.is_dir() else []


def esm_values(spectra: list[dict[str, Any]], tw_quantile: float = 0.99) -> list[dict[str, Any]]:
    """One row per captured spectrum: grid, run, dataset, model, condition, seed, step, `ESMResult.as_row()` (ESM,
    the rule's participation / threshold / ratio / is_clean, MP fit) and the capture's CAPTURE_COLUMNS (training
    loss and accuracy on the Hessian set, running training loss, Gauss-Newton weights, cost)."""
    rows = []
    for s in spectra:
        res = esm_from_spectrum(s, tw_quantile=tw_quantile)
        rows.append({"grid": spectrum_grid(s), "run": s["run"], "dataset": s["dataset"], "model": s["model"],
                     "condition": "random" if s["noise_kind"] == "random" else "clean",
                     "seed": int(s["seed"]), "step": int(s["step"]), **res.as_row(),
                     **{k: float(s[k]) if k in s else float("nan") for k in CAPTURE_COLUMNS}})
    return rows


def analyse(cfg: dict[str, Any]) -> tuple[list[dict[str, Any]], list[Path]]:
    """ESM metric of every spectrum under <paths.scores>/esm/, AUC per (grid, step), the accuracy of the one
    rule (`rmt.classify`) -> summary.csv/.md, esm_values.csv and figures there; returns (summary rows, paths)."""
    root = esm_root(cfg)
    spectra = load_spectra(root)
    if not spectra:
        raise UserError(f"no spectra under {root}/<grid>/<run>/step_*.npz; run esm_experiment.py first")
    q = cfg["spectrum"]["tw_quantile"]
    values = esm_values(spectra, q)
    summary = summarise_esm(values)
    paths = write_table(root / "esm_values", values, markdown=False)
    paths += write_table(root / "summary", summary)
    paths += all_figures(spectra, values, root, tw_quantile=q)
    return summary, paths


def headline(summary: list[dict[str, Any]]) -> str:
    """The per-(grid, step) AUC of ESM and the accuracy of the one threshold as a markdown table."""
    return markdown_table(summary, HEADLINE)


def main_grid(cfg: dict[str, Any]) -> list[GridPoint]:
    """esm_experiment.py: run the grid, then print its headline numbers and the paths written (rank 0)."""
    points = run_grid(cfg)
    if setup().is_main:
        _print_grid(cfg, points)
    barrier()  # every rank leaves (and tears the process group down) together
    return points


def _print_grid(cfg: dict[str, Any], points: list[GridPoint]) -> None:
    """The grid's headline numbers (its own step files only) and the spectra / weights directories."""
    spectra = [_read_spectrum(f) for p in points for f in p.files]
    summary = summarise_esm(esm_values(spectra, cfg["spectrum"]["tw_quantile"]))
    print(f"grid {grid_name(cfg)}: {len(points)} runs ({sum(p.status == 'trained' for p in points)} trained, "
          f"{sum(p.status == 'reused' for p in points)} reused), {len(spectra)} spectra\n{headline(summary)}", end="")
    print("written:" if any(p.status == "trained" for p in points) else "nothing new written; spectra in:")
    for p in points:
        names = " ".join(f.name for f in p.files)
        print(f"  {p.out}/ {names}" + (f" (weights: {p.weights}/)" if p.status == "trained" else " (reused)"))


def main_analyse(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """analyse_esm.py: analyse every grid under <paths.scores>/esm/, print the headline numbers and paths."""
    summary, paths = analyse(cfg)
    print(headline(summary), end="")
    print("written:\n" + "\n".join(f"  {p}" for p in paths))
    return summary

"""`holdout.py run=<run>`: models trained on part of a run's data predict the rest (out-of-sample probabilities).

Which samples each model trains on: `utils.folds.membership` (`holdout.scheme`: K folds, or M random subsets as
Feldman & Zhang). What the models are (`holdout.method`):
- `recipe` (any data set): model m is an ordinary run `<run>_ho<tag>_<m>of<M>` under paths.pretrained: the run's
  recorded config (data, noise, model, optimizer, schedule, augmentation) with `data.folds=M`,
  `data.holdout_fold=m` (`utils.folds`), the holdout recipe's overrides (`holdout.train.*`, `holdout.model.*`) and,
  with `holdout.init=<run>`, that run's weights to start from. It trains through the one training loop, so a killed
  stage resumes every model where it stopped and finished models are reused (bit-identical: training is
  deterministic). Its final checkpoint predicts the samples it held out (un-augmented, fp32).
- `mlp`: `in -> w -> w -> K` MLPs on flattened pixels, trained at once as one batched ensemble (seconds on digits).

Writes `curv_scores/<run>/holdout/` (`utils.holdout.files`). Cost of `recipe`, relative to the run's own training:
sum over models of (share of the data it trains on x its epochs / the run's epochs); printed at the end.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from typing import Any

import numpy as np
import torch
from torch.utils.data import Subset

from ..config import _set, identity_hash
from ..errors import UserError
from ..evaluate import evaluate
from ..folds import membership
from ..io import save_npz, write_table
from ..runs import Run, describe_diff, load_checkpoint, open_run, read_run_record, run_dir
from ..train import log_path, train
from .files import FILE, holdout_dir

KEEP_ONLY_LAST = 10**9  # train.checkpoint_every of a model run: epoch 0 and the last epoch are saved regardless
METHODS = ("recipe", "mlp")


def settings_of(run: Run) -> dict[str, Any]:
    """The holdout section as it decides the models (JSON-able), validated."""
    h = copy.deepcopy(run.cfg["holdout"])
    if h["method"] not in METHODS:
        raise UserError(f"holdout.method must be one of {', '.join(METHODS)}, got {h['method']!r}")
    n = len(run.record["given_labels"])
    if not 2 <= h["models"] <= (n if h["scheme"] == "folds" else 10_000):
        raise UserError(f"holdout.models={h['models']} must be at least 2 (and at most the {n} samples for folds)")
    if h["method"] == "mlp" and (h["init"] or h["model"]):
        raise UserError("holdout.init and holdout.model.* need holdout.method=recipe (the mlp method is a fixed MLP)")
    return h


def model_config(cfg: dict[str, Any], h: dict[str, Any], m: int) -> dict[str, Any]:
    """The config of holdout model m: the run's (merged) config with the fold keys, the holdout recipe's overrides,
    resume on, no online scoring, no per-sample statistics, only the first and last checkpoints."""
    out = copy.deepcopy({k: v for k, v in cfg.items() if not k.startswith("_")})
    for section in ("train", "model"):
        for key, value in h[section].items():
            _set(out, f"{section}.{key}", value, f"holdout.{section}")
    out.pop("_given", None)
    out["run"], out["resume"] = model_run_name(cfg["run"], h, m), True
    out["data"].update(folds=h["models"], holdout_fold=m, fold_seed=h["seed"], fold_scheme=h["scheme"],
                       fold_fraction=h["fraction"])
    out["train"].update(stats=False, checkpoint_every=KEEP_ONLY_LAST, init=h["init"] or out["train"]["init"],
                        init_identity="" if h["init"] else out["train"]["init_identity"])
    out["score"]["online"] = False
    return out


def model_run_name(run: str, h: dict[str, Any], m: int) -> str:
    """`<run>_ho<tag>_<m>of<M>`; tag = 6 hex digits of the settings that change the models."""
    keys = {k: h[k] for k in ("scheme", "models", "fraction", "seed", "init", "train", "model")}  # not name / method
    tag = hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:6]
    return f"{run}_ho{tag}_{m}of{h['models']}"


def _check_model_run(mcfg: dict[str, Any], parent: str) -> None:
    """A model run already under paths.pretrained must be one of this version of the parent run."""
    rdir = run_dir(mcfg)
    if not (rdir / "run.json").is_file():
        return
    recorded, _, ident = read_run_record(rdir)
    probe = copy.deepcopy(mcfg)
    probe["train"]["init_identity"] = recorded["train"].get("init_identity", "")
    if ident != identity_hash(probe):
        raise UserError(f"holdout model run {mcfg['run']} in {rdir.parent}/ was trained for another version of run "
                        f"{parent} ({describe_diff(recorded, probe)}); delete {rdir} and run holdout.py again")


def _epoch_seconds(mcfg: dict[str, Any]) -> float:
    """Training wall time of a model run, summed over its log's epochs (a resumed run counts every epoch once)."""
    path = log_path(mcfg)
    if not path.is_file():
        return float("nan")
    by_epoch = {}
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        by_epoch[rec["epoch"]] = rec.get("time", 0.0)
    return float(sum(by_epoch.values()))


def _recipe(run: Run, h: dict[str, Any], mask: np.ndarray, progress: bool) -> dict[str, Any]:
    """Train (or reuse) every model run and predict its held-out samples."""
    given = run.record["given_labels"].numpy()
    eval_set = run.data.train_eval
    rows_p, rows_s, rows_m, acc_test, secs, names, epochs = [], [], [], [], [], [], []
    for m in range(h["models"]):
        mcfg = model_config(run.cfg, h, m)
        _check_model_run(mcfg, run.name)
        t0 = time.time()
        train(mcfg)
        mrun = open_run(mcfg)
        kept, held = np.flatnonzero(mask[m]), np.flatnonzero(~mask[m])
        parent = mrun.record.get("parent_index")
        if parent is None or not np.array_equal(parent.numpy(), kept) or \
                not np.array_equal(mrun.record["given_labels"].numpy(), given[kept]):
            raise UserError(f"holdout model run {mrun.name} did not train on its share of run {run.name}'s given "
                            f"labels; delete {mrun.dir} and run holdout.py again")
        model = mrun.load_model(-1, run.dist.device)
        out = evaluate(model, Subset(eval_set, held.tolist()), run.dist, run.cfg["train"]["eval_batch_size"],
                       keep_logits=True)
        rows_p.append(torch.softmax(out["logits"].double(), -1).float().numpy())
        rows_s.append(held)
        rows_m.append(np.full(len(held), m, np.int32))
        metrics = load_checkpoint(mrun.ckpts[-1][1]).get("metrics", {})
        acc_test.append(float(metrics.get("test_acc", np.nan)))
        spent = _epoch_seconds(mcfg)
        secs.append(spent if np.isfinite(spent) else time.time() - t0)
        names.append(mrun.name)
        epochs.append(int(mrun.epochs[-1]))
    t, first = run.cfg["train"], model_config(run.cfg, h, 0)
    recipe = {**{k: first["train"][k] for k in ("epochs", "lr", "batch_size", "optimizer")},
              "model": first["model"]["name"], "width": first["model"]["width"]}
    cost = float(sum(mask[m].mean() * epochs[m] for m in range(h["models"])) / max(t["epochs"], 1))
    init = f", fine-tuned from run {h['init']}'s weights" if h["init"] else ""
    source = (f"out-of-sample probabilities of {h['models']} models ({_scheme_text(h)}; each {recipe['model']} "
              f"trained {epochs[0]} epochs with the run's recipe{' and holdout.* overrides' if h['train'] or h['model'] else ''}"
              f"{init}, as runs {names[0].rsplit('_', 1)[0]}_<m>of{h['models']})")
    return {"probs": np.concatenate(rows_p), "sample": np.concatenate(rows_s), "model": np.concatenate(rows_m),
            "test_accuracy": np.array(acc_test), "seconds": np.array(secs), "model_runs": np.array(names),
            "source": source, "recipe": recipe, "cost": cost}


def _scheme_text(h: dict[str, Any]) -> str:
    if h["scheme"] == "folds":
        return f"{h['models']} stratified folds, seed {h['seed']}: each sample held out by one model"
    return (f"random class-stratified {h['fraction']:.0%} subsets, seed {h['seed']}: each sample held out by about "
            f"{(1 - h['fraction']) * h['models']:.1f} models")


def _mlp(run: Run, h: dict[str, Any], mask: np.ndarray, progress: bool) -> dict[str, Any]:
    """The batched-MLP ensemble (utils.curvature.ensemble) on flattened pixels, trained on each model's share."""
    from ..curvature.ensemble import MLPSpec, predict, train_ensemble, train_matrix

    t0 = time.time()
    x, y = train_matrix(run.data.train_eval)
    t, m = {**run.cfg["train"], **h["train"]}, run.cfg["model"]
    width = (m["width"] or 128) if m["name"] == "digits_mlp" else 256
    spec = MLPSpec(width, t["epochs"], t["lr"], t["momentum"], t["batch_size"], t["weight_decay"])
    x = x.flatten(1)
    params = train_ensemble(x, y, torch.from_numpy(mask), spec, int(run.record["num_classes"]), seed=h["seed"],
                            progress=progress, desc=f"holdout {h['models']} MLPs")
    probs = torch.softmax(predict(params, x), -1).numpy()  # (M, N, K)
    xt, yt = train_matrix(run.data.test)
    test_acc = (predict(params, xt.flatten(1)).argmax(-1) == yt).float().mean(1).numpy()
    rows = [(m_, np.flatnonzero(~mask[m_])) for m_ in range(len(mask))]
    source = (f"out-of-sample probabilities of {len(mask)} MLPs {x.shape[1]}-{width}-{width}-{probs.shape[-1]} on "
              f"flattened pixels ({_scheme_text(h)}; {t['epochs']} epochs, lr {t['lr']}, batch {t['batch_size']})")
    secs = (time.time() - t0) / len(mask)
    return {"probs": np.concatenate([probs[m_, held] for m_, held in rows]).astype(np.float32),
            "sample": np.concatenate([held for _, held in rows]),
            "model": np.concatenate([np.full(len(held), m_, np.int32) for m_, held in rows]),
            "test_accuracy": test_acc.astype(np.float64), "seconds": np.full(len(mask), secs),
            "model_runs": np.array([""] * len(mask)), "source": source,
            "recipe": {"epochs": t["epochs"], "lr": t["lr"], "width": width, "model": "mlp"}, "cost": float("nan")}


def run_holdout(cfg: dict[str, Any], progress: bool = True) -> dict[str, Any]:
    """Train (or reuse) the holdout models of a run and write curv_scores/<run>/holdout/; returns what it wrote."""
    t0 = time.time()
    run = open_run(cfg)
    if run.cfg["data"]["folds"]:
        raise UserError(f"run {run.name} is itself a holdout model run; run holdout.py on the run it was made for")
    h = settings_of(run)
    given = run.record["given_labels"].numpy()
    true = run.record["true_labels"].numpy()
    mask = membership(given, h["scheme"], h["models"], h["fraction"], h["seed"])
    got = (_recipe if h["method"] == "recipe" else _mlp)(run, h, mask, progress)
    pred = got["probs"].argmax(1)
    acc = np.array([float((pred[got["model"] == m] == given[got["sample"][got["model"] == m]]).mean())
                    for m in range(len(mask))])
    acc_true = np.array([float((pred[got["model"] == m] == true[got["sample"][got["model"] == m]]).mean())
                         for m in range(len(mask))])
    settings = {**h, "recipe": got["recipe"]}
    ident = hashlib.sha256(json.dumps([settings, run.identity], sort_keys=True).encode()).hexdigest()[:16]
    out = holdout_dir(run.scores, h["name"])
    paths = []
    if run.dist.is_main:
        paths.append(save_npz(out / FILE, probs=got["probs"], sample=got["sample"], model=got["model"],
                              train_mask=mask, given_label=given, accuracy=acc, accuracy_true=acc_true,
                              test_accuracy=got["test_accuracy"], seconds=got["seconds"], model_runs=got["model_runs"],
                              identity=np.array(ident), run_identity=np.array(run.identity),
                              settings=np.array(json.dumps(settings, sort_keys=True)), source=np.array(got["source"])))
        rows = [{"model": m, "run": str(got["model_runs"][m]), "trained_on": int(mask[m].sum()),
                 "held_out": int((~mask[m]).sum()), "heldout_acc_given": acc[m], "heldout_acc_true": acc_true[m],
                 "test_acc": float(got["test_accuracy"][m]), "seconds": float(got["seconds"][m])}
                for m in range(len(mask))]
        paths += write_table(out / "models", rows)
    return {"paths": paths, "accuracy": acc, "accuracy_true": acc_true, "test_accuracy": got["test_accuracy"],
            "source": got["source"], "cost": got["cost"], "seconds": time.time() - t0,
            "train_seconds": float(np.nansum(got["seconds"])), "n_out": (~mask).sum(0), "run": run}


def main(cfg: dict[str, Any]) -> None:
    """Entry point of holdout.py: train / reuse the models, write the files, print a summary and the paths."""
    res = run_holdout(cfg)
    if not res["run"].dist.is_main:
        return
    n_out = res["n_out"]
    print(res["source"])
    print(f"held-out accuracy (given labels) per model: {', '.join(f'{a:.4f}' for a in res['accuracy'])}; "
          f"(data set's labels): {', '.join(f'{a:.4f}' for a in res['accuracy_true'])}; test: "
          f"{', '.join(f'{a:.4f}' for a in res['test_accuracy'])}")
    cost = f"; cost {res['cost']:.2f}x the run's training epochs x data" if np.isfinite(res["cost"]) else ""
    print(f"each sample held out by {n_out.min()}-{n_out.max()} models (mean {n_out.mean():.2f}); models trained in "
          f"{res['train_seconds']:.0f} s{cost}; stage {res['seconds']:.0f} s")
    print("written: " + ", ".join(str(p) for p in res["paths"]))

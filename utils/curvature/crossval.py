"""Out-of-sample probabilities from K fold runs of a run's own recipe (`analysis.cl_probs=cv`), for every data set.

Fold k is an ordinary run `<run>_cv<k>of<K>` (`_s<seed>` appended for analysis.seed != 0) under `paths.pretrained`:
the run's recorded config (data, noise, model, optimizer, schedule, augmentation) with `data.folds=K`,
`data.holdout_fold=k`, `data.fold_seed=analysis.seed`, so its training set is every fold but k (`utils.folds`:
stratified by the given labels, seeded) and its record keeps `parent_index`. It trains through the one training loop
(`utils.train.train`): a killed fold resumes, a finished one is reused. Its final checkpoint then predicts fold k (the
un-augmented images, fp32), so every sample's probabilities come from the one model that never saw it.

Cost: K trainings of the run's recipe on (K-1)/K of its data each, i.e. about K-1 times the run's own training
(the default 5 folds: ~4x), plus one forward pass over the training set. Fold runs keep epoch 0, the last epoch
and resume.pt (train.checkpoint_every raised) and no per-sample training statistics (train.stats=false).
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch.utils.data import Subset

from ..config import identity_hash
from ..errors import UserError
from ..evaluate import evaluate
from ..folds import fold_assignment
from ..runs import Run, describe_diff, open_run, read_run_record, run_dir
from ..train import train

KEEP_ONLY_LAST = 10**9  # train.checkpoint_every of a fold run: epoch 0 and the last epoch are saved regardless


def fold_run_name(run: str, k: int | str, folds: int, seed: int = 0) -> str:
    """`<run>_cv<k>of<folds>`, `_s<seed>` appended for a seed other than 0."""
    return f"{run}_cv{k}of{folds}" + (f"_s{seed}" if seed else "")


def fold_config(cfg: dict[str, Any], k: int, folds: int, seed: int) -> dict[str, Any]:
    """The config of fold run k: the run's (merged) config with the fold keys, resume on, no online scoring, no
    per-sample statistics, only the first and last checkpoints."""
    out = copy.deepcopy({key: v for key, v in cfg.items() if not key.startswith("_")})
    out["run"], out["resume"] = fold_run_name(cfg["run"], k, folds, seed), True
    out["data"].update(folds=folds, holdout_fold=k, fold_seed=seed)
    out["train"].update(stats=False, checkpoint_every=KEEP_ONLY_LAST)
    out["score"]["online"] = False
    return out


def source_sentence(run: Run, folds: int, seed: int) -> str:
    """What the probabilities are, for the table notes and the cache."""
    return (f"out-of-sample {folds}-fold cross-validated probabilities of the run's own recipe (folds stratified by the "
            f"given labels, seed {seed}; fold k: {run.cfg['model']['name']} trained with the run's optimizer, schedule "
            f"and augmentation on the other folds as run {fold_run_name(run.name, '<k>', folds, seed)}, "
            "its final checkpoint predicting fold k)")


def _check_fold_run(fcfg: dict[str, Any], parent: str) -> None:
    """A fold run already under paths.pretrained must be one of this version of the parent run."""
    rdir = run_dir(fcfg)
    if not (rdir / "run.json").is_file():
        return
    recorded, _, ident = read_run_record(rdir)
    if ident != identity_hash(fcfg):
        raise UserError(f"fold run {fcfg['run']} in {rdir.parent}/ was trained for another version of run {parent} "
                        f"({describe_diff(recorded, fcfg)}); delete {rdir.parent}/{parent}_cv* and analyse again")


def recipe_cv_probabilities(run: Run, folds: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities (N, C) float64, fold (N,) int64) of the run's training set: sample i's row is the softmax of
    fold run fold[i]'s final model, which trained on every fold but fold[i]. Trains the fold runs that are not done."""
    if run.cfg["data"]["folds"]:
        raise UserError(f"run {run.name} is itself a cross-validation fold run; analyse the run it was made for")
    given = run.record["given_labels"].numpy()
    n = len(given)
    if not 2 <= folds <= n:
        raise UserError(f"analysis.cv_folds={folds} must be between 2 and the {n} training samples")
    fold = fold_assignment(given, folds, seed)
    probs = np.zeros((n, int(run.record["num_classes"])))
    eval_set = run.data.train_eval
    for k in range(folds):
        fcfg = fold_config(run.cfg, k, folds, seed)
        _check_fold_run(fcfg, run.name)
        train(fcfg)
        frun = open_run(fcfg)
        kept, held = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
        parent = frun.record.get("parent_index")
        if parent is None or not np.array_equal(parent.numpy(), kept) or \
                not np.array_equal(frun.record["given_labels"].numpy(), given[kept]):
            raise UserError(f"fold run {frun.name} did not train on the other folds of run {run.name}'s given labels; "
                            f"delete {frun.dir} and analyse again")
        model = frun.load_model(-1, run.dist.device)
        out = evaluate(model, Subset(eval_set, held.tolist()), run.dist, run.cfg["train"]["eval_batch_size"],
                       keep_logits=True)
        probs[held] = torch.softmax(out["logits"].double(), -1).numpy()
    return probs, fold

"""Configs are data: YAML files + `section.key=value` overrides, checked against one schema.

`DEFAULTS` below *is* the schema: every valid key, its default and (through the default's
type) its type. A YAML file or a command-line override may only set keys that exist here.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError

REPO_ROOT = Path(__file__).resolve().parents[1]

DEFAULTS: dict[str, Any] = {
    "run": "",  # run name; "" derives one from dataset, model, noise and seed
    "resume": True,  # continue from the newest complete checkpoint of the run
    "paths": {"pretrained": "pretrained", "scores": "curv_scores", "logs": "logs"},
    # every stage (not part of a run's identity): how long any wait on another rank or process may last
    "dist": {
        "timeout_s": 600.0,  # a collective, rank-0 broadcast or DataLoader batch; then `error: rank R: <stage>: ...`, exit 3
    },
    "data": {
        "name": "digits",  # digits | mnist | cifar10 | cifar100 | imagenet | imagefolder
        "root": "",  # "" -> $DATA_ROOT -> ./data
        "folder": "",  # sub-directory of root for imagefolder / imagenet
        "download": False,  # torchvision CIFAR download (needs a network)
        "augment": True,  # crop + flip for CIFAR / ImageNet, crop only for MNIST (never for digits, never for scoring)
        "crop_pad": 4,  # in-memory sets: random crop after padding by this many pixels (0 = flip only)
        "image_size": 0,  # 0 -> dataset default (imagefolder / imagenet resize)
        "in_memory": True,  # decode small ImageFolder sets once into a uint8 tensor
        "on_device": False,  # in-memory sets: uint8 images on the training device, batches cropped/flipped there
        "num_workers": 0,  # DataLoader workers per rank, started from a fork server (utils.data.worker_context)
        "subset": 0,  # >0: a seeded, class-stratified subset of this many training images (quick runs)
        "subset_seed": 0,
        # holdout model runs (utils/holdout/, utils/folds.py): model holdout_fold of `folds` trains on its share
        "folds": 0,  # >1: split the training set into this many stratified, seeded folds (0 = no folds)
        "holdout_fold": 0,  # the fold left out of this run's training set (0..folds-1)
        "fold_seed": 0,  # seed of the fold assignment
        "fold_scheme": "folds",  # folds (each sample held out by one model) | subsets (random fold_fraction subsets)
        "fold_fraction": 0.5,  # subsets: share of the training set each model trains on
        # labels / exclusions from a CSV (utils/labels.py; the format report.html exports, docs/report.md)
        "labels": "",  # CSV path: train with its labels (keyed by file or index); "" = the data set's own
        "labels_column": "label",  # the CSV column holding the labels (class names or numbers), e.g. aggre
        "labels_key": "auto",  # auto (file for folder data when the CSV has it, else index) | file | index
        "exclude": "",  # CSV path: leave out the rows whose `remove` column is 1 / true
        "labels_identity": "",  # filled in by training: the labels file's SHA-256 (a changed file is a new run)
        "exclude_identity": "",  # filled in by training: the exclusions file's SHA-256
    },
    "noise": {
        "kind": "none",  # none | symmetric | asymmetric | random | instance (needs noise.reference)
        "rate": 0.0,  # fraction of training labels corrupted, exact count round(rate*N)
        "seed": 0,  # independent of train.seed
        "duplicates": 0,  # inject this many duplicated images carrying a different label
        "reference": "",  # kind=instance: a run trained on the clean labels of the same data (another seed)
        "reference_identity": "",  # kind=instance: the reference's identity hash, filled in by training (leave empty)
        # canaries: this share of samples flipped to the class a reference run confuses them with; recorded, never
        # listed as suspects; the report measures its own recall on them (docs/report.md "Canaries")
        "canaries": 0.0,
        "canary_reference": "",  # a finished run on the same data (any labels, e.g. a first run on them)
        "canary_power": 0.0,  # draw canaries with probability ~ the reference's confusability ** this (0: uniform)
        "canary_confused": 0.19,  # share of canaries flipped to the confused-with class (else a random other class)
    },
    "model": {
        # a registered name (utils.models.MODELS), timm:<name> (timm's zoo, never pretrained) or <module>:<callable>
        # (your own factory, importable from the working directory or PYTHONPATH); see README "Your model"
        "name": "digits_mlp", "width": 0, "activation": "",
        "kwargs": {},  # architecture arguments of timm / <module>:<callable> models, e.g. {patch_size: 4, depth: 6}
        # example-tied dropout (localization): on when etd_p_mem > 0
        "etd_p_gen": 0.2,  # fraction of each layer's units that are always-on generalization units
        "etd_p_mem": 0.0,  # keep rate of the remaining (memorization) units, per example
        "etd_seed": 0,  # seed of the per-example masks (independent of train.seed)
        "etd_layers": 0,  # example-tied dropout on the last k hidden layer groups (0 = every hidden group)
    },
    "train": {
        "epochs": 30,
        "batch_size": 128,  # global batch (split across ranks)
        "optimizer": "sgd",  # sgd (momentum, nesterov) | adamw (betas 0.9/0.999; weight_decay decoupled)
        "lr": 0.1,
        "momentum": 0.9,
        "weight_decay": 0.0,
        "nesterov": False,
        "milestones": [],  # epochs at which lr is multiplied by gamma
        "gamma": 0.1,
        "seed": 0,
        "amp": True,  # bf16 autocast on CUDA (ignored on CPU)
        "stats": True,  # per-sample loss/correctness/margin on the un-augmented train set (fp32)
        "stats_every": 1,  # ... every k-th epoch (and the last)
        "max_steps": 0,  # >0: a step budget: train this many optimizer steps (drives the bar; epochs derived)
        "warmup_epochs": 0.0,  # linear learning-rate warm-up over this many epochs (large batches)
        "sync_bn": True,  # under torchrun: SyncBatchNorm (BN statistics of the global batch, as one process)
        "log_every": 25,  # steps between host syncs (NaN check, progress-bar loss)
        "eval_batch_size": 512,
        "checkpoint_every": 1,  # save every k-th epoch (epoch 0 and the last are always saved)
        "compile": False,  # torch.compile the training forward (CUDA; evaluation and scoring stay eager)
        "dtype": "float32",  # float32 | float64: model, batches, evaluation and scoring (float64: not with amp on CUDA)
        "init": "",  # a run under paths.pretrained whose final weights the model starts from (e.g. trained on other data)
        "init_identity": "",  # filled in by training: the init run's identity hash (leave empty)
    },
    # holdout.py (utils/holdout/): models of the run's recipe trained on part of the data predict the rest
    "holdout": {
        "name": "",  # "" writes curv_scores/<run>/holdout/ (what the report reads); a name: holdout_<name>/ (variants)
        "method": "recipe",  # recipe: models of the run's own recipe (any data) | mlp: small MLPs on pixels (seconds)
        "scheme": "folds",  # folds (K folds, each sample held out once) | subsets (M random subsets, Feldman-Zhang)
        "models": 2,  # K folds / M subset models
        "fraction": 0.5,  # subsets: share of the training set each model trains on
        "seed": 0,  # fold / subset assignment
        "init": "",  # a run (trained on other data) whose final weights every holdout model starts from and fine-tunes
        "train": {},  # the holdout models' own recipe: overrides of the run's train.* (e.g. {epochs: 6, lr: 0.01})
        "model": {},  # overrides of the run's model.* (e.g. {width: 8})
    },
    # analyze_curvature.py / find_duplicates.py / fz_memorization.py (utils/curvature/)
    "analysis": {
        "top_k": 32,  # images in the top-curvature grid
        # Confident Learning probabilities: auto (the holdout stage's where the run has them, else best) | holdout | best | none
        "cl_probs": "auto",
        "seed": 0,  # CV folds, FZ subsets and initialisations
        "dup_top": 100,  # duplicate finder: search from the top-k curvature samples (0 = all)
        "dup_neighbors": 5,  # nearest neighbours looked at per searched sample, in each space
        "dup_pixel_rms": 0.05,  # near-identical in pixels: RMS difference of [0, 1] images below this
        "dup_feature_cos": 0.995,  # near-identical in features: cosine similarity of penultimate features above this
        "dup_epoch": -1,  # checkpoint epoch giving the features (-1 = last)
        "fz_models": 200,  # Feldman-Zhang: models trained on random subsets
        "fz_fraction": 0.7,  # subset size as a fraction of the training set
        "fz_width": 0,  # MLP width (0 = the run's model width, 256 if not an MLP)
        "fz_epochs": 0,  # 0 = the run's train.epochs
        "fz_lr": 0.0,  # 0 = the run's train.lr
        "fz_batch_size": 0,  # 0 = the run's train.batch_size
        "fz_chunk": 100,  # models trained at once (memory)
        "fz_bins": 10,  # bins of the mem-vs-curvature plot
        "regime_points": "",  # regime_curve.py: CSV of other runs' final points (run,test_acc,noisy_acc,score,auroc)
        "regime_cl": True,  # regime_curve.py: Confident Learning per saved epoch (one forward pass per checkpoint)
    },
    "score": {
        "method": "fd",  # fd (the paper's finite difference, reuses grad l(x)) | exact (double-backward HVP)
        "n_probes": 1,  # per scored epoch (the paper: 10); with h=1e-2 one probe beats the paper's setting (docs/curvature.md)
        "h": 1e-2,  # fd step along each +-1 probe, normalised input units (the paper: 1e-3; docs/curvature.md)
        "every": 1,  # score every k-th saved epoch (online: every k-th epoch)
        "online": False,  # score the live model at the end of every `every`-th epoch while training
        "batch_size": 256,
        "split": "train",  # train | test | both
        "seed": 0,
        "spectrum": False,
        "max_rows": 1,  # fd: (probe x sample) rows per pass; 1 = one probe per pass (2.1x faster on CPU than stacking), 0 = all
    },
    "localization": {  # gradient_accounting / layer_rewinding / layer_retraining / neuron_flipping / example_tied_dropout
        "group_depth": 0,  # 0: one group per weight layer (+ its norm); k>0: merge groups sharing k leading name parts
        "accounting_every": 1,  # gradient accounting on every k-th optimizer step
        "rewind_epochs": [0, 5],  # checkpoints whose group weights replace the final model's
        "retrain_from": 0,  # epoch a group is reset to before retraining it alone on the clean examples
        "retrain_epochs": 5,
        "retrain_lr": 0.05,
        "retrain_groups": [],  # group names to retrain ([] = all)
        "flip_clean": 50,  # distinct clean / noisy training examples to flip
        "flip_noisy": 50,
        "flip_max_units": 500,  # iteration cap: give up after zeroing this many units
        "flip_batch": 64,  # clean reference examples the target's estimate is compared with
        "flip_refresh": 1,  # recompute the reference batch's estimate every k zeroed units (0: once)
        "flip_test_subset": 0,  # >0: measure the test-accuracy cost on the first k test images
        "batch_size": 512,  # evaluation batch size
        "eval_subset": 0,  # >0: accuracies on the first k training and the first k test images only
        "retrain_examples": 0,  # >0: retrain on the first k clean training examples only
        # the examples under study ("memorized"; the rest are the reference set): noisy (the injected noise) |
        # report (the top rows of curv_scores/<run>/report/suspects.csv) | path of a CSV of indices (column `index`)
        "examples": "noisy",
        "top": 100,  # rows taken from the report (or from a CSV with a `rank` column), best-ranked first
        "seed": 0,
    },
    "report": {  # memorization_report.py (utils/report/; docs/report.md)
        "ranking": "auto",  # auto = the rule chosen by evidence (utils/report/ranking.py DEFAULT_RULE) | a score id | rankavg:a+b
        "probs": "auto",  # suggested labels: auto (the holdout stage's where the run has them, else best) | holdout | best
        "holdout": "",  # which holdout files: "" = curv_scores/<run>/holdout/, a name = holdout_<name>/ (holdout.name)
        "top": 200,  # suspects shown in report.html (gallery + table); suspects.csv holds every sample
        "gallery": 64,  # images in the gallery figure
        # thresholds chosen on the selection runs (results/report_ranking.py, docs/report.md "How the thresholds were chosen")
        "mislabeled_prob": 0.7,  # likely mislabeled: suggested class != given with at least this probability
        "split_prob": 0.15,  # ambiguous: held out, the given label and another class both at least this probable
        "late_epochs": 3,  # memorization's p_in: the run's p(given) averaged over its last this many recorded epochs
        "duplicates": "auto",  # conflicting-duplicate search: auto (in-memory data up to dup_max_n samples) | on | off
        "dup_top": 1000,  # search from the top-k of the ranking and the top-k curvature samples
        "dup_neighbors": 5,  # nearest neighbours in pixels looked at per searched sample
        "dup_pixel_rms": 0.05,  # near-identical: RMS difference of [0, 1] images below this
        "dup_max_n": 200000,  # auto: skip the search above this many training samples (it holds every image)
    },
    "spectrum": {  # parameter-Hessian spectra (utils/spectral/: hessian.py, rmt.py, esm.py)
        "top_k": 30,  # Lanczos eigenvalues kept
        "lanczos_iter": 80,  # Lanczos steps (full reorthogonalization)
        "tol": 0.0,  # Ritz-residual tolerance relative to |lambda|_max; 0 = always run lanczos_iter steps
        "n_samples": 512,  # fixed Hessian sample set (random training samples, un-augmented); 0 = all
        "batch_size": 512,  # micro-batch of one HVP pass
        "slq_probes": 4,  # stochastic Lanczos quadrature starts (density, tr H, tr H^2)
        "slq_iter": 80,
        "seed": 0,  # sample set and Lanczos start vectors
        "tw_quantile": 0.99,  # Tracy-Widom quantile of the MP edge margin (null false-outlier rate per spectrum)
    },
    "esm": {  # early spectral memorization grid (esm_experiment.py / analyse_esm.py)
        "name": "",  # optional tag after <data set>_<model>[_w<width>]; see docs/spectral.md
        "steps": [100, 500, 2000],  # optimizer steps at which the spectrum is captured
        "seeds": [0, 1, 2, 3, 4],  # train.seed = noise.seed of each run
        "conditions": ["none", "random"],  # noise.kind per condition (noise.rate 1.0 for random)
    },
}


# keys whose value is a free-form mapping (one leaf, not a section)
MAPPING_KEYS = ("model.kwargs", "holdout.train", "holdout.model")


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'section.key': value}; private entries (leading '_', e.g. '_given') are left out. The values of
    `MAPPING_KEYS` stay whole (a mapping is one value)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if k.startswith("_"):
            continue
        key = f"{prefix}{k}"
        if isinstance(v, dict) and key not in MAPPING_KEYS:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


FLAT_DEFAULTS = flatten(DEFAULTS)  # {"section.key": default}: the schema, flat
VALID_KEYS = sorted(FLAT_DEFAULTS)


def _type_ok(default: Any, value: Any) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, str):
        return isinstance(value, str)
    if isinstance(default, list):
        return isinstance(value, list)
    if isinstance(default, dict):
        return isinstance(value, dict)
    return True


def suggest(key: str) -> str:
    """' (did you mean x.y?); valid keys of section: ...' for an unknown key."""
    import difflib

    section = key.split(".")[0]
    in_section = [k for k in VALID_KEYS if k.split(".")[0] == section]
    near = difflib.get_close_matches(key, VALID_KEYS, n=1, cutoff=0.6)
    if not near:  # a right leaf in the wrong section, or a near leaf
        leaf = key.split(".")[-1]
        near = [k for k in VALID_KEYS if k.split(".")[-1] == leaf][:1] or difflib.get_close_matches(
            leaf, [k.split(".")[-1] for k in VALID_KEYS], n=1, cutoff=0.7)
        near = [k for k in VALID_KEYS if k.split(".")[-1] == near[0]][:1] if near else []
    hint = f"; did you mean {near[0]}?" if near else ""
    if in_section and len(in_section) > 1:
        return hint + f" keys of {section}: {', '.join(k.split('.', 1)[1] for k in in_section)}"
    sections = sorted({k.split(".")[0] for k in VALID_KEYS})
    return hint + f" sections: {', '.join(sections)}"


def _set(cfg: dict[str, Any], key: str, value: Any, origin: str) -> None:
    mapping = next((m for m in MAPPING_KEYS if key.startswith(m + ".")), None)
    if mapping is not None:  # model.kwargs.patch_size=4: one entry of a mapping key
        section, leaf = mapping.split(".")
        _set(cfg, mapping, {**cfg[section][leaf], key[len(mapping) + 1:]: value}, origin)
        return
    if key not in FLAT_DEFAULTS:
        if any(k.startswith(key + ".") for k in FLAT_DEFAULTS) and isinstance(value, dict):
            for k, v in value.items():
                _set(cfg, f"{key}.{k}", v, origin)
            return
        raise UserError(f"unknown config key {key!r} ({origin}){suggest(key)}")
    default = FLAT_DEFAULTS[key]
    if isinstance(default, float) and isinstance(value, str):
        try:  # YAML 1.1 reads "1e-3" as a string
            value = float(value)
        except ValueError:
            pass
    if not _type_ok(default, value):
        raise UserError(f"config key {key!r} ({origin}) wants {type(default).__name__}, got {value!r}")
    if isinstance(default, float):
        value = float(value)
    node = cfg
    *parents, leaf = key.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = value
    if origin != "defaults":
        cfg.setdefault("_given", {})[key] = value


def given_keys(cfg: dict[str, Any]) -> dict[str, Any]:
    """Flat keys set on the command line or in an explicitly passed --config (not the script's default)."""
    return dict(cfg.get("_given", {}))


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None,
                explicit: bool = True) -> dict[str, Any]:
    """Defaults <- YAML file <- `section.key=value` overrides (values parsed as YAML).

    Keys set by overrides (and by the file when `explicit`, i.e. not a script's default config) are
    remembered under `cfg['_given']`: later stages compare them with the run record."""
    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"config file {p} not found; pass --config PATH with one of configs/*.yaml")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            what = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise UserError(f"config file {p} is not valid YAML{where}: {what}") from None
        if not isinstance(data, dict):
            raise UserError(f"config file {p} must hold a mapping of sections")
        for k, v in data.items():
            _set(cfg, k, v, str(p) if explicit else "defaults")
    for item in overrides or []:
        if "=" not in item:
            raise UserError(f"override {item!r} must look like section.key=value (e.g. train.epochs=10)")
        key, raw = item.split("=", 1)
        key = key.strip()
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        if isinstance(FLAT_DEFAULTS.get(key), str) and not isinstance(value, str):
            value = raw  # string keys take the text as written (run=on is the run "on", not True)
        _set(cfg, key, value, "command line")
    if not cfg["run"]:
        cfg["run"] = default_run_name(cfg)
    return cfg


def default_run_name(cfg: dict[str, Any]) -> str:
    d, n, m, t = cfg["data"], cfg["noise"], cfg["model"], cfg["train"]
    name = d["folder"] or d["name"] if d["name"] in ("imagefolder", "imagenet") else d["name"]
    noise = "clean" if n["kind"] == "none" else f"{n['kind']}{n['rate']:g}"
    if n["duplicates"]:
        noise += f"_dup{n['duplicates']}"
    if n["kind"] != "none" or n["duplicates"]:
        noise += f"_n{n['seed']}"
    model = m["name"].replace(":", "-").replace("/", "-")  # timm:<name>, <module>:<callable>: a plain directory name
    return f"{name}_{model}_{noise}_s{t['seed']}"


# Keys that may differ between a run and its resumption without changing what it computes.
_RESUME_FREE = ("run", "resume", "paths.", "dist.", "data.root", "data.folder", "data.num_workers", "data.download",
                "train.epochs", "train.max_steps", "train.checkpoint_every", "train.eval_batch_size", "train.stats",
                "train.stats_every", "train.log_every", "train.compile", "score.", "localization.", "analysis.", "report.",
                "spectrum.", "esm.", "holdout.")


# Run-defining keys added after runs were recorded, with the value those runs had: left out of the identity while at
# it, and given to a recorded run whose config lacks the key (`utils.runs.merge_run_config`).
ADDED_LATER = {"data.on_device": False, "train.optimizer": "sgd", "data.folds": 0, "data.holdout_fold": 0,
               "data.fold_seed": 0, "noise.reference": "", "noise.reference_identity": "", "model.kwargs": {},
               "train.dtype": "float32", "data.fold_scheme": "folds", "data.fold_fraction": 0.5, "data.labels": "",
               "data.labels_column": "label", "data.labels_key": "auto", "data.exclude": "", "train.init": "",
               "train.init_identity": "", "noise.canaries": 0.0, "noise.canary_reference": "",
               "noise.canary_power": 0.0, "noise.canary_confused": 1.0, "data.labels_identity": "", "data.exclude_identity": ""}


def identity_items(cfg: dict[str, Any]) -> dict[str, Any]:
    """The flat keys that define a run (what must match when resuming)."""
    flat = {k: v for k, v in flatten(cfg).items() if not any(k == f or k.startswith(f) for f in _RESUME_FREE)}
    if not flat.get("model.etd_p_mem", 0.0):  # runs without example-tied dropout keep their pre-ETD identity
        for k in ("model.etd_p_gen", "model.etd_p_mem", "model.etd_seed", "model.etd_layers"):
            flat.pop(k, None)
    for k, default in ADDED_LATER.items():  # at its default, a key added later leaves older runs' identity as it was
        if flat.get(k, default) == default:
            flat.pop(k, None)
    return flat


def identity_hash(cfg: dict[str, Any]) -> str:
    """Hash of `identity_items`."""
    return hashlib.sha256(json.dumps(identity_items(cfg), sort_keys=True).encode()).hexdigest()[:16]


def identity_diff(a: dict[str, Any], b: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{key: (a's value, b's value)} for the run-defining keys that differ."""
    fa, fb = identity_items(a), identity_items(b)
    return {k: (fa.get(k), fb.get(k)) for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)}


def parse_args(default_config: str, argv: list[str] | None = None, description: str = "") -> dict[str, Any]:
    """Command line of every script: `[--config PATH] [section.key=value ...]`."""
    parser = argparse.ArgumentParser(description=description, epilog="sections: " + ", ".join(DEFAULTS))
    default_config = str(REPO_ROOT / default_config)  # the scripts' own config, wherever they are run from
    parser.add_argument("--config", default=None, help=f"YAML config (default {default_config})")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides")
    args = parser.parse_args(argv)
    return load_config(args.config or default_config, args.overrides, explicit=args.config is not None)

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

DEFAULTS: dict[str, Any] = {
    "run": "",  # run name; "" derives one from dataset, model, noise and seed
    "resume": True,  # continue from the newest complete checkpoint of the run
    "paths": {"pretrained": "pretrained", "scores": "curv_scores", "logs": "logs"},
    "data": {
        "name": "digits",  # digits | cifar10 | cifar100 | imagenet | imagefolder
        "root": "",  # "" -> $DATA_ROOT -> ./data
        "folder": "",  # sub-directory of root for imagefolder / imagenet
        "download": False,  # torchvision CIFAR download (needs a network)
        "augment": True,  # crop + flip for CIFAR / ImageNet (never for digits, never for scoring)
        "image_size": 0,  # 0 -> dataset default (imagefolder / imagenet resize)
        "in_memory": True,  # decode small ImageFolder sets once into a uint8 tensor
        "num_workers": 0,
        "subset": 0,  # >0: keep only the first `subset` training images (quick runs)
    },
    "noise": {
        "kind": "none",  # none | symmetric | asymmetric | random
        "rate": 0.0,  # fraction of training labels corrupted, exact count round(rate*N)
        "seed": 0,  # independent of train.seed
        "duplicates": 0,  # inject this many duplicated images carrying a different label
    },
    "model": {"name": "digits_mlp", "width": 0, "activation": ""},
    "train": {
        "epochs": 30,
        "batch_size": 128,  # global batch (split across ranks)
        "lr": 0.1,
        "momentum": 0.9,
        "weight_decay": 0.0,
        "nesterov": False,
        "milestones": [],  # epochs at which lr is multiplied by gamma
        "gamma": 0.1,
        "seed": 0,
        "amp": True,  # bf16 autocast on CUDA (ignored on CPU)
        "stats": True,  # per-sample loss/correctness on the un-augmented train set each epoch
        "max_steps": 0,  # >0: stop after this many optimizer steps
        "eval_batch_size": 512,
        "checkpoint_every": 1,  # save every k-th epoch (epoch 0 and the last are always saved)
    },
    "score": {
        "method": "exact",  # exact | fd
        "n_probes": 10,
        "h": 1e-3,
        "every": 1,  # score every k-th saved epoch
        "batch_size": 256,
        "split": "train",  # train | test | both
        "seed": 0,
        "spectrum": False,
    },
}


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


VALID_KEYS = sorted(_flatten(DEFAULTS))


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
    return True


def _set(cfg: dict[str, Any], key: str, value: Any, origin: str) -> None:
    flat_defaults = _flatten(DEFAULTS)
    if key not in flat_defaults:
        if any(k.startswith(key + ".") for k in flat_defaults) and isinstance(value, dict):
            for k, v in value.items():
                _set(cfg, f"{key}.{k}", v, origin)
            return
        raise UserError(f"unknown config key {key!r} ({origin}); valid keys: {', '.join(VALID_KEYS)}")
    default = flat_defaults[key]
    if isinstance(default, float) and isinstance(value, str):
        try:  # YAML 1.1 reads "1e-3" as a string
            value = float(value)
        except ValueError:
            pass
    if not _type_ok(default, value):
        raise UserError(
            f"config key {key!r} ({origin}) wants {type(default).__name__}, got {value!r}; "
            f"valid keys: {', '.join(VALID_KEYS)}"
        )
    if isinstance(default, float):
        value = float(value)
    node = cfg
    *parents, leaf = key.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = value


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    """Defaults <- YAML file <- `section.key=value` overrides (values parsed as YAML)."""
    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"config file {p} not found; pass --config PATH with one of configs/*.yaml")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise UserError(f"config file {p} is not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise UserError(f"config file {p} must hold a mapping of sections")
        for k, v in data.items():
            _set(cfg, k, v, str(p))
    for item in overrides or []:
        if "=" not in item:
            raise UserError(f"override {item!r} must look like section.key=value; valid keys: {', '.join(VALID_KEYS)}")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        _set(cfg, key.strip(), value, "command line")
    if not cfg["run"]:
        cfg["run"] = default_run_name(cfg)
    return cfg


def default_run_name(cfg: dict[str, Any]) -> str:
    d, n, m, t = cfg["data"], cfg["noise"], cfg["model"], cfg["train"]
    name = d["folder"] or d["name"] if d["name"] in ("imagefolder", "imagenet") else d["name"]
    noise = "clean" if n["kind"] == "none" else f"{n['kind']}{n['rate']:g}"
    if n["duplicates"]:
        noise += f"_dup{n['duplicates']}"
    return f"{name}_{m['name']}_{noise}_s{t['seed']}"


# Keys that may differ between a run and its resumption without changing what it computes.
_RESUME_FREE = ("resume", "paths.", "data.root", "data.num_workers", "data.download", "train.epochs",
                "train.checkpoint_every", "train.eval_batch_size", "score.")


def identity_hash(cfg: dict[str, Any]) -> str:
    """Hash of the keys that define a run (what must match when resuming)."""
    flat = {k: v for k, v in _flatten(cfg).items() if not any(k == f or k.startswith(f) for f in _RESUME_FREE)}
    return hashlib.sha256(json.dumps(flat, sort_keys=True).encode()).hexdigest()[:16]


def parse_args(default_config: str, argv: list[str] | None = None, description: str = "") -> dict[str, Any]:
    """Command line of every script: `[--config PATH] [section.key=value ...]`."""
    parser = argparse.ArgumentParser(description=description, epilog="valid keys: " + ", ".join(VALID_KEYS))
    parser.add_argument("--config", default=default_config, help=f"YAML config (default {default_config})")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides")
    args = parser.parse_args(argv)
    return load_config(args.config, args.overrides)

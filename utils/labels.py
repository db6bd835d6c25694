"""Labels and exclusions from a CSV file: `data.labels=<csv>` and `data.exclude=<csv>`.

One format serves both, and it is what report.html's Export writes (docs/report.md, "Decisions file"):

    index,file,label,remove,decision,from_run,from_identity

- key: `file` (folder data: the image path relative to data.root/data.folder, as suspects.csv's `source`) or `index`
  (the sample's position in the training set); `data.labels_key=auto` takes `file` for folder data when the CSV has
  that column, else `index`;
- `data.labels`: the column `data.labels_column` (default `label`) holds the label to train with: a class name or a
  class number. Samples the file does not list keep their labels: those of `from_run` when the file names one
  (decisions made on a run, e.g. one trained on another labels file), else the data set's own;
- `data.exclude`: rows whose `remove` is 1 / true / yes are left out of the training set.

The data set's own labels stay the run's `true_labels`, so `is_noisy` marks where the trained labels differ from
them (CIFAR-10N: the human errors). The run record keeps each file's SHA-256 and the counts of changed / removed
samples; a later stage reading a file whose hash differs is refused.
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UserError

TRUE_WORDS = {"1", "true", "yes", "y"}
FALSE_WORDS = {"0", "false", "no", "n", ""}


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def read_rows(path: str | Path, what: str) -> tuple[list[str], list[dict[str, str]]]:
    """(header, rows) of a CSV; one UserError for a missing or unreadable file."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{what}={path}: file not found (a CSV with a header: index or file, label, remove)")
    try:
        with open(p, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            header = list(reader.fieldnames or [])
    except (UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"{what}={path} is not a readable CSV ({type(e).__name__}: {e})") from None
    return header, rows


def row_positions(header: list[str], rows: list[dict[str, str]], key: str, n: int, files: list[str] | None,
                  what: str) -> np.ndarray:
    """Positions (len(rows),) in the training set of each row, by `key` (auto | file | index)."""
    if key == "auto":
        key = "file" if files is not None and "file" in header else "index"
    if key not in ("file", "index"):
        raise UserError(f"data.labels_key must be auto, file or index, got {key!r}")
    if key not in header:
        raise UserError(f"{what}: the CSV has no {key!r} column (it has: {', '.join(header)})")
    if key == "file":
        if files is None:
            raise UserError(f"{what}: keyed by file, but this data set has no image files; use data.labels_key=index")
        where = {f.replace("\\", "/"): i for i, f in enumerate(files)}
        missing = [r["file"] for r in rows if r["file"].replace("\\", "/") not in where]
        if missing:
            raise UserError(f"{what}: {len(missing)} file(s) of the CSV are not in the training set, e.g. "
                            f"{missing[0]!r} (paths relative to data.root/data.folder, as suspects.csv's source)")
        return np.array([where[r["file"].replace("\\", "/")] for r in rows], np.int64)
    try:
        pos = np.array([int(r["index"]) for r in rows], np.int64)
    except ValueError:
        raise UserError(f"{what}: the index column must hold whole numbers") from None
    bad = pos[(pos < 0) | (pos >= n)]
    if len(bad):
        raise UserError(f"{what}: index {int(bad[0])} is outside the {n} training samples")
    return pos


def parse_labels(values: list[str], classes: list[str], what: str) -> np.ndarray:
    """Class numbers (len(values),) from class names or numbers."""
    by_name = {c: k for k, c in enumerate(classes)}
    out = []
    for v in values:
        if v in by_name:
            out.append(by_name[v])
        elif v.strip().lstrip("-").isdigit() and 0 <= int(v) < len(classes):
            out.append(int(v))
        else:
            raise UserError(f"{what}: label {v!r} is neither a class name ({', '.join(classes[:10])}"
                            f"{', ...' if len(classes) > 10 else ''}) nor a class number 0..{len(classes) - 1}")
    return np.asarray(out, np.int64)


def base_labels(header: list[str], rows: list[dict[str, str]], pretrained: str, n: int) -> tuple[np.ndarray | None, str]:
    """(given labels (n,) of the run the decisions were made on, its name), or (None, '') when the file names none."""
    if "from_run" not in header or not rows or not rows[0]["from_run"]:
        return None, ""
    name = rows[0]["from_run"]
    rec = Path(pretrained) / name / "record.npz"
    if not rec.is_file():
        raise UserError(f"data.labels: the file's decisions were made on run {name!r}, whose record {rec} is missing; "
                        "set paths.pretrained to where that run lives")
    with np.load(rec, allow_pickle=False) as z:
        given = z["given_labels"]
    if len(given) < n:
        raise UserError(f"data.labels: run {name!r} has {len(given)} samples, this data set {n}")
    return np.asarray(given[:n], np.int64), name


def pin(cfg: dict[str, Any], key: str) -> str:
    """The SHA-256 of the file `data.<key>`, written into `data.<key>_identity` (part of the run's identity, so a
    changed file is another run: a resume with it is refused); UserError when it differs from the one recorded."""
    d = cfg["data"]
    path = d[key]
    if not Path(path).is_file():
        raise UserError(f"data.{key}={path}: file not found (a CSV with a header: index or file, label, remove)")
    sha = file_sha256(path)
    if d[f"{key}_identity"] not in ("", sha):
        raise UserError(f"data.{key}={path} changed since this run was started (SHA-256 {d[f'{key}_identity']} then, "
                        f"{sha} now): restore the file, or train a new run on it")
    d[f"{key}_identity"] = sha
    return sha


def apply_labels(cfg: dict[str, Any], given: np.ndarray, classes: list[str], files: list[str] | None,
                 pretrained: str) -> tuple[np.ndarray, dict[str, Any]]:
    """Given labels (N,) from `data.labels` (the labels the run would have otherwise elsewhere), and what the record
    keeps about the file."""
    d = cfg["data"]
    what = f"data.labels={d['labels']}"
    sha = pin(cfg, "labels")
    header, rows = read_rows(d["labels"], "data.labels")
    col = d["labels_column"]
    if col not in header:
        raise UserError(f"{what}: no column {col!r} (it has: {', '.join(header)}); set data.labels_column")
    base, corrected_from = base_labels(header, rows, pretrained, len(given))
    out = (base if base is not None else given).copy()
    pos = row_positions(header, rows, d["labels_key"], len(given), files, what)
    out[pos] = parse_labels([r[col] for r in rows], classes, what)
    meta = {"labels_file": str(d["labels"]), "labels_sha256": sha, "labels_column": col,
            "labels_rows": len(rows), "labels_changed": int((out != given).sum())}
    if corrected_from:
        meta["corrected_from"] = corrected_from
        meta["corrected_from_identity"] = rows[0].get("from_identity", "")
        meta["labels_changed_from_run"] = int((out != base).sum())
    return out, meta


def exclude_positions(cfg: dict[str, Any], n: int, files: list[str] | None) -> tuple[np.ndarray, dict[str, Any]]:
    """Positions (sorted) that `data.exclude` removes from the training set, and what the record keeps."""
    d = cfg["data"]
    what = f"data.exclude={d['exclude']}"
    sha = pin(cfg, "exclude")
    header, rows = read_rows(d["exclude"], "data.exclude")
    if "remove" not in header:
        raise UserError(f"{what}: no 'remove' column (it has: {', '.join(header)})")
    words = [r["remove"].strip().lower() for r in rows]
    bad = [w for w in words if w not in TRUE_WORDS | FALSE_WORDS]
    if bad:
        raise UserError(f"{what}: remove must be 1/0 (or true/false), got {bad[0]!r}")
    pos = row_positions(header, rows, d["labels_key"], n, files, what)
    drop = np.unique(pos[[w in TRUE_WORDS for w in words]])
    if len(drop) >= n:
        raise UserError(f"{what} removes all {n} training samples")
    return drop, {"exclude_file": str(d["exclude"]), "exclude_sha256": sha,
                  "excluded": len(drop), "excluded_index": drop.tolist()}

"""The examples under study: which training examples every localization method treats as "memorized".

`localization.examples` chooses them (one place, `resolve_selection`; `studied_examples(run)` is its mask):

- `noisy` (default): the run record's `is_noisy` (injected label noise); the reference set is the clean rest;
- `report`: the `localization.top` best-ranked rows of the run's memorization report,
  `<paths.scores>/<run>/report/suspects.csv` (written by `memorization_report.py`);
- a path to a CSV of training-set indices: a column named `index` (or a single column, with or without a
  header); a CSV with a `rank` column (e.g. another run's `suspects.csv`) gives its `localization.top`
  best-ranked rows, any other CSV all its indices.

The other training examples are the reference set. Indices are the run record's sample indices
(`record["index"]`, 0 .. N-1 in record order). A CSV with a `given_label` column is checked against the
run's given labels, so a CSV of another run or data set is refused rather than silently misread.
"""

from __future__ import annotations

import csv
import functools
import heapq
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..distributed import broadcast_object
from ..errors import UserError
from ..io import write_text
from ..runs import Run, _raise_or, _try, score_dir

NAMES = ("noisy", "clean")  # (studied, reference) names of the default selection, in figures and summaries
KINDS = ("noisy", "report")  # the named selections; any other value of localization.examples is a CSV path
_NUMBER = re.compile(r"[+-]?\d+(\.0*)?")
RENAMES = (("noisy", "studied"), ("clean", "reference"))  # column words of the tables under a non-default selection


@dataclass(frozen=True)
class Selection:
    """The examples under study (`mask`, (N,) bool in record order) and how to name them."""

    mask: np.ndarray
    kind: str  # noisy | report | csv
    label: str  # "noisy" | "report top-100" | "csv picks.csv" | "csv suspects.csv top-100"
    source: str = ""  # the CSV read ("" for noisy)
    top: int = 0  # rows taken from a ranked CSV (0: every row / not a CSV)

    @property
    def reference(self) -> str:
        """Name of the other training examples."""
        return NAMES[1] if self.kind == "noisy" else "other"

    @property
    def names(self) -> tuple[str, str]:
        """(studied, reference) names for figures and summaries."""
        return self.label, self.reference

    @property
    def default(self) -> bool:
        """True for today's selection (injected noise): outputs keep their historic names."""
        return self.kind == "noisy"

    def describe(self) -> dict[str, Any]:
        """What selection.json records (the studied indices themselves unless they are the record's is_noisy)."""
        out = {"examples": self.kind, "label": self.label, "reference": self.reference, "source": self.source,
               "top": self.top, "n_studied": int(self.mask.sum()), "n_reference": int((~self.mask).sum())}
        if not self.default:
            out["index"] = np.flatnonzero(self.mask).tolist()
        return out


def report_path(cfg: dict[str, Any]) -> Path:
    """Where a run's memorization report table lives: <paths.scores>/<run>/report/suspects.csv."""
    return score_dir(cfg) / "report" / "suspects.csv"


def _spec(cfg: dict[str, Any]) -> tuple[str, Path | None, int]:
    """(kind, CSV path or None, top) from the config; checks localization.top."""
    loc = cfg["localization"]
    examples, top = str(loc.get("examples", "noisy")).strip(), int(loc.get("top", 100))
    if top < 1:
        raise UserError(f"localization.top must be at least 1, got {top}")
    if examples == "noisy":
        return "noisy", None, top
    if examples == "report":
        return "report", report_path(cfg), top
    if not examples:
        raise UserError("localization.examples is empty: pass noisy, report or the path of a CSV of indices")
    return "csv", Path(examples).expanduser(), top


def selection_tag(cfg: dict[str, Any]) -> str:
    """Sub-folder name of a non-default selection's outputs ("" for noisy): report_top100, csv_<stem>[_top100]."""
    kind, path, top = _spec(cfg)
    if kind == "noisy":
        return ""
    if kind == "report":
        return f"report_top{top}"
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", path.stem) or "indices"
    return f"csv_{stem}" + (f"_top{top}" if _is_ranked(path) else "")


def check_source(cfg: dict[str, Any], before: str = "") -> None:
    """Fail early (before a training starts) when the selection's CSV is missing; `before` names why it must
    exist already (e.g. gradient accounting, which records while the run trains)."""
    kind, path, _ = _spec(cfg)
    if kind == "report" and not path.is_file():
        if before:
            raise UserError(f"{before}, so run {cfg['run']} has no memorization report yet: pass "
                            "localization.examples=<path of another run's report/suspects.csv> (same data and noise)")
        raise UserError(f"run {cfg['run']} has no memorization report ({path}): run "
                        f"`python memorization_report.py run={cfg['run']}` first")
    if kind == "csv" and not path.is_file():
        raise UserError(f"localization.examples={path}: no such CSV file; pass noisy, report or the path of a CSV "
                        "of training-set indices")


def _is_ranked(path: Path) -> bool:
    """Whether a CSV has a `rank` column (False when it cannot be read: `_read_csv` says why later)."""
    try:
        with open(path, newline="") as f:
            return "rank" in [h.strip() for h in next(csv.reader(f), [])]
    except OSError:
        return False


def _int(v: str, path: Path, row: int, col: str) -> int:
    """An integer cell ("12" or "12.0"), or one error line naming the file, line and column."""
    try:
        return int(v)
    except ValueError:
        pass
    try:
        f = float(v)
        if f == int(f):
            return int(f)
    except (ValueError, OverflowError):
        pass
    raise UserError(f"{path}: line {row} has {col} {v.strip()!r}, not an integer")


def _cell(row: list[str], col: int) -> str:
    return row[col] if col < len(row) else ""


@functools.lru_cache(maxsize=8)
def _read_csv(path: str, stamp: tuple[int, int], top: int) -> tuple[np.ndarray, np.ndarray | None, bool]:
    """(indices, given labels or None, ranked) of a CSV; a ranked CSV gives the rows of its `top` smallest
    ranks (streamed: memory O(top) for a million-row report). Cached on (path, (mtime, size), top), as
    every accuracy evaluation asks again."""
    p = Path(path)
    try:
        with open(p, newline="") as f:
            reader = csv.reader(f)
            head = next((r for r in reader if any(c.strip() for c in r)), None)
            if head is None:
                raise UserError(f"{p} is empty: it selects no examples")
            head = [h.strip() for h in head]
            first: list[tuple[int, list[str]]] = []
            if "index" not in head:
                if len(head) != 1:
                    raise UserError(f"{p} has no column named 'index' (columns: {', '.join(head)}): name the "
                                    "column of training-set indices 'index' or pass a one-column CSV")
                if _NUMBER.fullmatch(head[0]):  # one column without a header
                    first, head = [(1, head)], ["index"]
            col = head.index("index") if "index" in head else 0
            rows = itertools.chain(first, ((reader.line_num, r) for r in reader if any(c.strip() for c in r)))
            ranked = "rank" in head
            if ranked:
                rc = head.index("rank")
                body = heapq.nsmallest(top, rows, key=lambda lr: _int(_cell(lr[1], rc), p, lr[0], "rank"))
            else:
                body = list(rows)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"cannot read the CSV of indices {p}: {e}") from None
    idx = np.array([_int(_cell(r, col), p, ln, head[col]) for ln, r in body], np.int64)
    given = None
    if "given_label" in head:
        gc = head.index("given_label")
        given = np.array([_int(_cell(r, gc), p, ln, "given_label") for ln, r in body], np.int64)
    return idx, given, ranked


def read_indices(path: Path, top: int, n: int, given_labels: np.ndarray | None = None) -> tuple[np.ndarray, bool]:
    """(sorted unique indices, ranked) of a CSV of training-set indices, checked against a run of `n`
    samples (and its given labels where the CSV has a `given_label` column)."""
    path = Path(path)
    st = path.stat()
    idx, given, ranked = _read_csv(str(path.resolve()), (st.st_mtime_ns, st.st_size), top)
    bad = idx[(idx < 0) | (idx >= n)]
    if len(bad):
        raise UserError(f"{path}: index {int(bad[0])} is outside the run's {n} training samples (0..{n - 1}); "
                        "the CSV belongs to another run or data set")
    if given is not None and given_labels is not None:
        off = np.flatnonzero(given != given_labels[idx])
        if len(off):
            i = off[0]
            raise UserError(f"{path}: sample {int(idx[i])} has given_label {int(given[i])} there but "
                            f"{int(given_labels[idx[i]])} in the run's record; the CSV belongs to another run "
                            "(or an older training of this one)")
    return np.unique(idx), ranked


def resolve_selection(cfg: dict[str, Any], record: dict[str, Any]) -> Selection:
    """The examples under study for a run with config `cfg` and per-sample `record` (see the module doc)."""
    is_noisy = np.asarray(record["is_noisy"], bool)
    n = len(is_noisy)
    kind, path, top = _spec(cfg)
    if kind == "noisy":
        if not is_noisy.any():
            raise UserError(f"run {cfg['run']} has no injected noise: pass localization.examples=report or a "
                            "CSV of indices")
        sel = Selection(is_noisy, "noisy", "noisy")
    else:
        check_source(cfg)
        idx, ranked = read_indices(path, top, n, np.asarray(record["given_labels"]))
        mask = np.zeros(n, bool)
        mask[idx] = True
        if kind == "report":
            label = f"report top-{top}"
        else:
            label = f"csv {path.name}" + (f" top-{top}" if ranked else "")
        sel = Selection(mask, kind, label, str(path), top if ranked else 0)
    if not sel.mask.any():
        raise UserError(f"localization.examples={cfg['localization']['examples']} selects no examples of run "
                        f"{cfg['run']}")
    if sel.mask.all():
        raise UserError(f"localization.examples={cfg['localization']['examples']} selects all {n} training examples "
                        f"of run {cfg['run']}: nothing is left as the reference set; lower localization.top")
    return sel


def selection(run: Run) -> Selection:
    """The run's selection; under torchrun rank 0 reads the CSV and every rank gets the same answer."""
    got = _try(resolve_selection, run.cfg, run.record) if run.dist.is_main else None
    return _raise_or(broadcast_object(got))


def studied_examples(run: Run) -> np.ndarray:
    """(N,) bool in record order: the examples under study (`localization.examples`); the rest are the reference."""
    return selection(run).mask


def relabel(rows: list[dict[str, Any]], sel: Selection) -> list[dict[str, Any]]:
    """Rows as written: under a non-default selection the column words noisy / clean become studied / reference
    (noisy_acc -> studied_acc, clean_acc -> reference_acc, ...); the default keeps today's names."""
    if sel.default:
        return rows

    def key(k: str) -> str:
        for a, b in RENAMES:
            k = k.replace(a, b)
        return k

    return [{key(k): v for k, v in r.items()} for r in rows]


def caption(sel: Selection) -> str:
    """A markdown line above a table saying which examples are under study ("" for the default)."""
    if sel.default:
        return ""
    src = f" (`{sel.source}`)" if sel.source else ""
    return (f"studied = {sel.label}{src}: {int(sel.mask.sum())} examples; reference = the other "
            f"{int((~sel.mask).sum())} training examples\n\n")


def write_selection(directory: Path, sel: Selection) -> Path:
    """selection.json in an output folder: which examples were studied (kind, label, source, top, counts)."""
    return write_text(Path(directory) / "selection.json", json.dumps(sel.describe(), indent=1) + "\n")

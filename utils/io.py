"""Every file the toolkit writes or reads back, in one place.

- `atomic_write`: temporary file in the target directory, then `os.replace`; the result has the
  permissions the umask gives a new file (0666 & ~umask), never mkstemp's 0600. `reap_temporaries` removes
  the temporary files of writers that were killed (SIGKILL leaves them).
- `save_npz` / `load_npz`: `.npz` of plain arrays (no object dtype; loaded with `allow_pickle=False`);
  a missing, truncated or corrupt file is one `UserError` line.
- `write_table` / `read_table` / `markdown_table`: dict rows -> `<stem>.csv` + `<stem>.md`.
- `save_figure` / `figure_png`: matplotlib (Agg) figures -> PNG at `DPI`, closed afterwards.
"""

from __future__ import annotations

import csv
import io
import math
import os
import socket
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UserError
from .faults import fault_point

DPI = 150


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call `write(tmp_path)`, then rename onto `path` (mode 0666 & ~umask); a crash leaves no partial file.

    A write that fails for want of space or permission (OSError; torch's zip writer raises RuntimeError) removes
    the temporary file and is one UserError: the previous version of `path` and every other file are intact."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{_owner()}.", suffix=".tmp")
    except OSError as e:
        raise _write_error(path, e) from None
    os.close(fd)
    try:
        write(tmp)
        fault_point("write", path)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) or (isinstance(e, RuntimeError) and "write" in str(e).lower()):
            raise _write_error(path, e) from None
        raise
    return path


def _owner() -> str:
    """<host>-<pid>, in every temporary name: who is writing it (so a later start knows whether it still runs)."""
    return f"{socket.gethostname().replace('.', '-')}-{os.getpid()}"


def reap_temporaries(directory: str | os.PathLike, announce: bool = True) -> list[Path]:
    """Remove the temporary files under `directory` that a killed writer left behind: those named by
    `atomic_write` for a process of this host that no longer runs. A live writer's file (another scorer of
    the same run) and other hosts' files are left alone. Says what it removed (`announce`); returns the paths."""
    host = _owner().rpartition("-")[0]
    gone = []
    for p in Path(directory).rglob(".*.tmp") if Path(directory).is_dir() else []:
        owner = p.name[:-len(".tmp")].split(".")[-2] if p.name.count(".") >= 4 else ""
        h, _, pid = owner.rpartition("-")
        if h != host or not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # its writer still runs
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        p.unlink(missing_ok=True)
        gone.append(p)
    if gone and announce:
        print(f"removed {len(gone)} temporary file(s) left by a killed job in {directory}: "
              f"{', '.join(p.name for p in gone[:3])}", flush=True)
    return gone


def _write_error(path: Path, e: BaseException) -> UserError:
    why = os.strerror(e.errno) if isinstance(e, OSError) and e.errno else str(e).splitlines()[0]
    return UserError(f"could not write {path}: {why}; nothing was half-written and the files already there are "
                     "intact: free space (or fix permissions) and run the same command again to resume")


def write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


# ----------------------------------------------------------------------------- npz
NPZ_KEY = "toolkit_npz_format"  # every .npz this toolkit writes holds it; readers never see it
NPZ_FORMAT = 1


def save_npz(path: str | os.PathLike, **arrays: Any) -> Path:
    """Atomic `np.savez` of plain (non-object) arrays, stamped with `NPZ_KEY` = `NPZ_FORMAT`."""
    for k, v in arrays.items():
        if np.asarray(v).dtype == object:
            raise TypeError(f"array {k!r} has dtype object; score files must load with allow_pickle=False")

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays, **{NPZ_KEY: np.int64(NPZ_FORMAT)})

    return atomic_write(path, write)


def load_npz(path: str | os.PathLike, what: str = "", keys: tuple[str, ...] | None = None,
             require: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """The arrays of an `.npz` (all, or only those of `keys` that it holds; no pickles). One-line UserError for a
    missing, truncated or corrupt file, one stamped with another format version, and one lacking any of
    `require` (another project's file). Files written before the stamp (no `NPZ_KEY`) are read as format 1.

    `what` says how to make the file (e.g. "score the run first (score_digits_checkpoint.py run=x)")."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} not found; {what or 'run the previous stage first'}")
    try:
        with np.load(path, allow_pickle=False) as z:
            version = int(z[NPZ_KEY]) if NPZ_KEY in z.files else NPZ_FORMAT
            missing = [k for k in require if k not in z.files]
            out = {k: z[k] for k in z.files if k != NPZ_KEY and (keys is None or k in keys)}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise UserError(f"{path} is corrupt or truncated ({type(e).__name__}); delete it and "
                        f"{what or 'rerun the stage that wrote it'}") from None
    if version != NPZ_FORMAT:
        raise UserError(f"{path} was written in file format {version}, which this toolkit (format {NPZ_FORMAT}) "
                        "does not read; use the version of the toolkit that wrote it")
    if missing:
        raise UserError(f"{path} is not a file of this toolkit (it lacks {', '.join(missing)}); move it away and "
                        f"{what or 'rerun the stage that wrote it'}")
    return out


# ----------------------------------------------------------------------------- tables
def fmt(v: Any) -> str:
    """A table cell: floats with 4 decimals (scientific below 1e-3), nan as 'nan'."""
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if math.isnan(v):
            return "nan"
        return f"{v:.2e}" if v != 0 and abs(v) < 1e-3 else f"{v:.4f}"
    return str(v)


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    return cols


def markdown_table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    """A GitHub markdown table of dict rows (columns: union of keys in first-seen order)."""
    if not rows:
        return "(no rows)\n"
    cols = columns or _columns(rows)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_table(stem: str | os.PathLike, rows: list[dict[str, Any]], markdown: str | bool = True,
                digits: int = 6) -> list[Path]:
    """Write `stem`.csv (floats with `digits` significant digits) and `stem`.md atomically.

    `markdown`: True -> a plain markdown table of the rows; a string -> that markdown text instead;
    False -> no .md. Returns the paths written."""
    stem = Path(stem)
    cols = _columns(rows)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: f"{float(v):.{digits}g}" if isinstance(v, (float, np.floating)) else v for k, v in r.items()})
    paths = [write_text(stem.with_suffix(".csv"), buf.getvalue())]
    if markdown:
        paths.append(write_text(stem.with_suffix(".md"), markdown if isinstance(markdown, str) else markdown_table(rows)))
    return paths


def read_table(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a .csv written by `write_table`, numbers and booleans parsed."""
    def conv(v: str) -> Any:
        for t in (int, float):
            try:
                return t(v)
            except ValueError:
                pass
        return {"True": True, "False": False}.get(v, v)

    with open(path, newline="") as f:
        return [{k: conv(v) for k, v in r.items()} for r in csv.DictReader(f)]


# ----------------------------------------------------------------------------- figures
def plt():
    """matplotlib.pyplot on the Agg backend (no screen needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot


def save_figure(fig: Any, path: str | os.PathLike) -> Path:
    """Write a figure as PNG (DPI, tight box) atomically and close it."""
    path = atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=DPI, format="png", bbox_inches="tight"))
    plt().close(fig)
    return path


def figure_png(fig: Any) -> bytes:
    """A figure as PNG bytes, closed afterwards (for notebooks: IPython.display.Image)."""
    buf = io.BytesIO()
    fig.savefig(buf, dpi=DPI, format="png", bbox_inches="tight")
    plt().close(fig)
    return buf.getvalue()

"""What every top-level script does: parse `--config` + overrides, run, report UserErrors in one line.

A `UserError` ends the script with exit status 2 and one `error:` line on stderr, printed after every open
progress bar has been closed, so it is the last line the user sees (no traceback). A wait on another rank or
process that failed (`utils.waits.WaitError`, or a collective's own error) ends it with exit status 3 and one
`error:` line naming the rank, the stage and the wait, without tearing down the process group (that could wait
on the dead peer too): torchrun then restarts or stops the group."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from tqdm import tqdm

from .config import parse_args
from .distributed import teardown
from .errors import UserError
from .waits import WaitError, exit_now, is_comm_error, where


def close_bars() -> None:
    """Close every open tqdm bar (each finishes its line), so nothing is redrawn after our message."""
    for bar in list(getattr(tqdm, "_instances", [])):
        bar.close()


def report_error(msg: str) -> None:
    """Print `error: msg` on stderr as the last line the user sees (every open progress bar closed first)."""
    close_bars()
    sys.stdout.flush()
    print(f"error: {msg}", file=sys.stderr, flush=True)


def run_script(main: Callable[[dict[str, Any]], Any], default_config: str, description: str = "") -> None:
    try:
        cfg = parse_args(default_config, description=description)
        main(cfg)
    except UserError as e:
        report_error(str(e))
        teardown()
        sys.exit(2)
    except Exception as e:
        if not isinstance(e, WaitError) and not is_comm_error(e):
            raise
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        close_bars()
        sys.stdout.flush()
        sys.stderr.flush()
        exit_now("error: " + (str(e) if isinstance(e, WaitError) else f"{where('a collective')} failed ({first})"))
    teardown()

"""What every top-level script does: parse `--config` + overrides, run, report UserErrors in one line."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from .config import parse_args
from .distributed import teardown
from .errors import UserError


def run_script(main: Callable[[dict[str, Any]], Any], default_config: str, description: str = "") -> None:
    try:
        cfg = parse_args(default_config, description=description)
        main(cfg)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        teardown()
        sys.exit(2)
    teardown()

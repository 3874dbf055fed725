"""How commands report bad input: one line that names what is wrong (the file, row and field), exit status 2; the
traceback only on request (``samtok-rl --debug COMMAND ...`` or ``SAMTOK_RL_DEBUG=1``)."""

from __future__ import annotations

import os
import sys

DEBUG_ENV = "SAMTOK_RL_DEBUG"


def debug() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def bad_input(prefix: str, error: BaseException) -> int:
    """Call inside the ``except`` block: print ``prefix: error`` and return 2, or re-raise it under ``--debug``."""
    if debug():
        raise error
    print(f"{prefix}: {error}", file=sys.stderr)
    return 2

"""What the command line says when a run cannot go on because of what the user gave it.

A bad value is rejected by lit-mae's own code with a message that names the field and the value
(`MAEConfig.mask_ratio must be in [0, 1), got 1.0`), but jsonargparse and Lightning wrap it in
their own errors, so that it would end a 100-line traceback. `user_error` finds it again in the
exception chain; the command prints it as its last line and exits with status 2. Errors raised
elsewhere (bugs, or torch's own) keep their whole traceback, and `LIT_MAE_TRACEBACK=1` shows it
for lit-mae's too (for bug reports).
"""

from __future__ import annotations

import os
import sys
from types import TracebackType

TRACEBACK_ENV = "LIT_MAE_TRACEBACK"
# what lit-mae raises for bad input (files, values) and for an optional extra that is not installed
USER_ERRORS = (ValueError, TypeError, OSError, ImportError)


def _raised_here(tb: TracebackType | None) -> bool:
    """Whether the innermost frame of a traceback is lit-mae's own code."""
    last = None
    while tb is not None:
        last, tb = tb, tb.tb_next
    return last is not None and str(last.tb_frame.f_globals.get("__name__", "")).startswith("lit_mae")


def user_error(error: BaseException) -> BaseException | None:
    """The innermost exception of `error`'s chain that lit-mae itself raised for bad input, or None.
    One that lit-mae raised `from` another says what that one meant (e.g. which extra to install for
    a failed import): the search stops there."""
    found, seen, current = None, set(), error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, USER_ERRORS) and _raised_here(current.__traceback__):
            found = current
            if current.__cause__ is not None:
                break
        current = current.__cause__ or current.__context__
    return found


def exit_on_user_error(error: BaseException, prog: str = "lit-mae") -> None:
    """Print lit-mae's own message of `error` and exit 2; return (so that the caller re-raises)
    when there is none, or when `LIT_MAE_TRACEBACK` is set."""
    own = user_error(error)
    if own is None or os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
        return
    sys.stderr.write(f"{prog}: error: {own}\n({TRACEBACK_ENV}=1 shows the full traceback)\n")
    sys.exit(2)

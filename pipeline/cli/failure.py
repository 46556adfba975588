"""How the command line fails: one line for an unexpected exception, warnings held back.

A library warning (NumPy's ``overflow encountered``, say) printed before sensorlab's own
error line would make two lines for one problem; warnings are held while a command runs,
shown afterwards when it succeeds, and folded into the error line when it fails.
"""

from __future__ import annotations

import argparse
import contextlib
import warnings
from collections.abc import Iterator, Sequence

__all__ = ["after_warning", "held_warnings", "replay", "unexpected"]

_INPUT_ARGS = ("config", "sweep", "source", "onnx")  # each command's input argument
_MAX_CHARS = 300


@contextlib.contextmanager
def held_warnings(caught: list[warnings.WarningMessage]) -> Iterator[None]:
    """Collect every warning raised inside into ``caught`` instead of printing it."""
    with warnings.catch_warnings(record=True) as recorded:  # the filters stay as they are
        try:
            yield
        finally:
            caught.extend(recorded)


def replay(caught: Sequence[warnings.WarningMessage]) -> None:
    """Show held warnings the way Python would have (after a successful command)."""
    for w in caught:
        warnings.showwarning(w.message, w.category, w.filename, w.lineno)


def after_warning(caught: Sequence[warnings.WarningMessage]) -> str:
    """``" (after a warning: ...)"`` for the first held warning, else ``""``."""
    if not caught:
        return ""
    text = " ".join(str(caught[0].message).split())[:120]
    return f" (after a warning: {text})"


def unexpected(exc: BaseException, args: argparse.Namespace | None, argv: Sequence[str]) -> str:
    """One line for an exception sensorlab did not foresee: command, input, what, --debug hint."""
    command = getattr(args, "command", None) or next(
        (a for a in argv if not a.startswith("-")), "sensorlab"
    )
    source = next((getattr(args, k) for k in _INPUT_ARGS if getattr(args, k, None)), None)
    where = f"sensorlab {command}" + (f" {source}" if source else "")
    if isinstance(exc, RecursionError):
        what = "the input is nested too deeply to process"
    elif isinstance(exc, MemoryError):
        what = f"out of memory ({_first_line(exc) or 'MemoryError'})"
    else:
        what = f"{type(exc).__name__}: {_first_line(exc)}"
    line = f"{where}: unexpected failure: {what}"
    if len(line) > _MAX_CHARS:
        line = line[: _MAX_CHARS - 3] + "..."
    return f"{line}; this is a bug or an unchecked input: rerun with --debug for the traceback"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return " ".join(text.splitlines()[0].split()) if text else ""

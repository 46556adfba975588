"""User-facing errors: one line naming the file, the key path and the problem; exit status 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path

EXIT_USER_ERROR = 2


class UserError(Exception):
    """Bad input from the user: reported as ``file: key: message`` with exit status 2.

    Parameters
    ----------
    message : what is wrong, in one line.
    file : the file at fault, if any.
    key : the dotted key path inside the file, e.g. ``sensor[3].adc.bits``.
    """

    def __init__(self, message: str, *, file: str | Path | None = None, key: str | None = None):
        super().__init__(message)
        self.message = message
        self.file = None if file is None else str(file)
        self.key = key

    def located(
        self, *, file: str | Path | None = None, key_prefix: str | None = None
    ) -> UserError:
        """A copy with the file filled in (if unset) and ``key_prefix`` put before the key."""
        key = self.key
        if key_prefix:
            key = f"{key_prefix}.{key}" if key else key_prefix
        return type(self)(self.message, file=self.file or file, key=key)

    def __str__(self) -> str:
        parts = [p for p in (self.file, self.key) if p]
        line = ": ".join([*parts, self.message])
        return " ".join(line.split())  # always one line


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for the closest choice, else the choices when few."""
    word = str(word)
    choices = sorted({str(c) for c in choices})
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if close:
        return f" (did you mean {close[0]!r}?)"
    if choices and len(choices) <= 12:
        return f" (choose from {', '.join(choices)})"
    return ""

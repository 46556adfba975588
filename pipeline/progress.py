"""Progress on stderr that works on a terminal and in a log file.

On a terminal, a tqdm bar. When stderr is not a terminal (output redirected to a log,
a CI job, a batch scheduler), a bar's carriage returns would make one unreadable line,
so instead one plain line is written each time another ``every_pct`` % of the work is
done (or after every unit, with ``every_pct=0``: a sweep's cells), with the elapsed and
the remaining time::

    run: 30 % (300/1000 img), 12 s elapsed, about 28 s left

The remaining time is ``elapsed × (total − done) / (done − initial)``: the rate of the
work done by this process, units finished earlier (a resumed sweep's cells) excluded.
Used by ``run``, ``sweep`` and ``train`` (:func:`progress`).
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

__all__ = ["LOG_EVERY_PCT", "LogProgress", "format_duration", "progress"]

LOG_EVERY_PCT = 10.0  # a log line per this many percent of the work


def progress(
    total: int | None,
    *,
    desc: str,
    unit: str,
    show: bool = True,
    initial: int = 0,
    every_pct: float = LOG_EVERY_PCT,
    stream: TextIO | None = None,
) -> Any:
    """A progress reporter over ``total`` units (``update(n)``, ``write(line)``, ``close()``).

    Parameters
    ----------
    total : units of work (None when unknown: a log line per ``update`` then).
    desc, unit : what is counted (``"run"``, ``"img"``).
    show : False gives a reporter that prints nothing.
    initial : units already done before this process started (a resumed sweep).
    every_pct : in a log, a line each time this many more percent are done; 0 for a line
        after every unit.
    stream : where to write (default stderr); a terminal gets a tqdm bar.
    """
    stream = sys.stderr if stream is None else stream
    if show and _is_terminal(stream):
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, unit=unit, desc=desc, leave=False, file=stream)
    return LogProgress(
        total,
        desc=desc,
        unit=unit,
        show=show,
        initial=initial,
        every_pct=every_pct,
        stream=stream,
    )


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class LogProgress:
    """Progress as plain lines for a log (see the module docstring); tqdm's calls that
    matter here (``update``, ``write``, ``close``, ``set_description``, ``set_postfix``)."""

    def __init__(
        self,
        total: int | None,
        *,
        desc: str,
        unit: str,
        show: bool,
        initial: int,
        every_pct: float,
        stream: TextIO,
        clock: Any = time.monotonic,
    ) -> None:
        self.total, self.desc, self.unit, self.show = total, desc, unit, show
        self.initial = self.done = initial
        self.every_pct = every_pct
        self.stream = stream
        self.clock = clock
        self.t0 = clock()
        self.next_pct = self._next_mark(self._pct())
        self.postfix = ""

    def update(self, n: int = 1) -> None:
        """``n`` more units done; a line when another ``every_pct`` % is reached."""
        self.done += n
        pct = self._pct()
        if pct is None or pct >= self.next_pct or self.done == self.total:
            self.next_pct = self._next_mark(pct)
            self.write(self.line())

    def line(self) -> str:
        """``desc: 30 % (300/1000 img), 12 s elapsed, about 28 s left``."""
        elapsed = self.clock() - self.t0
        if self.total is None:
            return f"{self.desc}: {self.done} {self.unit}, {format_duration(elapsed)} elapsed"
        pct = self._pct() or 0.0
        text = (
            f"{self.desc}: {pct:.0f} % ({self.done}/{self.total} {self.unit}), "
            f"{format_duration(elapsed)} elapsed"
        )
        rate_done = self.done - self.initial
        if self.done < self.total and rate_done > 0:
            left = elapsed * (self.total - self.done) / rate_done
            text += f", about {format_duration(left)} left"
        return text + (f" ({self.postfix})" if self.postfix else "")

    def write(self, line: str, file: TextIO | None = None) -> None:
        if self.show:
            print(line, file=file or self.stream, flush=True)

    def set_description(self, desc: str, refresh: bool = True) -> None:
        self.desc = desc

    def set_postfix(self, refresh: bool = True, **values: Any) -> None:
        self.postfix = ", ".join(f"{k} {v}" for k, v in values.items())

    def close(self) -> None:
        pass

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _pct(self) -> float | None:
        if not self.total:
            return None
        return 100.0 * self.done / self.total

    def _next_mark(self, pct: float | None) -> float:
        """The next percentage that earns a line: the next multiple of ``every_pct``."""
        if pct is None or self.every_pct <= 0:
            return 0.0
        return (pct // self.every_pct + 1) * self.every_pct


def format_duration(seconds: float) -> str:
    """``"42 s"``, ``"3 min 05 s"``, ``"2 h 04 min"``."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"

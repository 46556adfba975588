"""Starting tables for the search: the fixed curves and the fits the adc module makes.

Every table here is a list of decision thresholds as fractions of the full well, for a
table ADC whose full scale is the full well (:mod:`pipeline.design.parameterise`).

- ``linear``, ``log``, ``sqrt``: the thresholds at which the fixed curve's codes change,
  so the table quantises exactly as the fixed curve with its own gain does
  (:func:`curve_thresholds`);
- ``equal_probability`` and ``lloyd_max``: fitted to the magnitudes of the validation
  images' signals by :func:`sensors.adc.equal_probability_thresholds` and
  :func:`sensors.adc.lloyd_max` (Lloyd 1982, Max 1960) — reused, not rewritten.

The table is odd around the black level (:func:`sensors.curves.quantize`), so fitting to
``|signal|`` fits the codes a non-negative signal reaches.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from sensors.adc import equal_probability_thresholds, lloyd_max
from sensors.curves import expand

__all__ = ["FITTED", "curve_thresholds", "fitted_thresholds", "initial_tables"]

FITTED = ("equal_probability", "lloyd_max")


def curve_thresholds(transfer: Mapping[str, Any], full_well_e: float) -> np.ndarray:
    """Where a fixed curve's codes above the black level begin, as fractions of full well.

    With ``a = 2**N · f(s / FS) + b + 1/2`` (:func:`sensors.curves.quantize`), code
    ``b + j`` begins where ``f(s / FS) = (j - 1/2) / 2**N``, so ::

        t_j = FS · f⁻¹((j - 1/2) / 2**N) / full_well,   j = 1 .. 2**N - 1 - b

    Parameters
    ----------
    transfer : the adc stage's ``adc_transfer`` attribute (bits, full_scale in electrons,
        curve linear/log/sqrt, black_level, log_compression).
    full_well_e : the full well, electrons.

    Returns
    -------
    ``2**N - 1 - b`` strictly increasing thresholds.
    """
    bits, black = int(transfer["bits"]), int(transfer["black_level"])
    j = np.arange(1, (1 << bits) - black, dtype=np.float64)
    y = (j - 0.5) / (1 << bits)
    curve = transfer["curve"]
    u = expand(y, curve, log_compression=transfer["log_compression"]) if curve != "linear" else y
    return u * (float(transfer["full_scale"]) / float(full_well_e))


def fitted_thresholds(kind: str, samples: ArrayLike, bits: int, n_thresholds: int) -> np.ndarray:
    """``n_thresholds`` thresholds fitted to ``samples`` (fractions of full well).

    ``kind`` is ``equal_probability`` (every code equally likely) or ``lloyd_max``
    (minimum mean squared error). Raises ValueError when the samples cannot define that
    many codes (too few distinct values, coinciding quantiles).
    """
    x = np.abs(np.asarray(samples, dtype=np.float64).ravel())
    if kind == "equal_probability":
        return equal_probability_thresholds(x, bits, n_cells=n_thresholds + 1)
    if kind == "lloyd_max":
        return lloyd_max(x, bits, n_cells=n_thresholds + 1)[0]
    raise ValueError(f"unknown fitted table {kind!r}; choose from {', '.join(FITTED)}")


def initial_tables(
    names: Sequence[str],
    curves: Mapping[str, Mapping[str, Any]],
    samples: ArrayLike,
    *,
    bits: int,
    n_thresholds: int,
    full_well_e: float,
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The starting tables named in ``names``.

    Parameters
    ----------
    names : initialisers (linear, log, sqrt, equal_probability, lloyd_max).
    curves : each fixed curve's ``adc_transfer`` (for linear, log, sqrt).
    samples : validation signals in fractions of full well (for the fits).
    bits, n_thresholds : the resolution and the table's length.
    full_well_e : the full well, electrons.

    Returns
    -------
    (tables, skipped) : name → thresholds, and name → why it could not be made.
    """
    tables: dict[str, np.ndarray] = {}
    skipped: dict[str, str] = {}
    for name in names:
        try:
            if name in FITTED:
                tables[name] = fitted_thresholds(name, samples, bits, n_thresholds)
            else:
                tables[name] = curve_thresholds(curves[name], full_well_e)
        except ValueError as exc:
            skipped[name] = str(exc)
    return tables, skipped

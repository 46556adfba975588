"""ADC transfer curves and their inverses: the leaf module the adc and raw stages share.

- :func:`compand` / :func:`expand`: the companding curves (linear, μ-law log, square
  root) and their inverses.
- :func:`quantize` maps a signal in ``[0, full_scale]`` to codes ``0 .. 2**bits - 1``
  through a curve (or a table of decision thresholds); :func:`dequantize` gives the
  representative signal of each code.

The transfer equation (linear curve, black level ``b`` in codes)::

    code = clip(floor(2**bits * signal / full_scale + b), 0, 2**bits - 1)      # floor
    code = clip(floor(2**bits * signal / full_scale + b + 1/2), 0, 2**bits - 1)  # nearest

Companding curves replace ``signal / full_scale`` by ``f(signal / full_scale)``, where
``f`` maps ``[0, 1]`` onto ``[0, 1]`` and is extended to negative inputs as an odd
function (so that read noise below the black level keeps its codes, as in μ-law).

References
----------
EMVA Standard 1288, Release 4.0 Linear (2021), section 2 (the linear camera model: a
system gain K in DN/e⁻ and a quantisation noise of 1/12 DN²).
ITU-T G.711 (1988): μ-law companding, ``f(u) = ln(1 + μu) / ln(1 + μ)``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "CURVES",
    "MAX_BITS",
    "ROUNDINGS",
    "check_bits",
    "check_thresholds",
    "compand",
    "dequantize",
    "dtype_for_bits",
    "expand",
    "quantize",
]

CURVES = ("linear", "log", "sqrt", "table")
ROUNDINGS = ("floor", "nearest")
MAX_BITS = 24

Curve = Literal["linear", "log", "sqrt", "table"]
Rounding = Literal["floor", "nearest"]


# -- small helpers ---------------------------------------------------------------------
def dtype_for_bits(bits: int) -> np.dtype:
    """The smallest unsigned integer dtype that holds ``bits``-bit codes (uint8/16/32)."""
    bits = check_bits(bits)
    if bits <= 8:
        return np.dtype(np.uint8)
    if bits <= 16:
        return np.dtype(np.uint16)
    return np.dtype(np.uint32)


def check_bits(bits: int) -> int:
    """``bits`` as an int, or ValueError unless it is an integer in 1..MAX_BITS."""
    if isinstance(bits, bool) or int(bits) != bits or not 1 <= int(bits) <= MAX_BITS:
        raise ValueError(f"bits must be an integer between 1 and {MAX_BITS}, got {bits!r}")
    return int(bits)


def _check_choice(value: str, choices: tuple[str, ...], what: str) -> str:
    if value not in choices:
        raise ValueError(f"{what} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _check_black_level(black_level: int, bits: int) -> int:
    if int(black_level) != black_level or not 0 <= black_level <= (1 << bits) - 1:
        raise ValueError(
            f"black_level must be an integer code between 0 and {(1 << bits) - 1}, "
            f"got {black_level!r}"
        )
    return int(black_level)


def check_thresholds(thresholds: ArrayLike | None, bits: int) -> np.ndarray:
    """Decision thresholds as float64, or ValueError unless finite, strictly increasing
    and at most ``2**bits - 1`` of them."""
    if thresholds is None:
        raise ValueError("curve 'table' needs thresholds")
    t = np.asarray(thresholds, dtype=np.float64)
    if t.ndim != 1 or t.size == 0:
        raise ValueError("thresholds must be a non-empty 1-D list of numbers")
    if t.size > (1 << bits) - 1:
        raise ValueError(
            f"a {bits}-bit ADC has {(1 << bits) - 1} decision thresholds at most, got {t.size}"
        )
    if not np.all(np.isfinite(t)):
        raise ValueError("thresholds must be finite numbers")
    if np.any(np.diff(t) <= 0):
        raise ValueError("thresholds must be strictly increasing")
    return t


# -- companding curves -----------------------------------------------------------------
def compand(u: ArrayLike, curve: str = "linear", *, log_compression: float = 255.0) -> np.ndarray:
    """The companding curve ``f``: maps the fraction of full scale ``u`` onto ``[0, 1]``.

    Parameters
    ----------
    u : signal as a fraction of full scale (1 is full scale); any real values.
    curve : ``"linear"`` (``f(u) = u``), ``"sqrt"`` (``f(u) = sqrt(u)``) or ``"log"``
        (μ-law, ``f(u) = ln(1 + μu) / ln(1 + μ)``). Each is extended to ``u < 0`` as an
        odd function, ``f(-u) = -f(u)``, so that ``f`` is monotone on all reals.
    log_compression : μ of the logarithmic curve (255 in ITU-T G.711); larger compresses
        bright signals more.

    Returns
    -------
    ``f(u)`` as float64; ``f(0) = 0`` and ``f(1) = 1`` for every curve.

    References
    ----------
    ITU-T G.711 (1988), μ-law.
    """
    _check_choice(curve, ("linear", "log", "sqrt"), "curve")
    u = np.asarray(u, dtype=np.float64)
    if curve == "linear":
        return u.copy()
    if curve == "sqrt":
        return np.copysign(np.sqrt(np.abs(u)), u)
    mu = _check_mu(log_compression)
    return np.copysign(np.log1p(mu * np.abs(u)) / np.log1p(mu), u)


def expand(y: ArrayLike, curve: str = "linear", *, log_compression: float = 255.0) -> np.ndarray:
    """The inverse of :func:`compand`: the fraction of full scale ``u`` with ``f(u) = y``."""
    _check_choice(curve, ("linear", "log", "sqrt"), "curve")
    y = np.asarray(y, dtype=np.float64)
    if curve == "linear":
        return y.copy()
    if curve == "sqrt":
        return np.copysign(y * y, y)
    mu = _check_mu(log_compression)
    return np.copysign(np.expm1(np.abs(y) * np.log1p(mu)) / mu, y)


def _check_mu(mu: float) -> float:
    if not (np.isfinite(mu) and mu > 0):
        raise ValueError(f"log_compression must be a positive number, got {mu!r}")
    return float(mu)


# -- quantisation ----------------------------------------------------------------------
def quantize(
    signal: ArrayLike,
    bits: int,
    full_scale: float = 1.0,
    curve: str = "linear",
    rounding: str = "floor",
    *,
    black_level: int = 0,
    log_compression: float = 255.0,
    thresholds: ArrayLike | None = None,
) -> np.ndarray:
    """Quantise a signal to ``bits``-bit codes, as an ADC does.

    ``code = clip(floor(2**bits * f(signal / full_scale) + black_level [+ 1/2]),
    0, 2**bits - 1)``, with ``+ 1/2`` for ``rounding="nearest"``. For the linear curve
    the code step (LSB) is ``full_scale / 2**bits``: a 3-bit ADC with a 5 V reference
    gives codes 0..7 with an LSB of 0.625 V, and ``full_scale`` itself maps to the
    first code past the top, so it clips to ``2**bits - 1``.

    Parameters
    ----------
    signal : the input (volts, electrons, or any unit of ``full_scale``); any shape.
    bits : resolution, 1 to 24.
    full_scale : the signal that spans all ``2**bits`` codes, in the unit of ``signal``.
    curve : ``"linear"``, ``"log"``, ``"sqrt"`` (see :func:`compand`), or ``"table"``:
        ``code = black_level + (number of thresholds <= signal / full_scale)``.
    rounding : ``"floor"`` (what an ADC's comparators do: a code covers
        ``[k, k + 1)`` LSB) or ``"nearest"`` (a code covers ``[k - 1/2, k + 1/2)``).
        The table curve's thresholds are the decision levels themselves, so it takes
        only ``"floor"``.
    black_level : code of a zero signal (pedestal), ``0 <= black_level < 2**bits``.
    log_compression : μ of the ``"log"`` curve.
    thresholds : for ``curve="table"``: strictly increasing decision thresholds as
        fractions of full scale, at most ``2**bits - 1`` of them (see :func:`lloyd_max`).

    Returns
    -------
    Codes in ``[0, 2**bits - 1]``, same shape as ``signal``, in the smallest unsigned
    dtype holding ``bits`` bits (:func:`dtype_for_bits`).

    Raises
    ------
    ValueError : bad parameters, or NaN in ``signal`` (``±inf`` clips to the ends).

    References
    ----------
    EMVA 1288 Release 4.0 Linear, section 2.4 (quantisation noise, 1/12 DN²).
    """
    bits = check_bits(bits)
    _check_choice(curve, CURVES, "curve")
    _check_choice(rounding, ROUNDINGS, "rounding")
    black_level = _check_black_level(black_level, bits)
    if not (np.isfinite(full_scale) and full_scale > 0):
        raise ValueError(f"full_scale must be a positive number, got {full_scale!r}")
    top = (1 << bits) - 1
    shape = np.shape(signal)
    u = np.array(signal, dtype=np.float64, ndmin=1)  # a copy, worked on in place
    u /= full_scale
    if np.isnan(u).any():
        raise ValueError("signal contains NaN")
    if curve == "table":
        if rounding != "floor":
            raise ValueError(
                "curve 'table' takes rounding 'floor' (thresholds are decision levels)"
            )
        t = check_thresholds(thresholds, bits)
        y = np.searchsorted(t, u, side="right") + black_level
        return np.minimum(y, top).astype(dtype_for_bits(bits)).reshape(shape)
    y = compand(u, curve, log_compression=log_compression) if curve != "linear" else u
    y *= 1 << bits  # a power of two: exact
    y += black_level + (0.5 if rounding == "nearest" else 0.0)
    np.floor(y, out=y)
    np.clip(y, 0, top, out=y)
    return y.astype(dtype_for_bits(bits)).reshape(shape)


def dequantize(
    codes: ArrayLike,
    bits: int,
    full_scale: float = 1.0,
    curve: str = "linear",
    rounding: str = "floor",
    *,
    black_level: int = 0,
    log_compression: float = 255.0,
    thresholds: ArrayLike | None = None,
    levels: ArrayLike | None = None,
) -> np.ndarray:
    """The representative signal of each code: the inverse of :func:`quantize`.

    For the linear, log and sqrt curves the representative value is the centre of the
    code's interval in the companded domain, ``f⁻¹((k + 1/2) / 2**bits)`` for floor
    rounding and ``f⁻¹(k / 2**bits)`` for nearest, with ``k = code - black_level``; so
    ``quantize(dequantize(c)) == c`` and ``dequantize(quantize(s))`` is within half a
    code of ``s`` (measured in the companded domain). For the table curve it is
    ``levels[k]`` when given (e.g. the Lloyd–Max reconstruction levels), otherwise the
    midpoint of the code's decision interval, the outermost intervals being closed at 0
    and at full scale.

    Parameters
    ----------
    codes : integer codes (any shape).
    bits, full_scale, curve, rounding, black_level, log_compression, thresholds : as
        given to :func:`quantize`.
    levels : for ``curve="table"``: ``len(thresholds) + 1`` reconstruction levels as
        fractions of full scale (optional).

    Returns
    -------
    float64 signal values in the unit of ``full_scale``.
    """
    bits = check_bits(bits)
    _check_choice(curve, CURVES, "curve")
    _check_choice(rounding, ROUNDINGS, "rounding")
    black_level = _check_black_level(black_level, bits)
    k = np.asarray(codes, dtype=np.float64) - black_level
    if curve == "table":
        t = check_thresholds(thresholds, bits)
        if levels is None:
            edges = np.concatenate([[min(0.0, t[0])], t, [max(1.0, t[-1])]])
            rep = (edges[:-1] + edges[1:]) / 2
        else:
            rep = np.asarray(levels, dtype=np.float64)
            if rep.shape != (t.size + 1,):
                raise ValueError(f"levels must have len(thresholds) + 1 = {t.size + 1} values")
        cell = np.clip(k, 0, t.size).astype(np.intp)
        return rep[cell] * full_scale
    y = (k + (0.5 if rounding == "floor" else 0.0)) / (1 << bits)
    u = expand(y, curve, log_compression=log_compression) if curve != "linear" else y
    return u * full_scale

"""ADC transfer curves and their inverses: the leaf module the adc and raw stages share.

- :func:`compand` / :func:`expand`: the companding curves (linear, μ-law log, square
  root) and their inverses.
- :func:`quantize` maps a signal in ``[0, full_scale]`` to codes ``0 .. 2**bits - 1``
  through a curve (or a table of decision thresholds); :func:`dequantize` gives the
  representative signal of each code.

- :func:`linearize_codes`: codes to float32 linear signal above black, the one
  linearisation of the raw stage and of the ONNX raw front end's lookup table.
- :func:`transition_levels`: the decision levels of an ADC with given code widths
  (differential non-linearity, missing codes); :func:`table_transitions`: a table
  curve's nominal decision level of every code transition; :func:`curve_thresholds`:
  the table that reproduces a linear, log or sqrt ADC.

A designed (searched) table ADC is a config's adc stage such as::

    {"stage": "adc", "bits": N, "curve": "table", "thresholds": t.tolist(),
     "system_gain_dn_per_e": K, "noise_lsb": 0.5, "dnl_rms_lsb": 0.3}

with ``t`` strictly increasing fractions of full scale, ``2**N - 1 - black_level`` of
them to use every code above black (:func:`curve_thresholds` gives the tables of the
linear, log and sqrt ADCs); its noise, offset and DNL are those of the linear ADC with
the same parameters. Fix the gain when comparing tables (``system_gain_dn_per_e``, or
``conversion_gain_uv_per_e`` with ``full_scale_v``): by default the adc stage maps the
full well to a table's last threshold, so the table's own scale would set full scale.

The transfer equation (linear curve, black level ``b`` in codes, offset ``o`` in LSB)::

    code = clip(floor(2**bits * signal / full_scale + b + 1/2 + o), 0, 2**bits - 1)

The ``1/2`` puts the pedestal at the centre of code ``b`` (IEEE 1241's ideal ADC, and
what a sensor's optical-black clamp converges to), so a dark pixel's mean code is ``b``
and :func:`dequantize` maps ``b`` back to exactly 0. Companding curves replace
``signal / full_scale`` by ``f(signal / full_scale)``, where ``f`` maps ``[0, 1]`` onto
``[0, 1]`` and is extended to negative inputs as an odd function (so that read noise
below the black level keeps its codes, as in μ-law).

References
----------
EMVA Standard 1288, Release 4.0 Linear (2021), section 2 (the linear camera model: a
system gain K in DN/e⁻ and a quantisation noise of 1/12 DN²).
ITU-T G.711 (1988): μ-law companding, ``f(u) = ln(1 + μu) / ln(1 + μ)``.
IEEE Std 1241-2010, Standard for terminology and test methods for analog-to-digital
converters.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "CURVES",
    "MAX_BITS",
    "ROUNDINGS",
    "check_bits",
    "check_thresholds",
    "compand",
    "curve_thresholds",
    "dequantize",
    "dtype_for_bits",
    "expand",
    "linearize_codes",
    "quantize",
    "table_transitions",
    "transition_levels",
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
    """Decision thresholds as float64, or ValueError unless finite, positive, strictly
    increasing and at most ``2**bits - 1`` of them."""
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
    if t[0] <= 0:
        raise ValueError(
            f"thresholds must be above 0 (a zero signal sits at the centre of the black "
            f"code, which spans (-t_0, t_0)), got {t[0]}"
        )
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
def transition_levels(code_widths: ArrayLike | None, bits: int) -> np.ndarray:
    """The comparators' decision levels ``T_1 .. T_top`` (LSB) for given code widths (DNL).

    An N-bit ADC has ``top = 2**N - 1`` transitions; code ``k`` covers ``[T_k, T_k+1)``
    of the comparators' input, codes 0 and ``top`` are open-ended, and the
    ``2**N - 2`` inner codes ``k = 1 .. top - 1`` have widths ``w_k`` in LSB. Widths
    below 0 count as 0 (a missing code), and all are rescaled so the first and last
    transitions stay where an ideal ADC has them (full scale is kept)::

        w'_k = max(w_k, 0) · (top - 1) / Σ_j max(w_j, 0)
        T_1 = 1,   T_k+1 = T_k + w'_k          (so T_top = top)

    Then ``DNL_k = w'_k - 1`` and the integral non-linearity at transition ``k`` is
    ``INL_k = T_k - k = Σ_{j<k} DNL_j``. ``None`` (or all widths equal) gives the ideal
    ``T_k = k``.

    Parameters
    ----------
    code_widths : ``2**bits - 2`` widths in LSB, or None for the ideal ADC.
    bits : resolution, 1 to 24.

    Returns
    -------
    float64 transitions, non-decreasing, ``2**bits - 1`` of them.

    References
    ----------
    IEEE Std 1241-2010 (ADC terminology and test methods), sections 4.1.1 (transition
    levels) and 9.4 (DNL, INL and missing codes).
    """
    bits = check_bits(bits)
    top = (1 << bits) - 1
    if code_widths is None:
        return np.arange(1, top + 1, dtype=np.float64)
    w = np.asarray(code_widths, dtype=np.float64)
    if w.shape != (top - 1,):
        raise ValueError(
            f"a {bits}-bit ADC has {top - 1} inner codes (1 .. {top - 1}); got {w.size} code widths"
        )
    if not np.all(np.isfinite(w)):
        raise ValueError("code widths must be finite numbers")
    w = np.maximum(w, 0.0)
    total = w.sum()
    if top > 1 and not total > 0:
        raise ValueError("every inner code is missing (all code widths <= 0)")
    steps = w * ((top - 1) / total) if top > 1 else w
    return np.concatenate([[1.0], 1.0 + np.cumsum(steps)])


def table_transitions(thresholds: ArrayLike, bits: int, black_level: int = 0) -> np.ndarray:
    """The nominal decision level of every code transition of a table ADC.

    Transition ``c`` (``c = 1 .. 2**bits - 1``) is the input above which the code is at
    least ``c``. With the table's odd extension (see :func:`quantize`) it sits at
    ``t_(c - black_level - 1)`` above the black code and at ``-t_(black_level - c)`` at or
    below it; transitions the table does not reach are ``+inf`` (codes above
    ``black_level + len(thresholds)``) or ``-inf`` (codes below
    ``black_level - len(thresholds)``, reached by every negative input).

    Parameters
    ----------
    thresholds : the table's decision thresholds, fractions of full scale
        (:func:`check_thresholds`).
    bits : resolution, 1 to 24.
    black_level : the code of a zero signal.

    Returns
    -------
    float64 levels as fractions of full scale, non-decreasing, ``2**bits - 1`` of them.
    """
    bits = check_bits(bits)
    t = check_thresholds(thresholds, bits)
    black_level = _check_black_level(black_level, bits)
    c = np.arange(1, 1 << bits)
    above = c - black_level - 1  # threshold index of a transition above the black code
    below = black_level - c  # and of one at or below it (mirrored)
    levels = np.where(above >= 0, np.inf, -np.inf)
    up = (above >= 0) & (above < t.size)
    down = (below >= 0) & (below < t.size)
    levels[up] = t[above[up]]
    levels[down] = -t[below[down]]
    return levels


def curve_thresholds(
    bits: int, curve: str = "linear", *, black_level: int = 0, log_compression: float = 255.0
) -> np.ndarray:
    """The table that gives a linear, log or sqrt ADC's codes: its decision thresholds.

    The companding ADC moves from code ``black_level + j`` to ``black_level + j + 1`` where
    ``2**bits · f(u) + black_level + 1/2`` reaches ``black_level + j + 1``, so::

        t_j = f⁻¹((j + 1/2) / 2**bits),     j = 0 .. 2**bits - 2 - black_level

    one threshold per code above the black level (a table that uses every code). With
    ``curve="table"`` and these thresholds, :func:`quantize` gives the curve's codes (up
    to round-off at a threshold), below the black level too (both are odd extensions), so
    they are a search's starting tables for the fixed curves.

    Parameters
    ----------
    bits : resolution, 1 to 24.
    curve : ``"linear"``, ``"log"`` or ``"sqrt"`` (:func:`compand`).
    black_level : the code of a zero signal; ``2**bits - 1 - black_level`` thresholds.
    log_compression : μ of the log curve.

    Returns
    -------
    float64 thresholds as fractions of full scale, strictly increasing.
    """
    bits = check_bits(bits)
    black_level = _check_black_level(black_level, bits)
    n_thresholds = (1 << bits) - 1 - black_level
    if n_thresholds < 1:
        raise ValueError(f"black_level {black_level} leaves no code above it at {bits} bits")
    y = (np.arange(n_thresholds) + 0.5) / (1 << bits)
    return expand(y, curve, log_compression=log_compression)


def _quantize_table_nonideal(
    u: np.ndarray,
    bits: int,
    thresholds: np.ndarray,
    black_level: int,
    offset_lsb: ArrayLike,
    transitions: ArrayLike | None,
) -> np.ndarray:
    """Table-curve codes with an input-referred offset/noise and comparator errors (INL).

    ``u`` is the signal as a fraction of full scale; levels are worked in linear LSB
    (``full_scale / 2**bits``; a power of two, so exact)::

        a   = 2**bits · u + offset_lsb
        L_c = 2**bits · τ_c + (T_c - c)       (τ: :func:`table_transitions`)
        code = #{c : L_c <= a}

    ``T_c - c`` is the integral non-linearity of transition ``c`` (0 without
    ``transitions``). Comparators that cross give a missing code: the count is that of
    the comparators that fire (a thermometer-code ones counter).
    """
    top = (1 << bits) - 1
    n_codes = float(1 << bits)
    levels = table_transitions(thresholds, bits, black_level) * n_codes
    if transitions is not None:
        t = np.asarray(transitions, dtype=np.float64)
        if t.shape != (top,) or np.any(np.diff(t) < 0):
            raise ValueError(f"transitions must be {top} non-decreasing levels in LSB")
        levels = np.sort(levels + (t - np.arange(1, top + 1)))
    a = u * n_codes
    a += np.asarray(offset_lsb, dtype=np.float64)
    return np.searchsorted(levels, a, side="right")


def quantize(
    signal: ArrayLike,
    bits: int,
    full_scale: float = 1.0,
    curve: str = "linear",
    rounding: str = "floor",
    *,
    black_level: int = 0,
    offset_lsb: ArrayLike = 0.0,
    transitions: ArrayLike | None = None,
    log_compression: float = 255.0,
    thresholds: ArrayLike | None = None,
) -> np.ndarray:
    """Quantise a signal to ``bits``-bit codes, as an ADC with a centred pedestal does.

    Linear, log and sqrt curves: the comparators see, in LSB, the analog level ::

        a = 2**bits · f(signal / full_scale) + black_level + 1/2 + offset_lsb
        code = clip(floor(a), 0, 2**bits - 1)       # ideal (transitions T_k = k)
        code = #{k : T_k <= a}                      # with given transitions (DNL)

    The ``1/2`` puts the pedestal at a code centre: a zero signal sits in the middle of
    code ``black_level``, which covers ``[-1/2, 1/2)`` LSB of signal, so a dark pixel's
    mean code is ``black_level`` whatever its noise. With ``rounding="floor"`` (an ADC's
    comparators round down) the ADC adds the ½ LSB as analog offset, with ``"nearest"``
    it is the rounding's own ½: the two conventions give the same codes. For the
    linear curve the LSB is ``full_scale / 2**bits``; a 3-bit ADC with a 5 V reference
    and no pedestal gives code ``k`` for ``[(k - ½), (k + ½)) · 0.625 V``.

    Table curve, with ``u = signal / full_scale`` and positive thresholds ``t``::

        code = clip(black_level + sign(u) · #{k : t_k <= |u|}, 0, 2**bits - 1)

    extended to negative inputs as an odd function like the companding curves, so the
    black code spans ``(-t_0, t_0)``, centred on a zero signal. Its non-idealities are
    stated in the linear LSB ``full_scale / 2**bits``, so a table ADC and a linear one
    with the same parameters suffer the same errors: ``offset_lsb`` (offset plus temporal
    noise) is input-referred, added to ``2**bits · u`` before the thresholds, and
    ``transitions`` moves the decision level of transition ``c`` (code ``c - 1`` to
    ``c``) by the linear ADC's integral non-linearity there, ``T_c - c`` LSB::

        code = #{c : 2**bits · τ_c + (T_c - c) <= 2**bits · u + offset_lsb}

    with ``τ_c`` the nominal levels of :func:`table_transitions` (``±t``). So Gaussian
    noise of ``σ`` LSB on a signal at a threshold ``t_j`` gives the upper code with
    probability ``Φ(2**bits · (u - t_j) / σ)``, and DNL widens the table's code
    ``c`` by ``DNL_c`` LSB (the ladder's, not the table's, code width).

    Parameters
    ----------
    signal : the input (volts, electrons, or any unit of ``full_scale``); any shape.
    bits : resolution, 1 to 24.
    full_scale : the signal that spans all ``2**bits`` codes, in the unit of ``signal``.
    curve : ``"linear"``, ``"log"``, ``"sqrt"`` (see :func:`compand`) or ``"table"``.
    rounding : ``"floor"`` or ``"nearest"`` (see above; the table curve's thresholds
        are decision levels, so it takes only ``"floor"``).
    black_level : the pedestal: the code at whose centre a zero signal sits,
        ``0 <= black_level < 2**bits``.
    offset_lsb : extra analog level at the comparators' input, in LSB (an ADC offset,
        or offset plus temporal noise per pixel); a number or an array broadcasting
        against ``signal``. For the table curve, input-referred in linear LSB (above).
    transitions : the ``2**bits - 1`` decision levels in LSB (:func:`transition_levels`);
        None for the ideal ADC. For the table curve, their INL ``T_c - c`` moves the
        table's levels (above).
    log_compression : μ of the ``"log"`` curve.
    thresholds : for ``curve="table"``: strictly increasing decision thresholds as
        fractions of full scale, at most ``2**bits - 1`` of them.

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
    IEEE Std 1241-2010, section 4.1.1 (an ideal ADC's code k is centred on k LSB).
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
        if transitions is not None or np.any(np.asarray(offset_lsb) != 0):
            y = _quantize_table_nonideal(u, bits, t, black_level, offset_lsb, transitions)
            return y.astype(dtype_for_bits(bits)).reshape(shape)
        steps = np.searchsorted(t, np.abs(u), side="right")
        y = np.where(u < 0, -steps, steps) + black_level
        return np.clip(y, 0, top).astype(dtype_for_bits(bits)).reshape(shape)
    y = compand(u, curve, log_compression=log_compression) if curve != "linear" else u
    y *= 1 << bits  # a power of two: exact
    y += black_level + 0.5  # the pedestal, at the centre of code black_level
    y += np.asarray(offset_lsb, dtype=np.float64)
    if transitions is None:
        np.floor(y, out=y)
        np.clip(y, 0, top, out=y)
    else:
        t = np.asarray(transitions, dtype=np.float64)
        if t.shape != (top,) or np.any(np.diff(t) < 0):
            raise ValueError(f"transitions must be {top} non-decreasing levels in LSB")
        y = np.searchsorted(t, y, side="right")
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

    Linear, log and sqrt curves: the centre of the code's interval in the companded
    domain, ``signal = full_scale · f⁻¹((code - black_level) / 2**bits)`` (either
    rounding), so ``quantize(dequantize(c)) == c``, ``dequantize(quantize(s))`` is
    within half a code of ``s`` (companded domain), and the black level dequantizes to
    exactly 0. Table curve, with ``k = code - black_level``: ``levels[|k|]`` when given
    (e.g. the Lloyd–Max reconstruction levels), otherwise 0 for the black code (its
    interval ``(-t_0, t_0)`` is centred on 0) and the midpoint of the decision interval
    ``[t_|k|-1, t_|k|)`` for the others, the top one closed at ``max(1, t_last)``; with
    the sign of ``k`` (the odd extension). Ideal transitions and no offset are assumed
    (the nominal transfer a raw converter knows).

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
            edges = np.concatenate([t, [max(1.0, t[-1])]])
            rep = np.concatenate([[0.0], (edges[:-1] + edges[1:]) / 2])
        else:
            rep = np.asarray(levels, dtype=np.float64)
            if rep.shape != (t.size + 1,):
                raise ValueError(f"levels must have len(thresholds) + 1 = {t.size + 1} values")
        cell = np.minimum(np.abs(k), t.size).astype(np.intp)
        return np.copysign(rep[cell], k) * full_scale
    y = k / (1 << bits)
    u = expand(y, curve, log_compression=log_compression) if curve != "linear" else y
    return u * full_scale


def linearize_codes(
    codes: ArrayLike, black_level_dn: float, transfer: Mapping[str, Any]
) -> np.ndarray:
    """ADC codes → float32 linear signal above the black level: the raw stage's linearisation.

    ``float32(dequantize(codes)) - float32(dequantize(black_level_dn))``, both through
    :func:`dequantize` with the ADC's ``transfer``, subtracted in float32. The raw stage
    linearises log, sqrt and table codes with it, and the ONNX raw front end's lookup
    table is it evaluated on every code ``0 .. 2**bits - 1``, so the two agree bit for bit.

    Parameters
    ----------
    codes : integer ADC codes, any shape.
    black_level_dn : the code (or level, DN) whose signal is subtracted: 0 after this.
    transfer : the keyword arguments of :func:`dequantize` (the ADC's ``adc_transfer``
        attrs: ``bits``, ``full_scale``, ``curve``, ``rounding``, ``black_level``,
        ``log_compression``, ``thresholds``).

    Returns
    -------
    float32 signal in the unit of ``transfer["full_scale"]``, same shape as ``codes``.
    """
    y = dequantize(codes, **transfer).astype(np.float32)
    y -= np.float32(dequantize(black_level_dn, **transfer))
    return y

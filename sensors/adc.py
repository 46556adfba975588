"""The analog-to-digital converter: electrons (or volts) to N-bit integer codes (DN).

The transfer curves themselves (:func:`quantize`, :func:`dequantize`, :func:`compand`,
:func:`expand`) live in :mod:`sensors.curves`, which the raw stage shares; they are
re-exported here, so ``from sensors.adc import quantize`` works. This module adds:

- :func:`lloyd_max` and :func:`equal_probability_thresholds`, which fit decision
  thresholds to sample data for the ``table`` curve, and :func:`load_thresholds`.
- :class:`ADCStage` ("adc"), which scales electrons (by the system gain) or volts (by the
  ADC's full-scale voltage), adds the black level and quantises.

References
----------
EMVA Standard 1288, Release 4.0 Linear (2021), section 2 (the linear camera model: a
system gain K in DN/e⁻ and a quantisation noise of 1/12 DN²).
S. P. Lloyd, "Least squares quantization in PCM", IEEE Trans. Inf. Theory 28 (1982) 129;
J. Max, "Quantizing for minimum distortion", IRE Trans. Inf. Theory 6 (1960) 7.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from pipeline.stage import (
    Batch,
    SignalInfo,
    Stage,
    StageError,
    StageParams,
    TileGroup,
    Unit,
    param,
)
from sensors.curves import (
    CURVES,
    MAX_BITS,
    Curve,
    Rounding,
    check_bits,
    check_thresholds,
    compand,
    dequantize,
    dtype_for_bits,
    expand,
    quantize,
    transition_levels,
)

__all__ = [
    "CURVES",
    "DNL_PATTERN_KEY",
    "ADCStage",
    "compand",
    "default_black_level",
    "dequantize",
    "dtype_for_bits",
    "equal_probability_thresholds",
    "expand",
    "lloyd_max",
    "load_thresholds",
    "quantize",
]

DNL_PATTERN_KEY = 1  # pattern_rng tag of the DNL code widths (one pattern per sensor seed)


def default_black_level(bits: int) -> int:
    """The default black level: ``2**bits // 16`` codes (64 at 10 bits, 256 at 12 bits).

    That is the pedestal common in CMOS sensors' raw output; it keeps the read noise of a
    dark pixel above code 0 instead of clipping it.
    """
    return (1 << check_bits(bits)) // 16


# -- fitting a table curve -------------------------------------------------------------
def _n_cells(bits: int, n_cells: int | None) -> int:
    """The number of quantiser cells: ``2**bits``, or fewer when given (a table read with a
    black level ``b`` has ``2**bits - b`` codes for a non-negative signal)."""
    top = 1 << check_bits(bits)
    if n_cells is None:
        return top
    if isinstance(n_cells, bool) or int(n_cells) != n_cells or not 2 <= n_cells <= top:
        raise ValueError(f"n_cells must be an integer between 2 and {top}, got {n_cells!r}")
    return int(n_cells)


def _sorted_samples(samples: ArrayLike, n_cells: int, full_scale: float) -> np.ndarray:
    x = np.sort(np.asarray(samples, dtype=np.float64).ravel()) / full_scale
    if x.size == 0 or not np.all(np.isfinite(x)):
        raise ValueError("samples must be a non-empty array of finite numbers")
    n_distinct = np.count_nonzero(np.diff(x)) + 1
    if n_distinct < n_cells:
        raise ValueError(f"{n_distinct} distinct sample values cannot define {n_cells} codes")
    return x


def equal_probability_thresholds(
    samples: ArrayLike, bits: int, *, full_scale: float = 1.0, n_cells: int | None = None
) -> np.ndarray:
    """Decision thresholds that give every code the same probability (a CDF quantiser).

    Parameters
    ----------
    samples : sample signal values (any shape, in the unit of ``full_scale``).
    bits : ADC resolution; ``2**bits - 1`` thresholds are returned (``n_cells - 1`` with n_cells).
    full_scale : the signal that the thresholds are expressed as fractions of.
    n_cells : the number of codes to fill, ``n`` (default ``2**bits``); ``n - 1``
        thresholds are returned.

    Returns
    -------
    Strictly increasing thresholds as fractions of full scale (for :func:`quantize`
    with ``curve="table"``), the ``k / n`` quantiles of the samples.
    """
    n = _n_cells(bits, n_cells)
    x = _sorted_samples(samples, n, full_scale)
    t = np.quantile(x, np.arange(1, n) / n)
    if np.any(np.diff(t) <= 0):
        raise ValueError("samples too concentrated: equal-probability thresholds coincide")
    return t


def lloyd_max(
    samples: ArrayLike,
    bits: int,
    *,
    full_scale: float = 1.0,
    max_iter: int = 500,
    tol: float = 1e-10,
    n_cells: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Fit the Lloyd–Max quantiser (minimum mean squared error) to sample data.

    Alternates the two optimality conditions until the levels move less than
    ``tol`` times the sample range: each threshold is the midpoint of its two
    neighbouring levels, each level the mean of the samples in its cell.

    Parameters
    ----------
    samples : sample signal values (any shape, in the unit of ``full_scale``).
    bits : resolution; ``2**bits`` levels and ``2**bits - 1`` thresholds.
    full_scale : the signal that the results are expressed as fractions of.
    max_iter : iteration limit.
    tol : convergence tolerance, relative to the range of the samples.
    n_cells : the number of levels ``n`` (default ``2**bits``); ``n - 1`` thresholds.

    Returns
    -------
    (thresholds, levels) : strictly increasing, as fractions of full scale; pass
    ``thresholds`` to :func:`quantize` and both to :func:`dequantize` (``curve="table"``).

    References
    ----------
    S. P. Lloyd, IEEE Trans. Inf. Theory 28 (1982) 129; J. Max, IRE Trans. Inf. Theory 6
    (1960) 7 (tables of the optimum quantiser for a Gaussian).
    """
    n_levels = _n_cells(bits, n_cells)
    x = _sorted_samples(samples, n_levels, full_scale)
    prefix = np.concatenate([[0.0], np.cumsum(x)])
    levels = np.quantile(x, (np.arange(n_levels) + 0.5) / n_levels)
    span = x[-1] - x[0]
    for _ in range(max_iter):
        thresholds = (levels[:-1] + levels[1:]) / 2
        # cell k holds thresholds[k-1] <= x < thresholds[k], as quantize assigns codes
        edges = np.concatenate([[0], np.searchsorted(x, thresholds, side="left"), [x.size]])
        counts = np.diff(edges)
        sums = prefix[edges[1:]] - prefix[edges[:-1]]
        new = np.where(counts > 0, sums / np.maximum(counts, 1), levels)
        moved = np.max(np.abs(new - levels))
        levels = new
        if moved <= tol * span:
            break
    thresholds = (levels[:-1] + levels[1:]) / 2
    if np.any(np.diff(thresholds) <= 0):
        raise ValueError("Lloyd–Max did not give strictly increasing thresholds")
    return thresholds, levels


def load_thresholds(path: str | Path) -> np.ndarray:
    """Read decision thresholds from a ``.npy`` file or a ``.csv``/``.txt`` file of numbers.

    A CSV file may hold one number per line or comma-separated numbers; ``#`` starts a
    comment. Returns a flat float64 array (validated by :func:`quantize`).
    """
    path = Path(path)
    if path.suffix.lower() == ".npy":
        data = np.load(path, allow_pickle=False)
    else:
        data = np.loadtxt(path, delimiter=",", ndmin=1, comments="#")
    return np.asarray(data, dtype=np.float64).ravel()


# -- the stage -------------------------------------------------------------------------
class ADCStage(Stage):
    """The ADC: electrons (or volts) → N-bit codes (DN), after gain and black level.

    Gain, one of (mutually exclusive):

    - ``system_gain_dn_per_e``: the system gain K in DN/e⁻ directly (EMVA 1288's K).
    - ``conversion_gain_uv_per_e`` with ``full_scale_v``: the pixel's conversion gain
      (µV/e⁻) and the ADC's input range (V); ``K = 2**bits · CG / FS``.
    - neither (default): the full well (``full_well_e`` from the photodetector) maps to
      the top code, ``2**bits - 1``.

    ``analog_gain`` multiplies the signal before the ADC (an ISO gain: at 2 the ADC clips
    at half the full well). Volts input takes only ``full_scale_v``.
    ``system_gain_dn_per_e`` in the output attrs is the total linear gain (including the
    analog gain) before companding, in DN/e⁻; for the log, sqrt and table curves it is
    the gain of the linear signal the curve is applied to.

    Output attrs: ``bits``, ``black_level_dn``, ``white_level_dn`` (the code of the full
    well, or of full scale without one), ``curve``, ``system_gain_dn_per_e`` (None for
    volts input without a known conversion gain), and ``adc_transfer``: the keyword
    arguments of :func:`quantize` (``full_scale`` in input units), so that
    ``dequantize(codes, **attrs["adc_transfer"])`` linearises the codes.

    The pedestal sits at the centre of code ``black_level_dn`` (see
    :func:`sensors.curves.quantize`), so a dark pixel's mean code is the black level.

    Non-idealities (all 0 by default: an ideal ADC), in LSB of the comparators' input,
    applied in this order after the transfer curve and before the comparators::

        a = 2**bits · f(signal / full_scale) + black_level + 1/2 + offset_lsb + noise_lsb · z
        code = #{k : T_k <= a}, clipped to [0, 2**bits - 1]

    - ``offset_lsb``: a fixed offset o; the mean code of a signal moves by o.
    - ``noise_lsb``: comparator and thermal noise, z ~ N(0, 1) per pixel and image (keyed
      per image); it adds ``noise_lsb**2`` to the code variance (on top of the 1/12 LSB²
      of quantisation when the signal is spread over many codes).
    - ``dnl_rms_lsb`` / ``dnl_table``: differential non-linearity. Inner code k
      (``1 .. 2**bits - 2``) has width ``w_k = 1 + DNL_k`` LSB, with ``DNL_k ~ N(0,
      dnl_rms_lsb²)`` drawn once per sensor seed, or ``w_k`` taken from ``dnl_table``;
      the transitions T_k are the cumulative sum, rescaled so full scale is kept
      (:func:`sensors.curves.transition_levels`). A width <= 0 is a missing code; the
      integral non-linearity is the cumulative DNL.

    The table curve takes the same non-idealities in the same unit, the linear LSB
    ``full_scale / 2**bits`` (so a designed table is simulated with the errors of the
    linear ADC it replaces): offset and noise are input-referred, added to
    ``2**bits · signal / full_scale`` before the thresholds, and the DNL pattern (the same
    draw for the same sensor seed) moves each threshold by the INL ``T_c - c`` of its
    transition (:func:`sensors.curves.quantize`).
    """

    name = "adc"
    kind = "adc"
    takes = (Unit.ELECTRONS, Unit.VOLTS)
    gives = Unit.DN

    class Params(StageParams):
        bits: int = param(10, doc="ADC resolution.", ge=1, le=MAX_BITS)
        system_gain_dn_per_e: float | None = param(
            None,
            unit="DN/e-",
            doc="System gain K; default: the full well maps to the top code.",
            gt=0,
        )
        conversion_gain_uv_per_e: float | None = param(
            None, unit="uV/e-", doc="Pixel conversion gain (needs full_scale_v).", gt=0
        )
        full_scale_v: float | None = param(
            None, unit="V", doc="ADC input range (with conversion gain, or for volts input).", gt=0
        )
        analog_gain: float = param(1.0, doc="Gain before the ADC (ISO gain).", gt=0)
        black_level_dn: int | None = param(
            None,
            unit="DN",
            doc="Code of a zero signal, which sits at the centre of that code (the dark "
            "mean code); default 2**bits // 16.",
            ge=0,
        )
        curve: Curve = param("linear", doc="Transfer curve: linear, log, sqrt or table.")
        log_compression: float = param(255.0, doc="mu of the log (mu-law) curve.", gt=0)
        thresholds: str | list[float] | None = param(
            None,
            doc="Table curve: decision thresholds as fractions of full scale, "
            "inline or a .npy/.csv file.",
            path=True,
        )
        rounding: Rounding = param(
            "floor",
            doc="floor (an ADC's comparators, with 1/2 LSB of analog offset) or nearest: "
            "either way a zero signal sits at the centre of the black-level code, so both "
            "give the same codes.",
        )
        offset_lsb: float = param(
            0.0,
            unit="LSB",
            doc="ADC offset error: a fixed analog offset added before the comparators; "
            "shifts every code's mean by this much (the raw stage still subtracts the "
            "nominal black level).",
        )
        noise_lsb: float = param(
            0.0,
            unit="LSB rms",
            doc="ADC temporal noise (comparator and thermal): Gaussian, new for every "
            "pixel and image, added before the comparators; adds noise_lsb**2 to the "
            "code variance.",
            ge=0,
        )
        dnl_rms_lsb: float = param(
            0.0,
            unit="LSB rms",
            doc="Differential non-linearity: each inner code's width is 1 + DNL, DNL "
            "Gaussian with this rms, fixed per sensor seed; widths <= 0 are missing codes.",
            ge=0,
        )
        dnl_table: list[float] | None = param(
            None,
            unit="LSB",
            doc="Code widths of the 2**bits - 2 inner codes (1 .. 2**bits - 2), given "
            "directly instead of dnl_rms_lsb; rescaled so full scale is kept.",
        )

    def setup(self, info: SignalInfo) -> SignalInfo:
        p = self.params
        if info.unit not in self.takes:
            raise StageError(f"adc takes electrons or volts, got {info.unit}")
        bits = p.bits
        top = (1 << bits) - 1
        black = default_black_level(bits) if p.black_level_dn is None else p.black_level_dn
        if black >= top:
            raise StageError(
                f"must be below the top code {top} of a {bits}-bit ADC, got {black}",
                key="black_level_dn",
            )
        thresholds = self._thresholds(bits)
        full_scale, gain_dn_per_e = self._full_scale(info, black, thresholds)
        self._transitions = self._dnl_transitions(bits)
        self._transfer: dict[str, Any] = {
            "bits": bits,
            "full_scale": full_scale,
            "curve": p.curve,
            "rounding": p.rounding,
            "black_level": black,
            "log_compression": p.log_compression,
            "thresholds": thresholds,
        }
        full_well = info.attrs.get("full_well_e")
        if info.unit == Unit.ELECTRONS and full_well is not None:
            white = int(quantize(np.array([float(full_well)]), **self._transfer)[0])
        else:
            white = top
        attrs = {
            "bits": bits,
            "black_level_dn": black,
            "white_level_dn": white,
            "curve": p.curve,
            "system_gain_dn_per_e": gain_dn_per_e,
            "adc_transfer": {
                **self._transfer,
                "thresholds": None if thresholds is None else tuple(thresholds.tolist()),
            },
        }
        return info.evolve(unit=Unit.DN, dtype=dtype_for_bits(bits), attrs=attrs)

    def process(self, x: np.ndarray, batch: Batch) -> np.ndarray:
        # per tile group over the cores (Stage.map_tile_groups): a band of a large image or
        # several small images per call; the float64 temporaries stay in cache
        dtype = dtype_for_bits(self.params.bits)
        return self.map_tile_groups(self._codes, x, batch, x.shape[1:], dtype)

    def _codes(self, x: np.ndarray, group: TileGroup) -> np.ndarray:
        """Codes of one tile group (k images' bands); each image's temporal noise from its
        tile's generator (the image's own generator when the image is one tile)."""
        p = self.params
        offset: float | np.ndarray = p.offset_lsb
        if p.noise_lsb > 0:
            draws = np.empty(x.shape)
            for j, tile in enumerate(group.tiles):
                draws[j] = self.tile_rng(tile).standard_normal(x.shape[1:])
            offset = p.offset_lsb + p.noise_lsb * draws
        try:
            return quantize(x, **self._transfer, offset_lsb=offset, transitions=self._transitions)
        except ValueError as exc:
            raise StageError(f"adc input: {exc}") from exc

    # -- setup helpers ----------------------------------------------------------------
    def _dnl_transitions(self, bits: int) -> np.ndarray | None:
        """The comparators' transitions with DNL (None: ideal), fixed per sensor seed."""
        p = self.params
        if p.dnl_table is not None:
            if p.dnl_rms_lsb > 0:
                raise StageError("give dnl_rms_lsb or dnl_table, not both", key="dnl_table")
            widths = np.asarray(p.dnl_table, dtype=np.float64)
        elif p.dnl_rms_lsb > 0:
            rng = self.pattern_rng(DNL_PATTERN_KEY)
            widths = 1.0 + p.dnl_rms_lsb * rng.standard_normal((1 << bits) - 2)
        else:
            return None
        try:
            return transition_levels(widths, bits)
        except ValueError as exc:
            key = "dnl_table" if p.dnl_table is not None else "dnl_rms_lsb"
            raise StageError(str(exc), key=key) from None

    def _thresholds(self, bits: int) -> np.ndarray | None:
        p = self.params
        if p.curve != "table":
            if p.thresholds is not None:
                raise StageError("thresholds are used only with curve: table", key="thresholds")
            return None
        if p.rounding != "floor":
            raise StageError(
                "curve 'table' takes rounding 'floor' (thresholds are decision levels)",
                key="rounding",
            )
        if p.thresholds is None:
            raise StageError("curve 'table' needs thresholds (a list or a file)", key="thresholds")
        try:
            t = load_thresholds(p.thresholds) if isinstance(p.thresholds, str) else p.thresholds
            t = check_thresholds(t, bits)
        except FileNotFoundError:
            raise StageError(f"no such file: {p.thresholds}", key="thresholds") from None
        except ValueError as exc:
            raise StageError(str(exc), key="thresholds") from None
        return t

    def _full_scale(
        self, info: SignalInfo, black: int, thresholds: np.ndarray | None
    ) -> tuple[float, float | None]:
        """The input signal spanning all codes (input units) and the gain in DN/e⁻."""
        p = self.params
        n_codes = 1 << p.bits
        if info.unit == Unit.VOLTS:
            for key in ("system_gain_dn_per_e", "conversion_gain_uv_per_e"):
                if getattr(p, key) is not None:
                    raise StageError("volts input takes full_scale_v, not a gain", key=key)
            if p.full_scale_v is None:
                raise StageError("volts input needs the ADC range full_scale_v", key="full_scale_v")
            full_scale = p.full_scale_v / p.analog_gain
            cg = info.attrs.get("conversion_gain_uv_per_e")
            gain = None if cg is None else n_codes * cg * 1e-6 / full_scale
            return full_scale, gain
        if p.system_gain_dn_per_e is not None:
            for key in ("conversion_gain_uv_per_e", "full_scale_v"):
                if getattr(p, key) is not None:
                    raise StageError(
                        f"give either system_gain_dn_per_e or conversion_gain_uv_per_e with "
                        f"full_scale_v, not both ({key} is set)",
                        key=key,
                    )
            full_scale = n_codes / (p.system_gain_dn_per_e * p.analog_gain)
        elif p.conversion_gain_uv_per_e is not None:
            if p.full_scale_v is None:
                raise StageError(
                    "conversion_gain_uv_per_e needs the ADC range full_scale_v", key="full_scale_v"
                )
            full_scale = p.full_scale_v / (p.conversion_gain_uv_per_e * 1e-6 * p.analog_gain)
        else:
            if p.full_scale_v is not None:
                raise StageError(
                    "full_scale_v for electrons input needs conversion_gain_uv_per_e",
                    key="full_scale_v",
                )
            full_well = info.attrs.get("full_well_e")
            if full_well is None:
                raise StageError(
                    "input has no full_well_e to map to the top code; give "
                    "system_gain_dn_per_e or conversion_gain_uv_per_e",
                    key="system_gain_dn_per_e",
                )
            full_scale = float(full_well) / (self._top_fraction(black, thresholds) * p.analog_gain)
            if p.analog_gain == 1.0:  # undo round-off of f⁻¹: the full well must reach the top
                full_scale = self._reach_top(float(full_well), full_scale, black, thresholds)
        return full_scale, n_codes / full_scale

    def _reach_top(
        self, full_well: float, full_scale: float, black: int, thresholds: np.ndarray | None
    ) -> float:
        p = self.params
        kw = {"curve": p.curve, "rounding": p.rounding, "black_level": black}
        kw |= {"log_compression": p.log_compression, "thresholds": thresholds}
        for _ in range(64):
            if quantize(full_well, p.bits, full_scale, **kw) == (1 << p.bits) - 1:
                break
            full_scale = float(np.nextafter(full_scale, 0.0))
        return full_scale

    def _top_fraction(self, black: int, thresholds: np.ndarray | None) -> float:
        """The fraction of full scale that the full well maps to: the centre of the top
        code (so raw's (DN - black) / (white - black) is unbiased), or for a table the
        last threshold."""
        p = self.params
        top = (1 << p.bits) - 1
        if thresholds is not None:
            return float(thresholds[min(thresholds.size, top - black) - 1])
        y_top = (top - black) / (1 << p.bits)  # the centre of the top code
        if p.curve == "linear":
            return y_top
        return float(expand(y_top, p.curve, log_compression=p.log_compression))

"""Raw: ADC codes → the normalised RGB image a CNN takes.

Steps, in order (the physical order of a camera pipeline):

1. Linearise and subtract the black level, normalise:
   ``(DN − black_level_dn) / (white_level_dn − black_level_dn)``, so the code full well
   maps to is 1.0 (levels from the ADC's attributes, overridable). The ADC puts a zero
   signal at the centre of the black-level code and each code at the centre of its
   interval, so a dark pixel's mean code is the black level and signal − dark is
   unbiased. For log, sqrt and table curves (``linearize``) each code is first mapped to
   the centre of its interval, ``sensors.curves.dequantize``, which maps the black level
   to exactly 0.
2. White balance (``white_balance``, :mod:`sensors.white_balance`): multiply each
   colour's pixels by its gain; done on the mosaic, before demosaicing, as camera
   pipelines do. Panchromatic (W) pixels keep gain 1. ``none`` applies ``wb_gains`` as
   given (default 1, 1, 1); ``illuminant`` computes fixed gains from the illuminant
   (the scene's ``illuminant`` attr, or ``illuminant``) through the photodetector's QE
   curves (``spectral_qe``: a spectral chain). ``gray_world`` and ``white_patch`` are
   per-image statistics: each image gets its own gains, so an exported graph (the ONNX
   raw front end, which holds only fixed gains and matrices) cannot carry them.
   ``auto_gain`` (a per-image digital gain) follows, measured on the balanced mosaic's
   colour pixels (all pixels unless the CFA has W: a W pixel is not on the balanced
   colour scale, and counting it made the level depend on the illuminant).
3. Assemble RGB planes: demosaic a mosaic, take a stacked sensor's planes as they are,
   or replicate a mono sensor's plane (``mono_output``). ``output: mosaic`` skips this
   and passes the normalised mosaic on as one channel (N, H, W, 1).
4. Colour correction (``ccm``): ``rgb ← M · rgb`` per pixel with a 3×3 M given, or
   ``fit``: least squares on the ColorChecker under the illuminant, from the balanced
   camera RGB to linear sRGB (:func:`sensors.colour_correction.srgb_ccm`), computed once
   in setup.
5. Optionally clip to [0, 1] and encode (``encode``: linear, srgb, gamma).

Demosaicing methods (all give float32 (N, H, W, 3)):

* ``bilinear``: generic for any CFA tile (Bayer, 2×2 RGBW, larger tiles). Each colour is
  interpolated by normalised convolution with a separable tent kernel as wide as the
  tile's period; measured pixels are kept. For Bayer this is the textbook bilinear
  method. W pixels are not used for colour: R, G, B are interpolated from R, G, B sites
  only. Borders are mirrored without repeating the edge pixel (which keeps the CFA
  phase), so a flat colour field comes back exactly everywhere, borders included.
* ``rgbw_fusion``: a CFA with W pixels (:mod:`sensors.rgbw`): the dense W plane gives
  the luminance (its detail and its electrons), the low-passed R, G, B planes the chroma,
  ``out_c = C_c · (W + δ) / (Ŵ + δ)`` with ``Ŵ`` the W a colour pixel would see (fitted
  from the QE curves under the illuminant, or RGB mode's ``qe_rgbw``) and ``δ``
  (``rgbw_guard_e`` electrons) guarding the division. The auto gain is applied after it.
* ``malvar``: Malvar–He–Cutler (2004) gradient-corrected linear interpolation, Bayer
  only, borders mirrored as above.
* ``opencv_ea``: OpenCV's edge-aware Bayer demosaicing, run on 16-bit codes: values are
  clipped to [0, 1] and quantised to 1/65535 first.
* ``opencv_vng``: OpenCV's variable number of gradients, which accepts only 8-bit input:
  values are clipped to [0, 1] and quantised to 1/255 first (a real loss of precision
  for ADCs with more than 8 bits).

OpenCV names Bayer patterns by the second row's second and third pixels, so its
``COLOR_BayerBG2RGB`` is the RGGB pattern (top-left 2×2 = R G / G B); the mapping is in
``_OPENCV_BAYER_CODE`` and tested for every phase.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import cv2
import numpy as np

from pipeline.stage import Batch, SignalInfo, Stage, StageError, StageParams, Unit, param
from sensors import white_balance
from sensors.colour import linear_to_srgb
from sensors.curves import dequantize, linearize_codes
from sensors.rgbw import RgbwFusion, fusion_guard, tent_kernel, w_coefficients, w_coefficients_flat

__all__ = [
    "BAYER_TILES",
    "PER_IMAGE_WB",
    "RawStage",
    "auto_gain",
    "bayer_pattern",
    "channel_map",
    "demosaic_bilinear",
    "demosaic_malvar2004",
    "demosaic_opencv",
    "normalise_dn",
]

CfaTile = Sequence[Sequence[str]]
Matrix3 = tuple[tuple[float, float, float], tuple[float, float, float], tuple[float, float, float]]

#: White-balance methods whose gains are statistics of each image.
PER_IMAGE_WB = ("gray_world", "white_patch")

BAYER_TILES: dict[str, tuple[tuple[str, ...], ...]] = {
    "RGGB": (("R", "G"), ("G", "B")),
    "BGGR": (("B", "G"), ("G", "R")),
    "GRBG": (("G", "R"), ("B", "G")),
    "GBRG": (("G", "B"), ("R", "G")),
}
_CHANNEL_INDEX = {"R": 0, "G": 1, "B": 2, "W": 3}

# Top-left 2×2 pattern → OpenCV's legacy code name (second row, second and third pixel).
# The legacy names exist in OpenCV 4 and 5 alike.
_OPENCV_BAYER_CODE = {"RGGB": "BG", "BGGR": "RG", "GRBG": "GB", "GBRG": "GR"}

# Mirror without repeating the edge pixel (scipy.ndimage "mirror"): keeps the CFA phase.
_DEMOSAIC_BORDER = cv2.BORDER_REFLECT_101

# Malvar, He, Cutler (2004), figure 2, in units of 1/8.
_MALVAR_G_AT_RB = (
    np.array(
        [
            [0, 0, -1, 0, 0],
            [0, 0, 2, 0, 0],
            [-1, 2, 4, 2, -1],
            [0, 0, 2, 0, 0],
            [0, 0, -1, 0, 0],
        ],
        dtype=np.float64,
    )
    / 8.0
)
# R (or B) at a G pixel whose row holds R (or B): horizontal neighbours carry the colour.
_MALVAR_RB_AT_G_ROW = (
    np.array(
        [
            [0, 0, 0.5, 0, 0],
            [0, -1, 0, -1, 0],
            [-1, 4, 5, 4, -1],
            [0, -1, 0, -1, 0],
            [0, 0, 0.5, 0, 0],
        ],
        dtype=np.float64,
    )
    / 8.0
)
_MALVAR_RB_AT_G_COL = _MALVAR_RB_AT_G_ROW.T.copy()
# R at B (or B at R): diagonal neighbours carry the colour.
_MALVAR_RB_AT_BR = (
    np.array(
        [
            [0, 0, -1.5, 0, 0],
            [0, 2, 0, 2, 0],
            [-1.5, 0, 6, 0, -1.5],
            [0, 2, 0, 2, 0],
            [0, 0, -1.5, 0, 0],
        ],
        dtype=np.float64,
    )
    / 8.0
)


def _check_tile(cfa_tile: CfaTile) -> tuple[tuple[str, ...], ...]:
    tile = tuple(tuple(str(c).upper() for c in row) for row in cfa_tile)
    if not tile or not tile[0] or any(len(row) != len(tile[0]) for row in tile):
        raise ValueError(f"cfa_tile must be a non-empty rectangle of letters, got {cfa_tile!r}")
    bad = {c for row in tile for c in row} - set(_CHANNEL_INDEX)
    if bad:
        raise ValueError(f"cfa_tile letters must be R, G, B or W, got {sorted(bad)}")
    return tile


def channel_map(cfa_tile: CfaTile, height: int, width: int) -> np.ndarray:
    """(height, width) int8 map of each photosite's channel: 0 R, 1 G, 2 B, 3 W.

    ``cfa_tile`` is row-major, its top-left letter at pixel (0, 0), repeated over the array.
    """
    tile = _check_tile(cfa_tile)
    codes = np.array([[_CHANNEL_INDEX[c] for c in row] for row in tile], dtype=np.int8)
    reps = (-(-height // codes.shape[0]), -(-width // codes.shape[1]))
    return np.tile(codes, reps)[:height, :width]


def bayer_pattern(cfa_tile: CfaTile) -> str | None:
    """``"RGGB"``, ``"BGGR"``, ``"GRBG"`` or ``"GBRG"`` for a 2×2 Bayer tile, else None."""
    tile = _check_tile(cfa_tile)
    for name, bayer in BAYER_TILES.items():
        if tile == bayer:
            return name
    return None


def normalise_dn(
    dn: np.ndarray, *, black_level_dn: float, white_level_dn: float, dtype: type = np.float32
) -> np.ndarray:
    """``(dn − black_level_dn) / (white_level_dn − black_level_dn)``: full well → 1.0.

    Values below black (read noise) stay negative; nothing is clipped.
    """
    if not white_level_dn > black_level_dn:
        raise ValueError(f"white level {white_level_dn} must exceed black level {black_level_dn}")
    scale = 1.0 / (white_level_dn - black_level_dn)
    out = np.asarray(dn).astype(dtype)
    out -= dtype(black_level_dn)
    out *= dtype(scale)
    return out


class _BilinearDemosaic:
    """Bilinear demosaicing by normalised convolution, planned for one CFA tile and size."""

    def __init__(self, cfa_tile: CfaTile, height: int, width: int, dtype: type = np.float32):
        tile = _check_tile(cfa_tile)
        cmap = channel_map(tile, height, width)
        missing = [c for c in "RGB" if not (cmap == _CHANNEL_INDEX[c]).any()]
        if missing:
            raise ValueError(f"the CFA has no {', '.join(missing)} pixels to interpolate from")
        self.kernel_y = tent_kernel(len(tile)).astype(dtype)
        self.kernel_x = tent_kernel(len(tile[0])).astype(dtype)
        self.masks = np.stack([(cmap == c) for c in range(3)], axis=-1).astype(dtype)
        weights = self._filter(self.masks)
        # At measured pixels keep the value; elsewhere divide by the weight of the samples.
        self.fill = np.where(self.masks > 0, 0.0, 1.0 / np.maximum(weights, 1e-12)).astype(dtype)

    def _filter(self, planes: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """The tent filter of one image's (H, W, 3) planes, written into ``out`` if given
        (OpenCV fills it in place: no copy)."""
        res = cv2.sepFilter2D(
            planes, -1, self.kernel_x, self.kernel_y, dst=out, borderType=_DEMOSAIC_BORDER
        )
        if out is None:
            return res.reshape(planes.shape)
        if res is not out:  # OpenCV allocated after all
            out[...] = res.reshape(out.shape)
        return out

    def __call__(self, mosaic: np.ndarray) -> np.ndarray:
        planes = mosaic[..., None] * self.masks
        out = np.empty_like(planes)
        for i in range(planes.shape[0]):
            self._filter(planes[i], out[i])
        out *= self.fill
        out += planes
        return out


class _MalvarDemosaic:
    """Malvar–He–Cutler (2004) demosaicing, planned for one Bayer pattern and size."""

    def __init__(self, pattern: str, height: int, width: int, dtype: type = np.float32):
        cmap = channel_map(BAYER_TILES[pattern], height, width)
        r_m, g_m, b_m = (cmap == 0), (cmap == 1), (cmap == 2)
        # On a Bayer array a G pixel's row holds either R or B pixels, never both.
        r_rows = r_m.any(axis=1)[:, None]
        b_rows = b_m.any(axis=1)[:, None]
        self.kernels = [
            k.astype(dtype)
            for k in (_MALVAR_G_AT_RB, _MALVAR_RB_AT_G_ROW, _MALVAR_RB_AT_G_COL, _MALVAR_RB_AT_BR)
        ]
        # For each output channel, which estimate each pixel takes: -1 the measured value,
        # else the index of the kernel whose response is used.
        choice = np.full((3, height, width), -1, dtype=np.int8)
        choice[0][g_m & r_rows] = 1
        choice[0][g_m & b_rows] = 2
        choice[0][b_m] = 3
        choice[1][r_m | b_m] = 0
        choice[2][g_m & b_rows] = 1
        choice[2][g_m & r_rows] = 2
        choice[2][r_m] = 3
        self.choice = choice

    def __call__(self, mosaic: np.ndarray) -> np.ndarray:
        n, height, width = mosaic.shape
        out = np.empty((n, height, width, 3), dtype=mosaic.dtype)
        responses = np.empty((len(self.kernels), height, width), dtype=mosaic.dtype)
        for i in range(n):
            image = np.ascontiguousarray(mosaic[i])
            for k, kernel in enumerate(self.kernels):  # symmetric: correlation = convolution
                responses[k] = cv2.filter2D(image, -1, kernel, borderType=_DEMOSAIC_BORDER)
            for c in range(3):
                sel = self.choice[c]
                plane = image.copy()
                for k in range(len(self.kernels)):
                    np.copyto(plane, responses[k], where=sel == k)
                out[i, ..., c] = plane
        return out


def _batch_mosaic(mosaic: np.ndarray) -> tuple[np.ndarray, bool]:
    m = np.asarray(mosaic)
    if m.ndim == 2:
        return m[None], True
    if m.ndim != 3:
        raise ValueError(f"expected a mosaic (H, W) or (N, H, W), got shape {m.shape}")
    return m, False


def _as_float(m: np.ndarray) -> np.ndarray:
    return m if m.dtype in (np.float32, np.float64) else m.astype(np.float32)


def demosaic_bilinear(mosaic: np.ndarray, cfa_tile: CfaTile) -> np.ndarray:
    """Bilinear demosaicing for any CFA tile (W pixels ignored for colour).

    Parameters
    ----------
    mosaic : (H, W) or (N, H, W) float (or integer, converted to float32).
    cfa_tile : the repeating tile, row-major, e.g. ``(("R", "G"), ("G", "B"))``.

    Returns
    -------
    (H, W, 3) or (N, H, W, 3) R, G, B planes, float.

    References
    ----------
    R. Ramanath, W. E. Snyder, G. L. Bilbro, W. A. Sander, "Demosaicking methods for
    Bayer color arrays", J. Electronic Imaging 11(3), 2002, section 3.2.
    H. Knutsson, C.-F. Westin, "Normalized and differential convolution", CVPR 1993.
    """
    m, squeeze = _batch_mosaic(mosaic)
    m = _as_float(m)
    out = _BilinearDemosaic(cfa_tile, m.shape[1], m.shape[2], m.dtype.type)(m)
    return out[0] if squeeze else out


def demosaic_malvar2004(mosaic: np.ndarray, pattern: str) -> np.ndarray:
    """Malvar–He–Cutler gradient-corrected linear demosaicing of a Bayer mosaic.

    Parameters
    ----------
    mosaic : (H, W) or (N, H, W) float.
    pattern : ``"RGGB"``, ``"BGGR"``, ``"GRBG"`` or ``"GBRG"`` (top-left 2×2, row-major).

    Returns
    -------
    (H, W, 3) or (N, H, W, 3) R, G, B planes, float. Borders are mirrored
    (scipy.ndimage ``mode="mirror"``).

    References
    ----------
    H. S. Malvar, L.-W. He, R. Cutler, "High-quality linear interpolation for
    demosaicing of Bayer-patterned color images", ICASSP 2004, vol. 3, pp. 485–488.
    """
    if pattern not in BAYER_TILES:
        raise ValueError(f"pattern must be one of {sorted(BAYER_TILES)}, got {pattern!r}")
    m, squeeze = _batch_mosaic(mosaic)
    m = _as_float(m)
    out = _MalvarDemosaic(pattern, m.shape[1], m.shape[2], m.dtype.type)(m)
    return out[0] if squeeze else out


def demosaic_opencv(
    mosaic: np.ndarray, pattern: str, *, method: Literal["ea", "vng"] = "ea"
) -> np.ndarray:
    """OpenCV's edge-aware (``ea``) or VNG demosaicing of a Bayer mosaic in [0, 1].

    The mosaic is clipped to [0, 1] and quantised, to 16 bits for ``ea`` and to 8 bits
    for ``vng`` (OpenCV's VNG accepts only 8-bit input), then converted back to float.

    Returns
    -------
    (H, W, 3) or (N, H, W, 3) R, G, B planes, float32, on the quantisation grid.

    References
    ----------
    OpenCV documentation, "Color conversions: Bayer → RGB" (imgproc, cvtColor).
    E. Chang, S. Cheung, D. Y. Pan, "Color filter array recovery using a threshold-based
    variable number of gradients", Proc. SPIE 3650, 1999.
    """
    if pattern not in BAYER_TILES:
        raise ValueError(f"pattern must be one of {sorted(BAYER_TILES)}, got {pattern!r}")
    m, squeeze = _batch_mosaic(mosaic)
    dtype, full_scale = (np.uint16, 65535.0) if method == "ea" else (np.uint8, 255.0)
    suffix = "_EA" if method == "ea" else "_VNG"
    code = getattr(cv2, f"COLOR_Bayer{_OPENCV_BAYER_CODE[pattern]}2RGB{suffix}")
    codes = np.rint(np.clip(m, 0.0, 1.0) * full_scale).astype(dtype)
    out = np.empty((*m.shape, 3), dtype=np.float32)
    for i in range(m.shape[0]):
        out[i] = cv2.cvtColor(codes[i], code)
    out *= np.float32(1.0 / full_scale)
    return out[0] if squeeze else out


def auto_gain(y: np.ndarray, target: float, max_gain: float) -> np.ndarray:
    """Per-image digital gain ``target / max(mean, target / max_gain)``, shaped to broadcast.

    Parameters
    ----------
    y : normalised images, batch first (any trailing shape).
    target : the mean each image is scaled to.
    max_gain : the largest gain (an image whose mean is at or below ``target / max_gain``).

    Returns
    -------
    float32 gains of shape ``(n, 1, ..., 1)``.
    """
    mean = y.reshape(len(y), -1).mean(axis=1, dtype=np.float64)
    gain = target / np.maximum(mean, target / max_gain)
    return gain.astype(np.float32).reshape((len(y),) + (1,) * (y.ndim - 1))


class RawStage(Stage):
    """DN mosaic (or planes) → normalised, white-balanced RGB planes (N, H, W, 3) float32."""

    name = "raw"
    kind = "raw"
    takes = (Unit.DN,)
    gives = Unit.UNITLESS

    class Params(StageParams):
        demosaic: Literal["bilinear", "malvar", "opencv_ea", "opencv_vng", "rgbw_fusion"] = param(
            "bilinear",
            doc="Demosaicing method for a mosaic (malvar and opencv_*: Bayer only; "
            "rgbw_fusion: a CFA with W pixels, luminance from W, chroma from R, G, B).",
        )
        rgbw_guard_e: float = param(
            2.0,
            unit="e-",
            doc="rgbw_fusion: the guard added to both sides of the W / Ŵ ratio, in "
            "electrons, so it stays finite where the light is near zero.",
            gt=0,
        )
        black_level_dn: float | None = param(
            None, unit="DN", doc="Black level (default: the ADC's black_level_dn, else 0)."
        )
        white_level_dn: float | None = param(
            None,
            unit="DN",
            doc="Code that maps to 1.0 (default: the ADC's white_level_dn, else 2**bits - 1).",
        )
        wb_gains: tuple[float, float, float] = param(
            (1.0, 1.0, 1.0),
            doc="White-balance gains for R, G, B (applied before demosaicing), with "
            "white_balance: none.",
        )
        white_balance: Literal["none", "gray_world", "white_patch", "illuminant"] = param(
            "none",
            doc="none: wb_gains as given; illuminant: fixed gains from the illuminant through "
            "the QE curves (spectral chain); gray_world, white_patch: per-image gains.",
        )
        white_patch_percentile: float = param(
            99.0, doc="white_balance: white_patch: the percentile taken as white.", gt=0, le=100
        )
        ccm: Literal["none", "fit"] | Matrix3 = param(
            "none",
            doc="Colour correction after demosaicing: none, fit (least squares on the "
            "ColorChecker under the illuminant, to linear sRGB; spectral chain) or a 3×3 "
            "matrix (rows: output R, G, B).",
        )
        illuminant: str | None = param(
            None,
            doc="white_balance: illuminant and ccm: fit: the light assumed, a "
            "colour.SDS_ILLUMINANTS name (default: the scene's illuminant).",
        )
        output: Literal["planes", "mosaic"] = param(
            "planes",
            doc="planes: RGB (N, H, W, 3); mosaic: the normalised mosaic as (N, H, W, 1).",
        )
        mono_output: Literal["replicate", "single"] = param(
            "replicate", doc="Mono sensor: replicate to 3 channels or keep 1."
        )
        linearize: Literal["auto", "on", "off"] = param(
            "auto",
            doc="Undo the ADC's transfer curve (dequantize each code to its signal) before "
            "normalising: auto does it for log, sqrt and table curves, whose codes are not "
            "proportional to the light.",
        )
        auto_gain: bool = param(
            False,
            doc="Digital gain per image (an ISP's auto-brightness): scale each normalised "
            "image so the mean of its (balanced) colour pixels is gain_target (a CFA with W: "
            "W pixels not counted). Applied to the codes after the ADC, so quantisation and "
            "noise stay as they are.",
        )
        gain_target: float = param(
            0.18, doc="auto_gain: the mean an image is scaled to.", gt=0, le=1
        )
        max_gain: float = param(
            256.0, doc="auto_gain: the largest gain (for images near black).", ge=1
        )
        clip: bool = param(False, doc="Clip the result to [0, 1].")
        encode: Literal["linear", "srgb", "gamma"] = param(
            "linear", doc="Transfer curve for the CNN input: linear (none), srgb, or gamma."
        )
        gamma: float = param(2.2, doc="Exponent for encode: gamma (out = in ** (1/gamma)).", gt=0)

    def setup(self, info: SignalInfo) -> SignalInfo:
        p = self.params
        attrs = info.attrs
        if any(g <= 0 for g in p.wb_gains):
            raise StageError(f"wb_gains must be positive, got {p.wb_gains}", key="wb_gains")
        self._black, self._white = self._levels(attrs)
        self._transfer = self._linear_transfer(attrs)
        span = self._white - self._black
        if self._transfer is not None:  # normalise in signal units: black 0, white 1
            ends = dequantize(np.array([self._black, self._white]), **self._transfer)
            span = float(ends[1] - ends[0])
        self._span = span
        cfa = attrs.get("cfa")
        shape = info.shape
        if len(shape) == 3 and shape[2] == 1:
            shape = shape[:2]
        self._layout = self._resolve_layout(cfa, shape)
        self._demosaic = None
        self._gain_pixels = None  # auto gain's pixels: all, or the colour pixels of an RGBW
        height, width = shape[:2]
        fixed_wb = self._fixed_wb_gains(attrs)
        self._ccm = self._plan_ccm(attrs, fixed_wb)
        gains = np.array([*fixed_wb, 1.0], dtype=np.float64) / span
        if self._layout == "mosaic":
            tile = attrs.get("cfa_tile")
            if tile is None and cfa in BAYER_TILES:
                tile = BAYER_TILES[cfa]
            if tile is None:
                raise StageError(
                    "a mosaic needs the photodetector's cfa_tile (or a Bayer cfa name)", key="stage"
                )
            try:
                cmap = channel_map(tile, height, width)
            except ValueError as err:
                raise StageError(str(err), key="cfa_tile") from err
            self._cmap = cmap
            # One multiply does normalisation and white balance: gain / (white − black).
            self._scale = gains[cmap].astype(np.float32)
            self._gain_pixels = (cmap != _CHANNEL_INDEX["W"]) if (cmap == 3).any() else None
            if p.output == "planes":
                self._demosaic = self._plan_demosaic(tile, height, width, attrs, fixed_wb)
        elif self._layout == "stacked":
            if p.output == "mosaic":
                raise StageError("output: mosaic needs a mosaic sensor, not stacked", key="output")
            self._scale = gains[: shape[2]].astype(np.float32)
        else:  # mono: one plane, no colour
            self._scale = np.float32(1.0 / span)
        self._check_colour_layout()
        channels = self._output_channels(shape)
        self._out_shape = (height, width, channels)
        out_attrs = {
            "black_level_dn": self._black,
            "white_level_dn": self._white,
            "wb_gains": tuple(float(g) for g in fixed_wb),
            "white_balance": p.white_balance,
            "ccm": None if self._ccm is None else tuple(map(tuple, self._ccm.tolist())),
        }
        if isinstance(self._demosaic, RgbwFusion):
            out_attrs["rgbw_coefficients"] = tuple(map(float, self._demosaic.coefficients))
            out_attrs["rgbw_guard"] = float(self._demosaic.guard)
        return info.evolve(
            unit=Unit.UNITLESS,
            shape=(height, width, channels),
            dtype=np.dtype(np.float32),
            attrs={
                **out_attrs,
                "encode": p.encode,
                "raw_output": p.output,
                "linearized": self._transfer is not None,
            },
        )

    def _fixed_wb_gains(self, attrs) -> np.ndarray:
        """R, G, B gains known in setup: given, from the illuminant, or 1 (per image)."""
        p = self.params
        if p.white_balance != "none" and tuple(p.wb_gains) != (1.0, 1.0, 1.0):
            raise StageError(
                f"wb_gains are for white_balance: none, not {p.white_balance}", key="wb_gains"
            )
        if p.white_balance == "illuminant":
            return self._illuminant_wb(attrs, key="white_balance")
        return np.asarray(p.wb_gains, dtype=np.float64)

    def _spectral(self, attrs, key: str) -> tuple[np.ndarray, np.ndarray, str]:
        """(R, G, B QE curves, their bands, the illuminant name) of a spectral chain."""
        qe, bands = attrs.get("spectral_qe"), attrs.get("spectral_qe_nm")
        name = self.params.illuminant or attrs.get("illuminant")
        if qe is None or bands is None or name is None:
            raise StageError(
                f"{key}: {getattr(self.params, key)} needs a spectral chain (the scene's "
                "illuminant and the photodetector's spectral_qe)",
                key=key,
            )
        return np.asarray(qe, dtype=np.float64)[:3], np.asarray(bands, dtype=np.float64), name

    def _illuminant_wb(self, attrs, key: str) -> np.ndarray:
        from sensors import spectra

        qe, bands, name = self._spectral(attrs, key)
        try:
            light = spectra.illuminant_photons(name, bands)
            return white_balance.illuminant_gains(qe, light)
        except ValueError as err:
            bad_name = "illuminant" in str(err) and "no light" not in str(err)
            raise StageError(str(err), key="illuminant" if bad_name else key) from None

    def _plan_ccm(self, attrs, fixed_wb: np.ndarray) -> np.ndarray | None:
        """The (3, 3) float32 CCM, or None. A fit sees the balanced camera RGB: with the
        fixed gains, or for a per-image method the illuminant's (its ideal estimate)."""
        ccm = self.params.ccm
        if ccm == "none":
            return None
        if ccm != "fit":
            matrix = np.asarray(ccm, dtype=np.float64)
            if not np.isfinite(matrix).all():
                raise StageError("ccm must be finite", key="ccm")
            return matrix.astype(np.float32)
        from sensors.colour_correction import srgb_ccm

        qe, bands, name = self._spectral(attrs, "ccm")
        fit_wb = (
            self._illuminant_wb(attrs, "ccm")
            if self.params.white_balance in PER_IMAGE_WB
            else fixed_wb
        )
        try:
            return srgb_ccm(qe, bands, illuminant=name, wb_gains=fit_wb).astype(np.float32)
        except (ValueError, KeyError) as err:  # colour: KeyError for a non-CIE illuminant
            raise StageError(f"ccm: fit under {name!r}: {err}", key="ccm") from None

    def _check_colour_layout(self) -> None:
        p = self.params
        if self._layout == "mono" and (p.white_balance != "none" or self._ccm is not None):
            key = "ccm" if self._ccm is not None else "white_balance"
            raise StageError(f"{key}: a mono sensor has no colour to balance or correct", key)
        if p.output == "mosaic" and self._ccm is not None:
            raise StageError("ccm needs RGB planes, not output: mosaic", key="ccm")

    def wb_is_per_image(self) -> bool:
        """True when the white balance is a per-image statistic (no fixed graph holds it)."""
        return self.params.white_balance in PER_IMAGE_WB

    def linear_lookup(self) -> tuple[np.ndarray, float] | None:
        """The linearisation as a lookup table, for a front end that runs this stage
        elsewhere (the ONNX raw front end); None when this stage does not linearise.

        Returns
        -------
        (values, span) : ``values[code]`` is the float32 this stage gives code ``0 ..
        2**bits - 1`` after linearising and subtracting the black level, before the
        white-level and white-balance scaling (:func:`sensors.curves.linearize_codes`,
        the function :meth:`process` uses); ``span`` is the signal between the black and
        white levels that the stage then divides by (``wb_gain / span``, in float64,
        then float32).
        """
        if self._transfer is None:
            return None
        codes = np.arange(1 << int(self._transfer["bits"]))
        return linearize_codes(codes, self._black, self._transfer), self._span

    def _linear_transfer(self, attrs) -> dict | None:
        """The ADC's quantize() arguments when codes must be linearised, else None."""
        mode = self.params.linearize
        curve = attrs.get("curve", "linear")
        if mode == "off" or (mode == "auto" and curve == "linear"):
            return None
        transfer = attrs.get("adc_transfer")
        if transfer is None:
            if mode == "on":
                raise StageError("linearize needs the ADC's adc_transfer attribute", "linearize")
            return None
        transfer = dict(transfer)
        if transfer.get("thresholds") is not None:
            transfer["thresholds"] = np.asarray(transfer["thresholds"], dtype=np.float64)
        return transfer

    def _levels(self, attrs) -> tuple[float, float]:
        p = self.params
        black = (
            p.black_level_dn if p.black_level_dn is not None else attrs.get("black_level_dn", 0.0)
        )
        white = p.white_level_dn
        if white is None:
            white = attrs.get("white_level_dn")
        if white is None and attrs.get("bits") is not None:
            white = 2 ** int(attrs["bits"]) - 1
        if white is None:
            raise StageError(
                "no white level: the ADC did not set white_level_dn or bits; set white_level_dn",
                key="white_level_dn",
            )
        if not float(white) > float(black):
            key = "white_level_dn" if p.white_level_dn is not None else "black_level_dn"
            raise StageError(f"white level {white} must exceed black level {black}", key=key)
        return float(black), float(white)

    def _resolve_layout(self, cfa, shape: tuple[int, ...]) -> str:
        if len(shape) == 2:
            return "mono" if cfa == "mono" else "mosaic"
        if len(shape) == 3 and shape[2] == 3:
            return "stacked"
        raise StageError(
            f"raw takes a mosaic (H, W), a mono (H, W) plane or stacked (H, W, 3) planes, "
            f"got {shape}",
            key="stage",
        )

    def _plan_demosaic(self, tile, height: int, width: int, attrs, fixed_wb: np.ndarray):
        method = self.params.demosaic
        if method == "rgbw_fusion":
            return self._plan_fusion(tile, height, width, attrs, fixed_wb)
        if method == "bilinear":
            try:
                return _BilinearDemosaic(tile, height, width)
            except ValueError as err:
                raise StageError(str(err), key="cfa_tile") from err
        pattern = bayer_pattern(tile)
        if pattern is None:
            raise StageError(
                f"demosaic: {method} needs a 2×2 Bayer CFA, got tile {tile}; use bilinear",
                key="demosaic",
            )
        if method == "malvar":
            return _MalvarDemosaic(pattern, height, width)
        ocv = "ea" if method == "opencv_ea" else "vng"
        return lambda m: demosaic_opencv(m, pattern, method=ocv)

    def _plan_fusion(self, tile, height: int, width: int, attrs, fixed_wb) -> RgbwFusion:
        """The RGBW fusion with its coefficients (from the QE curves under the illuminant,
        or RGB mode's qe) and its guard in normalised units."""
        p = self.params
        if p.white_balance in PER_IMAGE_WB:
            raise StageError(
                f"demosaic: rgbw_fusion needs fixed white-balance gains, not {p.white_balance}",
                key="white_balance",
            )
        if "W" not in {c for row in tile for c in row}:
            raise StageError(f"demosaic: rgbw_fusion needs W pixels; tile {tile}", "demosaic")
        qe = attrs.get("spectral_qe")
        if qe is not None:
            from sensors import spectra

            bands = np.asarray(attrs.get("spectral_qe_nm"), dtype=np.float64)
            name = p.illuminant or attrs.get("illuminant")
            light = np.ones_like(bands) if name is None else spectra.illuminant_photons(name, bands)
            qe = np.asarray(qe, dtype=np.float64)
            coefficients = w_coefficients(qe[:3], qe[3], light, fixed_wb)
        elif attrs.get("qe_rgbw") is not None:
            qe_rgbw = attrs["qe_rgbw"]
            coefficients = w_coefficients_flat(qe_rgbw[:3], qe_rgbw[3], fixed_wb)
        else:
            raise StageError(
                "demosaic: rgbw_fusion needs the photodetector's QE (spectral_qe or qe_rgbw)",
                key="demosaic",
            )
        gain = attrs.get("system_gain_dn_per_e")
        if gain and self._transfer is None:
            e_per_unit = (self._white - self._black) / float(gain)
        elif attrs.get("full_well_e"):
            e_per_unit = float(attrs["full_well_e"])
        else:
            raise StageError(
                "rgbw_guard_e needs the ADC's system gain or the full well", "rgbw_guard_e"
            )
        guard = fusion_guard(p.rgbw_guard_e, e_per_unit)
        try:
            return RgbwFusion(
                channel_map(tile, height, width), (len(tile), len(tile[0])), coefficients, guard
            )
        except ValueError as err:
            raise StageError(str(err), key="demosaic") from err

    def _output_channels(self, shape: tuple[int, ...]) -> int:
        if self.params.output == "mosaic":
            return 1
        if self._layout == "mono":
            return 3 if self.params.mono_output == "replicate" else 1
        return 3

    def process(self, x: np.ndarray, batch: Batch) -> np.ndarray:
        # groups of whole images over the cores: every step below treats each image on its
        # own (demosaic, per-image gains), so the groups do not change any value
        return self.map_images(self._rgb, x, batch, self._out_shape, np.float32)

    def _rgb(self, x: np.ndarray, batch: Batch) -> np.ndarray:
        """The CNN's input for a group of images: normalise, balance, demosaic, encode."""
        p = self.params
        if self._layout != "stacked" and x.ndim == 4:
            x = x[..., 0]
        if self._transfer is not None:
            y = linearize_codes(x, self._black, self._transfer)
        else:
            y = x.astype(np.float32)  # a copy, normalised in place below
            y -= np.float32(self._black)
        y *= self._scale
        if p.white_balance in PER_IMAGE_WB and self._layout != "mono":
            y *= self._per_image_gains(y)
        gain = self._auto_gain(y) if p.auto_gain else None
        fusion = isinstance(self._demosaic, RgbwFusion)
        if gain is not None and not fusion:  # the fusion's guard is in the sensor's electrons
            y *= gain
        if p.output == "mosaic":
            out = y[..., None]
        elif self._layout == "mosaic":
            out = self._demosaic(y)
            if gain is not None and fusion:
                out *= gain[..., None]
        elif self._layout == "mono":
            out = y[..., None]
            if p.mono_output == "replicate":
                out = np.repeat(out, 3, axis=-1)
        else:
            out = y
        if self._ccm is not None:
            out = np.matmul(out, self._ccm.T)
        if p.clip:
            np.clip(out, 0.0, 1.0, out=out)
        if p.encode == "srgb":
            out = linear_to_srgb(out)
        elif p.encode == "gamma":
            out = np.copysign(np.abs(out) ** np.float32(1.0 / p.gamma), out)
        return out.astype(np.float32, copy=False)

    def _auto_gain(self, y: np.ndarray) -> np.ndarray:
        """Per-image gains shaped like ``y``'s batch, measured on the balanced colour
        pixels (all pixels unless the CFA has W: W is not on the colour planes' scale)."""
        p = self.params
        if self._gain_pixels is None:
            return auto_gain(y, p.gain_target, p.max_gain)
        colour = y[:, self._gain_pixels]
        return auto_gain(colour, p.gain_target, p.max_gain).reshape(len(y), 1, 1)

    def _per_image_gains(self, y: np.ndarray) -> np.ndarray:
        """float32 per-image gains shaped to multiply ``y`` (a mosaic or planes)."""
        p = self.params
        mosaic = self._layout == "mosaic"
        cmap = self._cmap if mosaic else None
        if p.white_balance == "gray_world":
            gains = white_balance.gray_world_gains(y, cmap)
        else:
            gains = white_balance.white_patch_gains(y, cmap, percentile=p.white_patch_percentile)
        if not mosaic:
            return gains.astype(np.float32)[:, None, None, :]
        with_w = np.concatenate([gains, np.ones((len(gains), 1))], axis=1)
        return with_w.astype(np.float32)[:, self._cmap]

"""Optics: blur the photon image with a point spread function, then vignetting.

Light is blurred before it is detected, so this stage takes colour planes
(N, H, W, C) of photons and gives planes of photons; a mosaic is refused.

PSFs (``sensors/psf.py``; each integrated over the pixel's square aperture exactly and
normalised to sum 1, so the blur conserves photons):

* ``gaussian``: Gaussian of ``sigma_px``, pixel-integrated (taps are differences of erf),
  kernel half-width ``round(4·sigma_px)`` px, applied separably.
* ``gaussian_point``: the Gaussian point-sampled at pixel centres (scipy.ndimage's
  ``gaussian_filter``; sensorlab's ``gaussian`` before pixel integration). Its MTF at
  Nyquist is 0.338 at σ = 0.6 px, where the pixel-integrated one gives 0.216.
* ``airy``: the diffraction-limited PSF of a circular aperture, from the f-number, each
  channel's wavelength and the pixel pitch.
* ``defocus``: a uniform disk (geometric defocus); taps are the pixel's area in the disk.
* ``kernel``: a user kernel from a ``.npy`` file, (h, w) for all channels or
  (h, w, C) per channel.

The Airy PSF keeps 0.1 % of its energy beyond ≈ 200·λN (hundreds of px), far beyond the
image. Under ``reflect`` and ``wrap`` borders a convolution is a circular one on the
(mirrored, for reflect) image, so the stage multiplies the image's DCT-II (reflect) or
DFT (wrap) by the PSF's aliased transfer function (:func:`sensors.psf.airy_transfer`):
the untruncated PSF, exactly, at the cost of two small transforms. ``constant``
convolves with the exact taps within the image's span (taps farther out never meet the
image; the light they carry leaves it, as zero borders say); ``nearest`` adds to that
the half-planes and quadrants of PSF that edge and corner pixels gather
(:func:`convolve_nearest`). All four are exact, whatever the PSF's size.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import scipy.fft

from pipeline.stage import (
    Batch,
    SignalInfo,
    Stage,
    StageError,
    StageParams,
    Unit,
    param,
    run_parallel,
)
from sensors.psf import (
    MAX_KERNEL_RADIUS_PX,
    airy_line_spread,
    airy_taps,
    airy_transfer,
    defocus_psf,
    defocus_radius_of_kernel_px,
    gaussian_kernel1d,
    gaussian_radius_px,
)

__all__ = [
    "FFT_MIN_KERNEL_SIDE",
    "OpticsStage",
    "apply_psf",
    "apply_transfer",
    "convolve_nearest",
    "gaussian_blur",
    "load_kernel",
    "relative_illumination",
    "separable_blur",
    "transfer_grid",
]

EdgeMode = Literal["reflect", "constant", "wrap", "nearest"]

# Kernels at least this wide (in px) go through scipy's FFT convolution under
# ``convolution: auto``. Below it, cv2.filter2D is faster: it is direct for small
# kernels and switches to its own DFT from about 11×11; measured on the 2-core
# development machine, scipy.signal.fftconvolve overtakes it near 101–151 px.
FFT_MIN_KERNEL_SIDE = 127

# Below this λN the Airy transfer needs more than ~(2/λN)² alias orders; the spot is
# then a small fraction of a pixel (f/1 at 500 nm on 32 µm pixels).
_MIN_LAMBDA_N_PX = 1.0 / 64

# Border modes, named as scipy.ndimage names them: reflect = (d c b a | a b c d),
# constant = zeros, wrap = periodic, nearest = edge value repeated.
_CV2_BORDER = {
    "reflect": cv2.BORDER_REFLECT,
    "constant": cv2.BORDER_CONSTANT,
    "wrap": cv2.BORDER_WRAP,
    "nearest": cv2.BORDER_REPLICATE,
}
_NP_PAD_MODE = {"reflect": "symmetric", "constant": "constant", "wrap": "wrap", "nearest": "edge"}


def load_kernel(path: str | Path, *, channels: int | None = None) -> np.ndarray:
    """Load a user PSF from a ``.npy`` file and normalise it to sum 1 (per channel).

    The file holds a non-negative finite (h, w) kernel (all channels) or (h, w, C)
    (one per channel). An even side is made odd by appending a zero row/column, so the
    kernel's centre stays at index (h // 2, w // 2), as in ``scipy.ndimage``.

    Returns
    -------
    (h, w) or (C, h, w) float64 array, each kernel summing to 1.

    Raises
    ------
    StageError (key ``kernel_path``) if the file is missing, unreadable or unfit.
    """
    path = Path(path)
    key = "kernel_path"
    if not path.is_file():
        raise StageError(f"PSF kernel file not found: {path}", key=key)
    try:
        kernel = np.load(path, allow_pickle=False, mmap_mode="r")  # header checked, not read
    except (OSError, ValueError) as err:
        raise StageError(f"cannot read PSF kernel {path} as a .npy array: {err}", key=key) from err
    if not isinstance(kernel, np.ndarray):
        raise StageError(f"PSF kernel {path} must be one .npy array", key=key)
    side = 2 * MAX_KERNEL_RADIUS_PX + 1
    if kernel.ndim in (2, 3) and max(kernel.shape[:2]) > side:
        raise StageError(
            f"PSF kernel {path} is {kernel.shape[0]}×{kernel.shape[1]} px, more than "
            f"{side}×{side} px{_RADIUS_HINT}",
            key=key,
        )
    if not np.issubdtype(kernel.dtype, np.number) or np.issubdtype(
        kernel.dtype, np.complexfloating
    ):
        raise StageError(f"PSF kernel {path} must be real numbers, got {kernel.dtype}", key=key)
    kernel = kernel.astype(np.float64)
    if kernel.ndim == 3:
        if channels is not None and kernel.shape[2] != channels:
            raise StageError(
                f"PSF kernel {path} has {kernel.shape[2]} channels, the image has {channels}",
                key=key,
            )
        kernel = np.moveaxis(kernel, 2, 0)
    elif kernel.ndim != 2:
        raise StageError(
            f"PSF kernel {path} must be (h, w) or (h, w, C), got shape {kernel.shape}", key=key
        )
    if kernel.size == 0 or not np.isfinite(kernel).all():
        raise StageError(f"PSF kernel {path} is empty or holds NaN/inf", key=key)
    if (kernel < 0).any():
        raise StageError(f"PSF kernel {path} has negative values; a PSF is >= 0", key=key)
    sums = kernel.sum(axis=(-2, -1), keepdims=True)
    if not (sums > 0).all():
        raise StageError(f"PSF kernel {path} sums to 0", key=key)
    kernel = kernel / sums
    pad_h, pad_w = 1 - kernel.shape[-2] % 2, 1 - kernel.shape[-1] % 2
    if pad_h or pad_w:
        widths = [(0, 0)] * (kernel.ndim - 2) + [(0, pad_h), (0, pad_w)]
        kernel = np.pad(kernel, widths)
    return kernel


def relative_illumination(height: int, width: int, *, corner_field_deg: float) -> np.ndarray:
    """cos⁴ law of natural vignetting: relative image-plane illuminance, 1 at the centre.

    A pixel at distance r from the optical axis (the image centre) sees the exit pupil
    at field angle θ with tan θ = r / d; its illuminance falls as cos⁴ θ. The exit-pupil
    distance d (px) is set by the field angle at the image corner:
    d = r_corner / tan(corner_field_deg).

    Parameters
    ----------
    height, width : image size, px.
    corner_field_deg : chief-ray angle at the corner, degrees (0 → no vignetting).

    Returns
    -------
    (height, width) float64 map in (0, 1].

    References
    ----------
    W. J. Smith, Modern Optical Engineering, 4th ed., 2008, section 6.3 (cos⁴ law).
    """
    yc, xc = (height - 1) / 2.0, (width - 1) / 2.0
    r_corner = math.hypot(yc, xc)
    if corner_field_deg == 0 or r_corner == 0:
        return np.ones((height, width))
    y = np.arange(height) - yc
    x = np.arange(width) - xc
    tan_theta = (
        np.hypot(y[:, None], x[None, :]) / r_corner * math.tan(math.radians(corner_field_deg))
    )
    return 1.0 / (1.0 + tan_theta**2) ** 2


def _as_batch(x: np.ndarray) -> tuple[np.ndarray, bool]:
    if x.ndim == 3:
        return x[None], True
    if x.ndim != 4:
        raise ValueError(f"expected (H, W, C) or (N, H, W, C) planes, got shape {x.shape}")
    return x, False


def apply_psf(
    planes: np.ndarray,
    kernel: np.ndarray,
    *,
    edge: EdgeMode = "reflect",
    method: Literal["auto", "direct", "fft"] = "auto",
) -> np.ndarray:
    """Convolve colour planes with a PSF (true convolution, not correlation).

    Parameters
    ----------
    planes : (N, H, W, C) or (H, W, C) float array.
    kernel : (h, w) applied to every channel, or (C, h, w) one per channel; odd sides,
        centred at (h // 2, w // 2).
    edge : how values beyond the border are made up (scipy.ndimage's names):
        reflect (d c b a | a b c d), constant (zeros), wrap (periodic), nearest.
    method : ``direct`` uses cv2.filter2D (which itself switches to a DFT for kernels
        from about 11×11), ``fft`` uses scipy.signal.fftconvolve, ``auto`` picks fft for
        kernels of side ≥ ``FFT_MIN_KERNEL_SIDE`` or larger than the image.

    Returns
    -------
    Blurred planes, same shape and float dtype.
    """
    x, squeeze = _as_batch(np.asarray(planes))
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
    kernel = np.asarray(kernel)
    per_channel = kernel.ndim == 3
    kh, kw = kernel.shape[-2:]
    if kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f"kernel sides must be odd, got {kernel.shape}")
    if per_channel and kernel.shape[0] != x.shape[3]:
        raise ValueError(f"{kernel.shape[0]} kernels for {x.shape[3]} channels")
    ry, rx = kh // 2, kw // 2
    too_big = ry >= x.shape[1] or rx >= x.shape[2]
    if method == "auto":
        method = "fft" if max(kh, kw) >= FFT_MIN_KERNEL_SIDE or too_big else "direct"
    kernel = kernel.astype(x.dtype)
    if method == "fft" or too_big:
        import scipy.signal  # imported here: it costs ~1 s at start-up and is rarely needed

        padded = np.pad(x, ((0, 0), (ry, ry), (rx, rx), (0, 0)), mode=_NP_PAD_MODE[edge])
        if per_channel:
            out = np.empty_like(x)
            for c in range(x.shape[3]):
                out[..., c] = scipy.signal.fftconvolve(
                    padded[..., c], kernel[c][None], mode="valid", axes=(1, 2)
                )
        else:
            out = scipy.signal.fftconvolve(
                padded, kernel[None, :, :, None], mode="valid", axes=(1, 2)
            )
        out = out.astype(x.dtype, copy=False)
    else:
        flipped = np.ascontiguousarray(kernel[..., ::-1, ::-1])  # filter2D correlates
        out = np.empty_like(x)

        def blur(i: int) -> None:
            if per_channel:
                for c in range(x.shape[3]):
                    out[i, ..., c] = _filter_image(x[i, ..., c], flipped[c], None, edge)
            else:
                _filter_image(x[i], flipped, None, edge, out[i])

        _per_image(len(x), blur)
    return out[0] if squeeze else out


def _per_image(count: int, fn: Callable[[int], None]) -> None:
    """``fn(i)`` for every image i of a batch, spread over the worker threads (OpenCV
    releases the GIL; a single large image uses OpenCV's own threads)."""
    run_parallel([functools.partial(fn, i) for i in range(count)])


def _filter_image(
    image: np.ndarray,
    kernel2d: np.ndarray | None,
    kernel1d: np.ndarray | None,
    edge: EdgeMode,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """One (H, W[, C]) image through cv2.filter2D or cv2.sepFilter2D with the edge mode.

    ``out`` (optional, the image's shape and dtype, C-contiguous) receives the result:
    OpenCV then writes into it, with no copy. Returns the result (``out`` when given).
    """
    image = np.ascontiguousarray(image)
    if kernel1d is not None:
        ry = rx = len(kernel1d) // 2
    else:
        ry, rx = kernel2d.shape[0] // 2, kernel2d.shape[1] // 2
    border = _CV2_BORDER[edge]
    crop = edge == "wrap"  # cv2's filters refuse BORDER_WRAP: pad explicitly, then crop
    if crop:
        image = cv2.copyMakeBorder(image, ry, ry, rx, rx, cv2.BORDER_WRAP)
        border = cv2.BORDER_CONSTANT
    dst = out if out is not None and not crop and out.shape == image.shape else None
    if kernel1d is not None:
        res = cv2.sepFilter2D(image, -1, kernel1d, kernel1d, dst=dst, borderType=border)
    else:
        res = cv2.filter2D(image, -1, kernel2d, dst=dst, borderType=border)
    if crop:
        res = res[ry : res.shape[0] - ry, rx : res.shape[1] - rx]
    if out is None:
        return res
    if res is not out:  # OpenCV allocated (a cropped or reshaped result): copy it in
        out[...] = res.reshape(out.shape)
    return out


def gaussian_blur(
    planes: np.ndarray,
    sigma_px: float,
    *,
    edge: EdgeMode = "reflect",
    pixel_integrated: bool = True,
) -> np.ndarray:
    """Separable Gaussian blur of (N, H, W, C) planes with :func:`sensors.psf.gaussian_kernel1d`.

    ``pixel_integrated=False`` equals ``scipy.ndimage.gaussian_filter(planes, (0, sigma_px,
    sigma_px, 0), mode=edge)`` up to float rounding. Computed with cv2.sepFilter2D.
    """
    return separable_blur(
        planes, gaussian_kernel1d(sigma_px, pixel_integrated=pixel_integrated), edge=edge
    )


def separable_blur(
    planes: np.ndarray, kernel1d: np.ndarray, *, edge: EdgeMode = "reflect"
) -> np.ndarray:
    """Convolve (N, H, W, C) planes with the separable kernel ``outer(kernel1d, kernel1d)``.

    ``kernel1d`` has odd length and is symmetric (so convolution equals correlation).
    """
    x, squeeze = _as_batch(np.asarray(planes))
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
    k1 = np.asarray(kernel1d).astype(x.dtype)
    radius = len(k1) // 2
    if radius == 0:
        return (x[0] if squeeze else x) * k1[0]
    if radius >= x.shape[1] or radius >= x.shape[2]:
        out = apply_psf(x, np.outer(k1, k1), edge=edge, method="fft")
        return out[0] if squeeze else out
    out = np.empty_like(x)

    def blur(i: int) -> None:
        _filter_image(x[i], None, k1, edge, out[i])

    _per_image(len(x), blur)
    return out[0] if squeeze else out


def transfer_grid(height: int, width: int, edge: Literal["reflect", "wrap"]) -> tuple:
    """The frequencies (cycles/px) at which :func:`apply_transfer` needs the transfer.

    ``wrap``: the DFT's, ``fftfreq(H)`` × ``rfftfreq(W)``; ``reflect``: the DCT-II's,
    k/(2H) × l/(2W) for k < H, l < W (the mirrored image has period 2H × 2W).
    """
    if edge == "wrap":
        return np.fft.fftfreq(height), np.fft.rfftfreq(width)
    return np.arange(height) / (2.0 * height), np.arange(width) / (2.0 * width)


def apply_transfer(
    planes: np.ndarray, transfer: np.ndarray, *, edge: Literal["reflect", "wrap"]
) -> np.ndarray:
    """Convolve planes with an even PSF given by its aliased transfer function, exactly.

    With periodic (``wrap``) borders a convolution is circular: the image's DFT times
    the transfer T(fy, fx) = Σ_taps k[i, j]·e^{−2πi(fy·i + fx·j)}, for any kernel size.
    With ``reflect`` borders it is circular on the mirrored image of period 2H × 2W;
    for a kernel even in both axes that is the image's DCT-II times T(k/2H, l/2W)
    (Martucci, IEEE Trans. Signal Process. 42(5), 1994: symmetric convolution).

    Parameters
    ----------
    planes : (N, H, W, C) float array.
    transfer : (C, len(fy), len(fx)) or (len(fy), len(fx)) real transfer on
        :func:`transfer_grid`'s frequencies.
    edge : reflect or wrap.

    Returns
    -------
    Blurred planes, same shape and float dtype.
    """
    x = np.asarray(planes)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
    t = np.asarray(transfer, dtype=x.dtype)
    t = np.moveaxis(t, 0, -1) if t.ndim == 3 else t[..., None]  # (fy, fx, C)
    height, width = x.shape[1:3]
    if edge == "wrap":
        spectrum = scipy.fft.rfft2(x, axes=(1, 2))
        spectrum *= t
        out = scipy.fft.irfft2(spectrum, s=(height, width), axes=(1, 2))
    else:
        spectrum = scipy.fft.dctn(x, type=2, axes=(1, 2))
        spectrum *= t
        out = scipy.fft.idctn(spectrum, type=2, axes=(1, 2))
    return out.astype(x.dtype, copy=False)


def convolve_nearest(planes: np.ndarray, taps: np.ndarray, line_spread: np.ndarray) -> np.ndarray:
    """Convolve planes with an even PSF under ``nearest`` borders, exactly, at any PSF size.

    Beyond the border the edge values repeat for ever, so an edge pixel gathers the PSF
    over a half-plane and a corner pixel over a quadrant. For a PSF even in both axes
    whose line spread is the same along both (an isotropic PSF), those infinite sums
    follow from its taps within the image's span and its line spread
    (:func:`_quadrant_tails`). The result is the zero-border convolution plus, for each
    edge pixel, the weight it gathers beyond its single tap.

    Parameters
    ----------
    planes : (N, H, W, C) float array.
    taps : (C, 2M+1, 2M+1) pixel taps of the untruncated PSF, M ≥ max(H, W).
    line_spread : (C, 2M+1), L[t] = Σ_e k[t, e] over all e (the whole PSF sums to 1).

    Returns
    -------
    Blurred planes, same shape and float dtype.
    """
    x = np.asarray(planes)
    height, width, channels = x.shape[1:]
    m = taps.shape[-1] // 2
    out = apply_psf(x, taps, edge="constant").astype(np.float64)
    rows_y, rows_x = _clamp_intervals(height, m), _clamp_intervals(width, m)
    edge_rows, inner_rows = sorted({0, height - 1}), list(range(1, height - 1))
    edge_cols = sorted({0, width - 1})
    for c in range(channels):
        u = _quadrant_tails(taps[c], line_spread[c])
        for rows, cols in ((edge_rows, list(range(width))), (inner_rows, edge_cols)):
            if rows:
                extra = _extra_weights(u, taps[c], rows_y, rows_x, rows, cols)
                out[..., c] += np.einsum("ijab,nab->nij", extra, x[:, rows][:, :, cols, c])
    return out.astype(x.dtype, copy=False)


def _extra_weights(
    u: np.ndarray,
    taps: np.ndarray,
    rows_y: tuple[np.ndarray, np.ndarray],
    rows_x: tuple[np.ndarray, np.ndarray],
    rows: list[int],
    cols: list[int],
) -> np.ndarray:
    """(i, j, a, b): what source pixel (a, b) adds to output (i, j) beyond its single tap."""
    m = taps.shape[0] // 2
    ly, hy = (r[:, rows][:, None, :, None] for r in rows_y)
    lx, hx = (r[:, cols][None, :, None, :] for r in rows_x)
    box = u[ly, lx] - u[hy, lx] - u[ly, hx] + u[hy, hx]
    dy = np.arange(rows_y[0].shape[0])[:, None] - np.asarray(rows)[None, :] + m
    dx = np.arange(rows_x[0].shape[0])[:, None] - np.asarray(cols)[None, :] + m
    return box - taps[dy[:, None, :, None], dx[None, :, None, :]]


def _quadrant_tails(taps: np.ndarray, line_spread: np.ndarray) -> np.ndarray:
    """U[d, e] = Σ_{d' ≥ d, e' ≥ e} k[d', e'] over the whole PSF, as a lookup table.

    Rows and columns 0 … 2M+1 hold d, e = −M … M+1; index 2M+2 stands for −∞ and 2M+3
    for +∞. From evenness: Σ_{d',e' ≥ 1} k = (1 − 2·L[0] + k[0,0])/4, a strip
    Σ_{d' ≥ 1} k[d', c] = (L[c] − k[0, c])/2, G[t] = Σ_{t' ≥ t} L[t'] with G[1] = (1 − L[0])/2,
    and U[d ≤ 0, e] = G[e] − U[1 − d, e], U[d, e ≤ 0] = G[d] − U[d, 1 − e].
    """
    m = taps.shape[0] // 2
    k, half = taps[m:, m:], line_spread[m:]  # d, e, t = 0 … M
    g_pos = (1.0 - half[0]) / 2.0 - np.concatenate([[0.0], np.cumsum(half[1:])])  # t = 1 … M+1
    strip = np.concatenate([[0.0], np.cumsum((half[1:] - k[1:, 0]) / 2.0)])
    block = np.zeros((m + 1, m + 1))
    block[1:, 1:] = np.cumsum(np.cumsum(k[1:, 1:], axis=0), axis=1)
    u_pos = (1.0 - 2.0 * half[0] + k[0, 0]) / 4.0 - strip[:, None] - strip[None, :] + block
    size = 2 * m + 2
    g = np.concatenate([1.0 - g_pos[::-1], g_pos])  # t = −M … M+1
    table = np.zeros((size + 2, size + 2))
    u = table[:size, :size]
    u[m + 1 :, m + 1 :] = u_pos
    u[: m + 1, m + 1 :] = g[None, m + 1 :] - u_pos[::-1, :]
    u[:, : m + 1] = g[:, None] - u[:, m + 1 :][:, ::-1]
    table[size, :size] = g  # d = −∞
    table[:size, size] = g  # e = −∞
    table[size, size] = 1.0
    return table


def _clamp_intervals(size: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Table rows of the first offset and one past the last, d = i − i', of the source
    positions i' that ``nearest`` clamps to pixel a, for every (i, a): (size, size) each."""
    offset = np.arange(size)[:, None] - np.arange(size)[None, :] + m
    lo, hi = offset.copy(), offset + 1
    lo[:, -1] = 2 * m + 2  # a = size − 1 gathers i' ≥ a: d down to −∞
    hi[:, 0] = 2 * m + 3  # a = 0 gathers i' ≤ 0: d up to +∞
    return lo, hi


class OpticsStage(Stage):
    """Photon planes → photon planes blurred by a PSF, with optional cos⁴ vignetting."""

    name = "optics"
    kind = "optics"
    takes = (Unit.PHOTONS,)
    gives = Unit.PHOTONS

    class Params(StageParams):
        psf: Literal["none", "gaussian", "gaussian_point", "airy", "defocus", "kernel"] = param(
            "gaussian",
            doc="Point spread function, integrated over the pixel's area (gaussian_point: "
            "the Gaussian sampled at pixel centres, as scipy.ndimage.gaussian_filter; its "
            "MTF at Nyquist is 0.338 at σ 0.6 px, the pixel-integrated one's 0.216).",
        )
        sigma_px: float = param(0.7, unit="px", doc="Gaussian PSF standard deviation.", ge=0)
        defocus_radius_px: float = param(1.0, unit="px", doc="Defocus blur disk radius.", ge=0)
        chromatic_defocus_px_per_nm: float = param(
            0.0,
            unit="px/nm",
            doc="Defocus: blur-disk radius change per nm away from focus_wavelength_nm "
            "(longitudinal chromatic aberration; each channel at its wavelength).",
        )
        focus_wavelength_nm: float = param(
            550.0, unit="nm", doc="Defocus: the wavelength whose blur is defocus_radius_px.", gt=0
        )
        kernel_path: str | None = param(
            None,
            doc="User PSF: a .npy file, (h, w) or (h, w, C); normalised to sum 1.",
            path=True,
        )
        f_number: float | None = param(
            None, doc="Airy: lens f-number (default: the scene's f_number).", gt=0
        )
        pixel_pitch_um: float | None = param(
            None, unit="µm", doc="Airy: pixel pitch (default: the scene's pixel_pitch_um).", gt=0
        )
        wavelength_nm: tuple[float, ...] | None = param(
            None, unit="nm", doc="Airy: one wavelength per channel (default: the scene's)."
        )
        psf_radius_px: int | None = param(
            None,
            unit="px",
            doc="Truncate the kernel at this half-width and renormalise (default: round(4σ) "
            "Gaussian, the disk, the untruncated Airy PSF).",
            ge=0,
            le=MAX_KERNEL_RADIUS_PX,
        )
        edge: EdgeMode = param("reflect", doc="Border handling: reflect, constant, wrap, nearest.")
        convolution: Literal["auto", "direct", "fft"] = param(
            "auto",
            doc="Convolution method for kernels (auto picks FFT for large kernels); an "
            "untruncated Airy PSF is applied through its transfer function.",
        )
        vignetting_corner_deg: float = param(
            0.0,
            unit="deg",
            doc="cos⁴ vignetting: chief-ray field angle at the image corner (0 = none).",
            ge=0,
            lt=90,
        )

    def setup(self, info: SignalInfo) -> SignalInfo:
        if info.is_mosaic or len(info.shape) != 3:
            raise StageError(
                "optics takes colour planes (H, W, C) of photons; light is blurred before a "
                f"colour filter array samples it, so put optics before the photodetector "
                f"(got shape {info.shape})",
                key="stage",
            )
        height, width, channels = info.shape
        p = self.params
        self._kernel: np.ndarray | None = None  # a 2-D kernel (or one per channel)
        self._kernel1d: np.ndarray | None = None  # a separable kernel
        self._transfer: np.ndarray | None = None  # (C, fy, fx) on transfer_grid
        self._line_spread: np.ndarray | None = None  # (C, 2M+1) for exact nearest borders
        if p.psf in ("gaussian", "gaussian_point"):
            self._gaussian(p.psf == "gaussian")
        elif p.psf == "defocus":
            radii = self._defocus_radii_px(info, channels)
            _check_radius(defocus_radius_of_kernel_px(max(radii)), "defocus_radius_px")
            reach = p.psf_radius_px
            if reach is None:
                reach = max(defocus_radius_of_kernel_px(r) for r in radii)
            kernels = [_recrop(defocus_psf(r), reach) for r in radii]
            self._kernel = kernels[0] if len(radii) == 1 else np.stack(kernels)
        elif p.psf == "kernel":
            if p.kernel_path is None:
                raise StageError("psf: kernel needs kernel_path (a .npy file)", key="kernel_path")
            self._kernel = load_kernel(p.kernel_path, channels=channels)
        elif p.psf == "airy":
            self._airy(self._lambda_n_px(info, channels), height, width)
        dtype = info.dtype if np.issubdtype(info.dtype, np.floating) else np.dtype(np.float32)
        self._dtype = dtype
        self._vignetting = None
        if p.vignetting_corner_deg > 0:
            ri = relative_illumination(height, width, corner_field_deg=p.vignetting_corner_deg)
            self._vignetting = ri.astype(dtype)[:, :, None]
        return info.evolve(unit=Unit.PHOTONS, dtype=dtype)

    def _gaussian(self, pixel_integrated: bool) -> None:
        p = self.params
        radius = gaussian_radius_px(p.sigma_px) if p.psf_radius_px is None else p.psf_radius_px
        _check_radius(radius, "sigma_px")
        k1 = gaussian_kernel1d(p.sigma_px, radius_px=radius, pixel_integrated=pixel_integrated)
        if p.convolution == "fft":
            self._kernel = np.outer(k1, k1)
        else:
            self._kernel1d = k1

    def _defocus_radii_px(self, info: SignalInfo, channels: int) -> list[float]:
        """The blur-disk radius of every channel, px: one value without chromatic defocus,
        else |r + k·(λ_c − λ_focus)| at each channel's wavelength (the scene's)."""
        p = self.params
        if p.chromatic_defocus_px_per_nm == 0:
            return [p.defocus_radius_px]
        wavelengths = info.attr("wavelength_nm")
        if wavelengths is None or len(wavelengths) != channels:
            raise StageError(
                f"chromatic defocus needs one wavelength per channel ({channels}) from the scene",
                key="chromatic_defocus_px_per_nm",
            )
        slope, focus = p.chromatic_defocus_px_per_nm, p.focus_wavelength_nm
        return [abs(p.defocus_radius_px + slope * (w - focus)) for w in wavelengths]

    def _lambda_n_px(self, info: SignalInfo, channels: int) -> list[float]:
        """λ·N in pixels for each channel, from this stage's parameters or the scene's."""
        p = self.params
        values = {}
        for key in ("f_number", "pixel_pitch_um", "wavelength_nm"):
            value = getattr(p, key)
            if value is None:
                value = info.attr(key)
            if value is None:
                raise StageError(
                    f"psf: airy needs {key}: set it here or in the scene stage", key=key
                )
            values[key] = value
        wavelengths = tuple(float(w) for w in values["wavelength_nm"])
        if len(wavelengths) != channels or any(w <= 0 for w in wavelengths):
            raise StageError(
                f"need {channels} positive wavelengths (one per channel), got {wavelengths}",
                key="wavelength_nm",
            )
        lambda_n = [w * 1e-3 * values["f_number"] / values["pixel_pitch_um"] for w in wavelengths]
        if min(lambda_n) < _MIN_LAMBDA_N_PX:
            raise StageError(
                f"psf: airy: λN = {min(lambda_n):.3g} px is below 1/64 px (the "
                "diffraction spot is far smaller than a pixel); use psf: none",
                key="f_number",
            )
        return lambda_n

    def _airy(self, lambda_n: list[float], height: int, width: int) -> None:
        p = self.params
        if p.psf_radius_px is not None:  # the user's truncation, renormalised
            self._kernel = np.stack([_airy_kernel(ln, p.psf_radius_px) for ln in lambda_n])
            return
        if p.edge in ("constant", "nearest"):  # taps beyond the image's span: exact
            radius = max(height, width)
            self._kernel = np.stack([_airy_kernel(ln, radius, normalise=False) for ln in lambda_n])
            if p.edge == "nearest":
                self._line_spread = np.stack([airy_line_spread(ln, radius) for ln in lambda_n])
            return
        fy, fx = transfer_grid(height, width, p.edge)
        self._transfer = np.stack([airy_transfer(fy, fx, ln) for ln in lambda_n])

    def process(self, x: np.ndarray, batch: Batch) -> np.ndarray:
        x = np.asarray(x, dtype=self._dtype)
        p = self.params
        if self._kernel1d is not None:
            out = separable_blur(x, self._kernel1d, edge=p.edge)
        elif self._line_spread is not None:
            out = convolve_nearest(x, self._kernel, self._line_spread)
        elif self._kernel is not None:
            out = apply_psf(x, self._kernel, edge=p.edge, method=p.convolution)
        elif self._transfer is not None:
            out = apply_transfer(x, self._transfer, edge=p.edge)
        else:
            out = x.copy()
        if self._vignetting is not None:
            out *= self._vignetting
        return out


_RADIUS_HINT = " (set SENSORLAB_MAX_KERNEL_RADIUS_PX to allow more)"


def _check_radius(radius_px: int, key: str) -> None:
    """Refuse a kernel half-width beyond MAX_KERNEL_RADIUS_PX before allocating it."""
    if radius_px > MAX_KERNEL_RADIUS_PX:
        raise StageError(
            f"the PSF needs a kernel half-width of {radius_px} px, more than "
            f"{MAX_KERNEL_RADIUS_PX} px{_RADIUS_HINT}",
            key=key,
        )


def _airy_kernel(lambda_n_px: float, radius_px: int, *, normalise: bool = True) -> np.ndarray:
    """The Airy taps within ``radius_px``, renormalised or not (StageError if too costly)."""
    try:
        kernel = airy_taps(lambda_n_px, radius_px)
    except ValueError as err:
        if normalise:
            raise StageError(str(err), key="psf_radius_px") from None
        raise StageError(
            f"{err}; use edge: reflect or wrap (exact at any size)", key="edge"
        ) from None
    return kernel / kernel.sum() if normalise else kernel


def _recrop(kernel: np.ndarray, radius_px: int) -> np.ndarray:
    """Crop or zero-pad a centred odd kernel to half-width ``radius_px`` and renormalise."""
    r0 = kernel.shape[0] // 2
    if radius_px >= r0:
        pad = radius_px - r0
        return np.pad(kernel, pad)
    k = kernel[r0 - radius_px : r0 + radius_px + 1, r0 - radius_px : r0 + radius_px + 1]
    return k / k.sum()

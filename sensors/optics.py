"""Optics: blur the photon image with a point spread function, then vignetting.

Light is blurred before it is detected, so this stage takes colour planes
(N, H, W, C) of photons and gives planes of photons; a mosaic is refused.

PSFs (each normalised to sum to 1, so the blur conserves photons):

* ``gaussian``: point-sampled Gaussian of ``sigma_px`` truncated at ``4·sigma_px``
  (scipy.ndimage's convention), applied separably.
* ``airy``: the diffraction-limited PSF of a circular aperture, from the f-number, each
  channel's wavelength and the pixel pitch, integrated over the pixel's area.
* ``defocus``: a uniform disk (geometric defocus), integrated over the pixel's area.
* ``kernel``: a user kernel from a ``.npy`` file, (h, w) for all channels or
  (h, w, C) per channel.

Pixel integration: a pixel collects the PSF over its square area, so each kernel tap
is the mean of ``supersample × supersample`` point samples spread evenly over the
pixel (a midpoint rule), not a single sample at its centre.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import scipy.special

from pipeline.stage import Batch, SignalInfo, Stage, StageError, StageParams, Unit, param

__all__ = [
    "FFT_MIN_KERNEL_SIDE",
    "OpticsStage",
    "airy_psf",
    "apply_psf",
    "defocus_psf",
    "gaussian_blur",
    "gaussian_kernel1d",
    "gaussian_psf",
    "load_kernel",
    "relative_illumination",
]

EdgeMode = Literal["reflect", "constant", "wrap", "nearest"]

# Kernels at least this wide (in px) go through scipy's FFT convolution under
# ``convolution: auto``. Below it, cv2.filter2D is faster: it is direct for small
# kernels and switches to its own DFT from about 11×11; measured on the 2-core
# development machine, scipy.signal.fftconvolve overtakes it near 101–151 px.
FFT_MIN_KERNEL_SIDE = 127

# Border modes, named as scipy.ndimage names them: reflect = (d c b a | a b c d),
# constant = zeros, wrap = periodic, nearest = edge value repeated.
_CV2_BORDER = {
    "reflect": cv2.BORDER_REFLECT,
    "constant": cv2.BORDER_CONSTANT,
    "wrap": cv2.BORDER_WRAP,
    "nearest": cv2.BORDER_REPLICATE,
}
_NP_PAD_MODE = {"reflect": "symmetric", "constant": "constant", "wrap": "wrap", "nearest": "edge"}

# First dark ring of the Airy pattern: the first zero of J1(x) is x = 3.8317, i.e.
# r = 1.2197 λN. The auto radius covers five dark rings (the fifth zero of J1 is at
# x = 16.4706, r = 5.243 λN), which holds ≈ 96 % of the energy before renormalising.
_AIRY_AUTO_RADIUS_LAMBDA_N = 16.470630050877634 / math.pi


def gaussian_kernel1d(sigma_px: float, *, radius_px: int | None = None) -> np.ndarray:
    """1-D point-sampled Gaussian, normalised to sum 1; radius ``int(4·sigma_px + 0.5)``.

    Identical to the kernel ``scipy.ndimage.gaussian_filter`` uses (``truncate=4.0``).
    ``sigma_px == 0`` gives the identity ``[1.0]``.
    """
    if sigma_px < 0:
        raise ValueError("sigma_px must be >= 0")
    if sigma_px == 0:
        return np.ones(1)
    radius = int(4.0 * sigma_px + 0.5) if radius_px is None else int(radius_px)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    phi = np.exp(-0.5 * (x / sigma_px) ** 2)
    return phi / phi.sum()


def gaussian_psf(sigma_px: float, *, radius_px: int | None = None) -> np.ndarray:
    """2-D Gaussian PSF (outer product of :func:`gaussian_kernel1d`), sums to 1."""
    k = gaussian_kernel1d(sigma_px, radius_px=radius_px)
    return np.outer(k, k)


def _pixel_integrated(radius_px: int, supersample: int, intensity) -> np.ndarray:
    """Kernel of side 2·radius+1 whose taps are ``intensity(r)`` averaged over each pixel.

    ``intensity`` takes an array of radial distances (px) from the kernel centre.
    """
    n = 2 * radius_px + 1
    s = int(supersample)
    # Sub-sample centres within a pixel: (j + 0.5)/s - 0.5 for j = 0..s-1.
    sub = (np.arange(s) + 0.5) / s - 0.5
    coords = (np.arange(n)[:, None] - radius_px + sub[None, :]).ravel()
    r = np.hypot(coords[:, None], coords[None, :])
    fine = intensity(r)
    kernel = fine.reshape(n, s, n, s).mean(axis=(1, 3))
    total = kernel.sum()
    if not total > 0:  # the disk missed every sample: it is smaller than a sub-sample
        kernel = np.zeros((n, n))
        kernel[radius_px, radius_px] = 1.0
        return kernel
    return kernel / total


def airy_psf(
    *,
    f_number: float,
    wavelength_nm: float,
    pixel_pitch_um: float,
    radius_px: int | None = None,
    supersample: int = 8,
) -> np.ndarray:
    """Diffraction-limited PSF of an aberration-free circular aperture, integrated over pixels.

    I(r) ∝ [2·J1(x)/x]², x = π·r/(λ·N), whose first zero (first dark ring) lies at
    r = 1.22·λ·N. The kernel is truncated at ``radius_px`` and renormalised to sum 1.

    Parameters
    ----------
    f_number : N (image-space, object at infinity).
    wavelength_nm : λ, nm.
    pixel_pitch_um : pixel pitch, µm (λ·N is converted to pixels with it).
    radius_px : kernel half-width, px; default covers five dark rings (≈ 5.24·λ·N).
    supersample : point samples per pixel along each axis for pixel integration.

    Returns
    -------
    (2·radius+1, 2·radius+1) float64 kernel, sums to 1.

    References
    ----------
    M. Born, E. Wolf, Principles of Optics, 7th ed., Cambridge 1999, section 8.5.2
    (Fraunhofer diffraction at a circular aperture).
    J. W. Goodman, Introduction to Fourier Optics, 3rd ed., 2005, section 6.3.
    """
    lambda_n_px = wavelength_nm * 1e-3 * f_number / pixel_pitch_um
    if radius_px is None:
        radius_px = max(1, math.ceil(_AIRY_AUTO_RADIUS_LAMBDA_N * lambda_n_px))

    def intensity(r: np.ndarray) -> np.ndarray:
        x = np.pi * r / lambda_n_px
        safe = np.where(x == 0, 1.0, x)
        amp = np.where(x == 0, 1.0, 2.0 * scipy.special.j1(safe) / safe)
        return amp * amp

    return _pixel_integrated(int(radius_px), supersample, intensity)


def defocus_psf(radius_px: float, *, supersample: int = 8) -> np.ndarray:
    """Uniform disk of ``radius_px`` (geometric defocus blur), integrated over pixels.

    Each tap is the fraction of the pixel covered by the disk (estimated with
    ``supersample²`` points); the kernel sums to 1. A radius smaller than one
    sub-sample gives the identity kernel.

    References
    ----------
    E. Hecht, Optics, 5th ed., 2017, section 5.7 (depth of field: the blur circle).
    """
    half = max(0, math.ceil(radius_px - 0.5 + 1e-9))
    return _pixel_integrated(half, supersample, lambda r: (r <= radius_px).astype(np.float64))


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
        kernel = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise StageError(f"cannot read PSF kernel {path} as a .npy array: {err}", key=key) from err
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
        for i in range(x.shape[0]):
            if per_channel:
                for c in range(x.shape[3]):
                    out[i, ..., c] = _filter_image(x[i, ..., c], flipped[c], None, edge)
            else:
                res = _filter_image(x[i], flipped, None, edge)
                out[i] = res.reshape(out[i].shape)
    return out[0] if squeeze else out


def _filter_image(
    image: np.ndarray, kernel2d: np.ndarray | None, kernel1d: np.ndarray | None, edge: EdgeMode
) -> np.ndarray:
    """One (H, W[, C]) image through cv2.filter2D or cv2.sepFilter2D with the edge mode."""
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
    if kernel1d is not None:
        out = cv2.sepFilter2D(image, -1, kernel1d, kernel1d, borderType=border)
    else:
        out = cv2.filter2D(image, -1, kernel2d, borderType=border)
    if crop:
        out = out[ry : out.shape[0] - ry, rx : out.shape[1] - rx]
    return out


def gaussian_blur(planes: np.ndarray, sigma_px: float, *, edge: EdgeMode = "reflect") -> np.ndarray:
    """Separable Gaussian blur of (N, H, W, C) planes with the kernel of :func:`gaussian_psf`.

    Equal to ``scipy.ndimage.gaussian_filter(planes, (0, sigma_px, sigma_px, 0),
    mode=edge)`` up to float rounding, computed with cv2.sepFilter2D.
    """
    x, squeeze = _as_batch(np.asarray(planes))
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
    k1 = gaussian_kernel1d(sigma_px).astype(x.dtype)
    radius = len(k1) // 2
    if radius == 0:
        return (x[0] if squeeze else x).copy()
    if radius >= x.shape[1] or radius >= x.shape[2]:
        return apply_psf(planes, np.outer(k1, k1), edge=edge, method="fft")
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        out[i] = _filter_image(x[i], None, k1, edge).reshape(out[i].shape)
    return out[0] if squeeze else out


class OpticsStage(Stage):
    """Photon planes → photon planes blurred by a PSF, with optional cos⁴ vignetting."""

    name = "optics"
    kind = "optics"
    takes = (Unit.PHOTONS,)
    gives = Unit.PHOTONS

    class Params(StageParams):
        psf: Literal["none", "gaussian", "airy", "defocus", "kernel"] = param(
            "gaussian", doc="Point spread function."
        )
        sigma_px: float = param(0.7, unit="px", doc="Gaussian PSF standard deviation.", ge=0)
        defocus_radius_px: float = param(1.0, unit="px", doc="Defocus blur disk radius.", ge=0)
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
            doc="Kernel half-width (default: 4σ Gaussian, 5 dark rings Airy, the disk radius).",
            ge=0,
            le=512,
        )
        supersample: int = param(
            8,
            doc="Sub-samples per pixel side for pixel-integrated PSFs (airy, defocus).",
            ge=1,
            le=64,
        )
        edge: EdgeMode = param("reflect", doc="Border handling: reflect, constant, wrap, nearest.")
        convolution: Literal["auto", "direct", "fft"] = param(
            "auto", doc="Convolution method (auto picks FFT for large kernels)."
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
        self._kernel: np.ndarray | None = None
        self._sigma_px: float | None = None
        if p.psf == "gaussian":
            if p.psf_radius_px is None and p.convolution != "fft":
                self._sigma_px = p.sigma_px  # separable fast path
            else:
                self._kernel = gaussian_psf(p.sigma_px, radius_px=p.psf_radius_px)
        elif p.psf == "defocus":
            self._kernel = defocus_psf(p.defocus_radius_px, supersample=p.supersample)
            if p.psf_radius_px is not None:
                self._kernel = _recrop(self._kernel, p.psf_radius_px)
        elif p.psf == "kernel":
            if p.kernel_path is None:
                raise StageError("psf: kernel needs kernel_path (a .npy file)", key="kernel_path")
            self._kernel = load_kernel(p.kernel_path, channels=channels)
        elif p.psf == "airy":
            self._kernel = self._airy_kernels(info, channels)
        dtype = info.dtype if np.issubdtype(info.dtype, np.floating) else np.dtype(np.float32)
        self._dtype = dtype
        self._vignetting = None
        if p.vignetting_corner_deg > 0:
            ri = relative_illumination(height, width, corner_field_deg=p.vignetting_corner_deg)
            self._vignetting = ri.astype(dtype)[:, :, None]
        return info.evolve(unit=Unit.PHOTONS, dtype=dtype)

    def _airy_kernels(self, info: SignalInfo, channels: int) -> np.ndarray:
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
        lambda_n_max = max(wavelengths) * 1e-3 * values["f_number"] / values["pixel_pitch_um"]
        radius = p.psf_radius_px
        if radius is None:
            radius = max(1, math.ceil(_AIRY_AUTO_RADIUS_LAMBDA_N * lambda_n_max))
        return np.stack(
            [
                airy_psf(
                    f_number=values["f_number"],
                    wavelength_nm=w,
                    pixel_pitch_um=values["pixel_pitch_um"],
                    radius_px=radius,
                    supersample=p.supersample,
                )
                for w in wavelengths
            ]
        )

    def process(self, x: np.ndarray, batch: Batch) -> np.ndarray:
        x = np.asarray(x, dtype=self._dtype)
        p = self.params
        if self._sigma_px is not None:
            out = gaussian_blur(x, self._sigma_px, edge=p.edge)
        elif self._kernel is not None:
            out = apply_psf(x, self._kernel, edge=p.edge, method=p.convolution)
        else:
            out = x.copy()
        if self._vignetting is not None:
            out *= self._vignetting
        return out


def _recrop(kernel: np.ndarray, radius_px: int) -> np.ndarray:
    """Crop or zero-pad a centred odd kernel to half-width ``radius_px`` and renormalise."""
    r0 = kernel.shape[0] // 2
    if radius_px >= r0:
        pad = radius_px - r0
        return np.pad(kernel, pad)
    k = kernel[r0 - radius_px : r0 + radius_px + 1, r0 - radius_px : r0 + radius_px + 1]
    return k / k.sum()

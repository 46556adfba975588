"""Point spread functions of the optics stage, integrated over the pixel's square aperture.

A pixel collects the PSF over its area, so a kernel tap is the integral of the PSF over
a unit square, and the transfer function of the pixel-integrated PSF is the optical
transfer function times the pixel aperture's ``sinc(fx)·sinc(fy)`` (sinc x = sin πx/πx).
Sampling on the pixel grid aliases it: the transfer the image sees is

    T(fx, fy) = Σ_m Σ_n H(fx + m, fy + n) · sinc(fx + m) · sinc(fy + n),

f in cycles/px. Every kernel here is exact, not supersampled:

* Gaussian: the 1-D tap is a difference of error functions; the 2-D kernel is separable.
* Defocus (uniform disk): the tap is the area of the pixel inside the disk, in closed form.
* Airy (diffraction-limited circular aperture): the OTF has a cut-off f_c = 1/(λN), so the
  alias sum is finite; :func:`airy_transfer` evaluates it and :func:`airy_psf` gets taps
  from it by an inverse FFT. The untruncated PSF's energy decays only as 1/r (99.9 %
  needs r ≈ 200·λN), so the optics stage applies the transfer directly for periodic
  borders instead of a kernel (see ``sensors/optics.py``).

References
----------
J. W. Goodman, Introduction to Fourier Optics, 3rd ed., 2005: eq. 6-32 (OTF of a circular
pupil), section 6.3. M. Born, E. Wolf, Principles of Optics, 7th ed., 1999, section 8.5.2
(encircled energy 1 − J0² − J1²). E. Hecht, Optics, 5th ed., 2017, section 5.7 (blur circle).
"""

from __future__ import annotations

import math
import os

import numpy as np
import scipy.fft
import scipy.optimize
import scipy.special

__all__ = [
    "AIRY_ENERGY",
    "MAX_AIRY_GRID",
    "MAX_KERNEL_RADIUS_PX",
    "airy_encircled_energy",
    "airy_energy_radius_px",
    "airy_line_spread",
    "airy_psf",
    "airy_taps",
    "airy_transfer",
    "defocus_psf",
    "defocus_radius_of_kernel_px",
    "gaussian_kernel1d",
    "gaussian_psf",
    "gaussian_radius_px",
]


def _env_limit(name: str, default: int) -> int:
    """A positive integer from environment variable ``name`` (bad or unset: ``default``).

    The same override mechanism as ``pipeline.limits`` (which sensors do not import).
    """
    text = os.environ.get(name, "").strip().replace("_", "")
    return int(text) if text.isdigit() and int(text) > 0 else default


# The largest kernel half-width any PSF may ask for (a 1025×1025 kernel by default);
# environment variable SENSORLAB_MAX_KERNEL_RADIUS_PX raises it.
MAX_KERNEL_RADIUS_PX = _env_limit("SENSORLAB_MAX_KERNEL_RADIUS_PX", 512)

# The largest frequency grid (per side) :func:`airy_taps` builds taps on.
MAX_AIRY_GRID = 4096

# Share of the Airy PSF's energy an explicit (truncated) kernel keeps before it is
# renormalised.
AIRY_ENERGY = 0.999


# -- Gaussian ---------------------------------------------------------------------------
def gaussian_radius_px(sigma_px: float) -> int:
    """Kernel half-width of a Gaussian, px: ``int(4·sigma_px + 0.5)`` (scipy.ndimage's)."""
    return int(4.0 * sigma_px + 0.5)


def gaussian_kernel1d(
    sigma_px: float, *, radius_px: int | None = None, pixel_integrated: bool = True
) -> np.ndarray:
    """1-D Gaussian kernel of standard deviation ``sigma_px``, normalised to sum 1.

    Pixel-integrated (the default), tap i is the Gaussian's mass over [i − ½, i + ½]:
    Φ((i + ½)/σ) − Φ((i − ½)/σ), Φ the normal CDF (a difference of erf). Point-sampled,
    it is exp(−i²/2σ²) (scipy.ndimage.gaussian_filter's kernel). The radius defaults to
    :func:`gaussian_radius_px`; ``sigma_px == 0`` gives the identity ``[1.0]``.
    """
    if sigma_px < 0:
        raise ValueError("sigma_px must be >= 0")
    if sigma_px == 0:
        return np.ones(1)
    radius = gaussian_radius_px(sigma_px) if radius_px is None else int(radius_px)
    x = np.abs(np.arange(-radius, radius + 1, dtype=np.float64))
    # a sub-normal σ overflows x/σ to ±inf: the right limit (Φ(±inf), exp(−inf) are exact)
    with np.errstate(over="ignore"):
        if pixel_integrated:  # upper tails of |x| ∓ ½: no cancellation far from the centre
            upper, lower = -(x - 0.5) / sigma_px, -(x + 0.5) / sigma_px
            taps = scipy.special.ndtr(upper) - scipy.special.ndtr(lower)
        else:
            taps = np.exp(-0.5 * (x / sigma_px) ** 2)
    return taps / taps.sum()


def gaussian_psf(
    sigma_px: float, *, radius_px: int | None = None, pixel_integrated: bool = True
) -> np.ndarray:
    """2-D Gaussian PSF: the outer product of :func:`gaussian_kernel1d`, sums to 1."""
    k = gaussian_kernel1d(sigma_px, radius_px=radius_px, pixel_integrated=pixel_integrated)
    return np.outer(k, k)


# -- defocus ----------------------------------------------------------------------------
def defocus_radius_of_kernel_px(radius_px: float) -> int:
    """Half-width of the kernel that holds a disk of ``radius_px`` centred on a pixel."""
    return max(0, math.ceil(radius_px - 0.5 - 1e-12))


def _quadrant_disk_area(x: np.ndarray, y: np.ndarray, radius: float) -> np.ndarray:
    """Signed area of the disk x² + y² ≤ R² inside the rectangle between (0, 0) and (x, y).

    Odd in x and in y, so a rectangle's area follows by inclusion–exclusion. For
    x, y ≥ 0 (clipped to R): x·y when (x, y) is inside the disk, else
    x_s·y + ∫_{x_s}^{x} √(R² − t²) dt with x_s = √(R² − y²).
    """
    sx, sy = np.sign(x), np.sign(y)
    ax, ay = np.minimum(np.abs(x), radius), np.minimum(np.abs(y), radius)
    xs = np.sqrt(np.maximum(radius**2 - ay**2, 0.0))

    def prim(t):  # ∫_0^t √(R² − u²) du
        return 0.5 * (
            t * np.sqrt(np.maximum(radius**2 - t**2, 0.0)) + radius**2 * np.arcsin(t / radius)
        )

    outside = xs * ay + prim(ax) - prim(np.minimum(xs, ax))
    area = np.where(ax <= xs, ax * ay, outside)
    return sx * sy * area


def defocus_psf(radius_px: float) -> np.ndarray:
    """Uniform disk of ``radius_px`` (geometric defocus), integrated over pixels exactly.

    Tap (i, j) is the area of the unit pixel centred at (i, j) inside the disk, divided
    by the disk's area π R², in closed form (:func:`_quadrant_disk_area`); the kernel
    sums to 1. A radius up to ½ px gives the identity kernel (the disk is inside its pixel).
    """
    if radius_px < 0:
        raise ValueError("radius_px must be >= 0")
    half = defocus_radius_of_kernel_px(radius_px)
    if radius_px <= 0.5:  # the disk lies inside the centre pixel
        return np.ones((1, 1))
    edges = np.arange(-half, half + 2) - 0.5  # pixel borders
    a = _quadrant_disk_area(edges[:, None], edges[None, :], float(radius_px))
    kernel = a[1:, 1:] - a[:-1, 1:] - a[1:, :-1] + a[:-1, :-1]
    kernel = np.maximum(kernel, 0.0)  # an empty pixel's four areas cancel to ±1e-16
    return kernel / kernel.sum()


# -- Airy -------------------------------------------------------------------------------
def airy_encircled_energy(r_px: np.ndarray | float, lambda_n_px: float) -> np.ndarray:
    """Share of the Airy PSF's energy within radius r: 1 − J0(x)² − J1(x)², x = π r/(λN).

    Born & Wolf eq. 8.5.2 (Rayleigh). It grows monotonically to 1, as 1 − 2/(π x) far out.
    """
    x = np.pi * np.asarray(r_px, dtype=np.float64) / lambda_n_px
    return 1.0 - scipy.special.j0(x) ** 2 - scipy.special.j1(x) ** 2


def airy_energy_radius_px(lambda_n_px: float, energy: float = AIRY_ENERGY) -> int:
    """Smallest whole radius, px, whose circle holds ``energy`` of the Airy PSF's energy.

    About 2/(π²(1 − energy))·λN: 203 λN for 99.9 %. A square kernel of this half-width
    holds at least as much (it contains the circle).
    """
    if not 0 < energy < 1:
        raise ValueError("energy must be in (0, 1)")
    upper = 4.0 / (np.pi * (1.0 - energy)) + 10.0  # 1 − EE(x) < 2/(πx)·(1 + small) here
    x = scipy.optimize.brentq(
        lambda v: 1.0 - scipy.special.j0(v) ** 2 - scipy.special.j1(v) ** 2 - energy,
        0.0,
        upper,
        xtol=1e-12,
    )
    r = max(1, math.ceil(x * lambda_n_px / np.pi - 1e-9))
    while airy_encircled_energy(r, lambda_n_px) < energy:  # brentq's last bit
        r += 1
    return r


def _circular_otf(rho: np.ndarray, cutoff: float) -> np.ndarray:
    """OTF of an aberration-free circular pupil (Goodman eq. 6-32), ``rho`` ≥ 0."""
    nu = np.minimum(rho / cutoff, 1.0)
    return (2.0 / np.pi) * (np.arccos(nu) - nu * np.sqrt(1.0 - nu * nu))


def airy_transfer(fy: np.ndarray, fx: np.ndarray, lambda_n_px: float) -> np.ndarray:
    """Aliased transfer of the pixel-integrated Airy PSF on a frequency grid.

    T(fy, fx) = Σ_{m,n} OTF(|(fy + m, fx + n)|)·sinc(fy + m)·sinc(fx + n), OTF of a
    circular pupil with cut-off f_c = 1/(λN) cycles/px; only the finitely many orders
    whose shifted pupil reaches the grid contribute. T is real and even in fy and fx,
    T(0, 0) = 1 (the PSF sums to 1), and its inverse DTFT is the PSF's pixel taps.

    Parameters
    ----------
    fy, fx : 1-D frequencies, cycles/px (any values; the result is periodic with 1).
    lambda_n_px : λ·N in pixels (wavelength × f-number / pixel pitch).

    Returns
    -------
    (len(fy), len(fx)) float64 array.
    """
    fy = np.asarray(fy, dtype=np.float64)
    fx = np.asarray(fx, dtype=np.float64)
    cutoff = 1.0 / lambda_n_px
    out = np.zeros((fy.size, fx.size))
    for m in range(math.floor(-cutoff - fy.max()), math.ceil(cutoff - fy.min()) + 1):
        gy = fy + m
        if np.abs(gy).min() >= cutoff:
            continue
        reach = math.sqrt(max(cutoff**2 - np.abs(gy).min() ** 2, 0.0))
        sy = np.sinc(gy)[:, None]
        for n in range(math.floor(-reach - fx.max()), math.ceil(reach - fx.min()) + 1):
            gx = fx + n
            if np.abs(gx).min() >= reach:
                continue
            rho = np.hypot(gy[:, None], gx[None, :])
            out += _circular_otf(rho, cutoff) * sy * np.sinc(gx)[None, :]
    return out


def airy_psf(
    *,
    f_number: float,
    wavelength_nm: float,
    pixel_pitch_um: float,
    radius_px: int | None = None,
) -> np.ndarray:
    """Diffraction-limited PSF of a circular aperture, integrated over pixels, as a kernel.

    I(r) ∝ [2·J1(x)/x]², x = π·r/(λN), first dark ring at r = 1.22·λN; the taps are its
    integrals over pixels (:func:`airy_taps`). The kernel is truncated at ``radius_px``
    (default :func:`airy_energy_radius_px`: ≥ 99.9 % of the energy) and renormalised.

    Parameters
    ----------
    f_number : N (image-space, object at infinity).
    wavelength_nm : λ, nm.
    pixel_pitch_um : pixel pitch, µm.
    radius_px : kernel half-width, px.

    Returns
    -------
    (2·radius+1, 2·radius+1) float64 kernel, sums to 1.
    """
    lambda_n_px = wavelength_nm * 1e-3 * f_number / pixel_pitch_um
    radius = airy_energy_radius_px(lambda_n_px) if radius_px is None else int(radius_px)
    kernel = airy_taps(lambda_n_px, radius)
    return kernel / kernel.sum()


def airy_taps(lambda_n_px: float, radius_px: int) -> np.ndarray:
    """Pixel taps of the untruncated Airy PSF within ``radius_px`` (not renormalised).

    Their sum is the energy the (2·radius+1)² square holds. Computed as the inverse FFT of
    :func:`airy_transfer` on a grid of P ≥ 2·(2·radius + 1), ≥ 200·λN points: a tap also
    holds the PSF at its images P px away, ~λN/(π³P³) each.
    """
    radius = int(radius_px)
    need = max(2.0 * (2 * radius + 1), 200.0 * lambda_n_px, 64.0)  # float: λN may be huge
    period = scipy.fft.next_fast_len(int(need)) if need <= MAX_AIRY_GRID else math.inf
    if period > MAX_AIRY_GRID:
        raise ValueError(
            f"an Airy kernel of half-width {radius} px at λN = {lambda_n_px:.3g} px needs a "
            f"{need:.3g}² frequency grid, more than {MAX_AIRY_GRID}²"
        )
    freqs = np.fft.fftfreq(period)
    taps = np.fft.fftshift(scipy.fft.ifft2(airy_transfer(freqs, freqs, lambda_n_px)).real)
    c = period // 2
    return np.maximum(taps[c - radius : c + radius + 1, c - radius : c + radius + 1], 0.0)


def airy_line_spread(lambda_n_px: float, radius_px: int) -> np.ndarray:
    """The pixel-integrated Airy PSF summed along one axis, L[t] = Σ_e k[t, e], |t| ≤ radius.

    The inverse DFT of :func:`airy_transfer` on the fx = 0 line, on ≥ 2^16 points (the
    line spread falls as 1/t², so its folded tails add < 1e-9 to a tap). Σ_t L[t] = 1
    over all t.
    """
    radius = int(radius_px)
    period = scipy.fft.next_fast_len(max(4 * (2 * radius + 1), 1 << 16))
    line = scipy.fft.ifft(airy_transfer(np.fft.fftfreq(period), [0.0], lambda_n_px)[:, 0]).real
    return np.concatenate([line[-radius:], line[: radius + 1]]) if radius else line[:1]

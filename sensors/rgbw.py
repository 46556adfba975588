"""RGBW reconstruction that takes luminance from the W pixels and chroma from R, G, B.

An RGBW sensor (W on a checkerboard: half the pixels, no colour filter) collects about
three colour pixels' worth of electrons in each W pixel. The colour-ratio fusion
(``demosaic: rgbw_fusion`` of :class:`sensors.raw.RawStage`) uses them for luminance:

1. ``W``: the dense W plane, measured at the W sites and interpolated at the colour
   sites by normalised convolution with a 3×3 tent (on a checkerboard: the mean of the
   four W neighbours).
2. ``C_c``: each colour plane low-passed by normalised convolution with the tile-period
   tent of the bilinear demosaic, at every pixel (measured values are not kept, so the
   three planes have one resolution).
3. ``Ŵ = Σ_c a_c C_c``: the W a pixel of that colour would see, from the coefficients
   of :func:`w_coefficients` (a least-squares fit of W's QE curve on R, G, B's).
4. ``out_c = C_c · (W + δ) / (max(Ŵ, 0) + δ)``: the colour planes keep their chroma
   (the ratios C_R : C_G : C_B) and take W's detail and level. ``δ`` (``guard``, in the
   normalised units of W) keeps the division finite where the light is near zero; it is
   added to numerator and denominator alike, so the ratio's expectation stays 1 to first
   order and its second-order (Jensen) bias shrinks instead of growing.

On a flat field ``W = Ŵ`` up to the fit's residual and the colour comes back; with
coefficients that hold exactly (RGB mode: W sees ``qe_w`` per photon of every channel)
it comes back exactly, and the luminance ``Σ_c a_c out_c = W + δ·(W − Ŵ)/(Ŵ + δ)``
is W's, so its noise is the W pixels' (about 3× the electrons of a colour pixel).

References
----------
D. R. Cok, "Signal processing method and apparatus for producing interpolated
chrominance values in a sampled color image signal", US patent 4,642,678, 1987 (the
constant-hue, colour-ratio interpolation against a denser luminance channel).
J. T. Compton, J. F. Hamilton et al. (Kodak), "Processing color and panchromatic
pixels", US patent application 11/191,538, filed 2005: a full-resolution panchromatic
image and a low-resolution colour image, combined so the colour takes the panchromatic
detail.
H. Knutsson, C.-F. Westin, "Normalized and differential convolution", CVPR 1993.
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["RgbwFusion", "fusion_guard", "tent_kernel", "w_coefficients", "w_coefficients_flat"]

# Mirror without repeating the edge pixel (scipy.ndimage "mirror"): keeps the CFA phase.
BORDER = cv2.BORDER_REFLECT_101
W_INDEX = 3


def tent_kernel(period: int) -> np.ndarray:
    """Triangle kernel of half-width ``period`` (float64): linear interpolation between
    samples ``period`` apart."""
    i = np.arange(-(period - 1), period, dtype=np.float64)
    return 1.0 - np.abs(i) / period


def w_coefficients(
    qe_rgb: np.ndarray, qe_w: np.ndarray, light_photons: np.ndarray, wb_gains: np.ndarray
) -> np.ndarray:
    """Coefficients ``a`` with ``W ≈ Σ_c a_c C_c`` for white-balanced colour values ``C``.

    Weighted least squares of W's QE curve on the R, G, B curves, the weight per band
    the illuminant's photons: ``min_a Σ_λ L(λ) (QE_W(λ) − Σ_c a_c QE_c(λ))²``; then one
    scale so the perfect white under the light gives ``Ŵ = W`` exactly (a grey's level
    does not depend on the fit's residual); then divided by the white-balance gains
    (``C_c = g_c · e_c``).

    Parameters
    ----------
    qe_rgb : (3, B) QE of R, G, B at the band centres, e⁻/photon.
    qe_w : (B,) QE of the W pixels.
    light_photons : (B,) the illuminant's photons per band (any scale).
    wb_gains : (3,) the gains applied to R, G, B before the fusion.

    Returns
    -------
    (3,) float64 coefficients.
    """
    qe_rgb = np.asarray(qe_rgb, dtype=np.float64)
    qe_w = np.asarray(qe_w, dtype=np.float64)
    root = np.sqrt(np.asarray(light_photons, dtype=np.float64))
    a, *_ = np.linalg.lstsq((qe_rgb * root).T, qe_w * root, rcond=None)
    white_rgb = qe_rgb @ light_photons
    scale = float(qe_w @ light_photons) / float(a @ white_rgb)
    return scale * a / np.asarray(wb_gains, dtype=np.float64)


def w_coefficients_flat(qe_rgb: np.ndarray, qe_w: float, wb_gains: np.ndarray) -> np.ndarray:
    """RGB mode's exact coefficients: a W pixel sees ``qe_w`` per photon of each of the
    three channels, a colour pixel ``qe_c`` of its own, so ``W = Σ_c (qe_w / qe_c) e_c``;
    divided by the white-balance gains as in :func:`w_coefficients`."""
    qe_rgb = np.broadcast_to(np.asarray(qe_rgb, dtype=np.float64), (3,))
    return float(qe_w) / qe_rgb / np.asarray(wb_gains, dtype=np.float64)


def fusion_guard(guard_e: float, e_per_unit: float) -> float:
    """The guard ``δ`` in normalised units: ``guard_e`` electrons over the electrons one
    normalised unit holds."""
    return float(guard_e) / float(e_per_unit)


class RgbwFusion:
    """Colour-ratio RGBW fusion, planned for one channel map (0 R, 1 G, 2 B, 3 W).

    Parameters
    ----------
    cmap : (H, W) int channel map with W pixels and at least one pixel of R, G and B.
    tile_shape : (rows, cols) of the CFA tile: the colour planes' tent period.
    coefficients : (3,) ``a`` of ``Ŵ = Σ_c a_c C_c`` (:func:`w_coefficients`).
    guard : ``δ`` > 0 in normalised W units (:func:`fusion_guard`).
    """

    def __init__(
        self,
        cmap: np.ndarray,
        tile_shape: tuple[int, int],
        coefficients: np.ndarray,
        guard: float,
        dtype: type = np.float32,
    ):
        missing = [c for c, i in zip("RGBW", range(4), strict=True) if not (cmap == i).any()]
        if missing:
            raise ValueError(f"rgbw_fusion needs R, G, B and W pixels; no {', '.join(missing)}")
        if not guard > 0:
            raise ValueError(f"the guard must be positive, got {guard}")
        self.colour_ky = tent_kernel(tile_shape[0]).astype(dtype)
        self.colour_kx = tent_kernel(tile_shape[1]).astype(dtype)
        self.w_k = tent_kernel(2).astype(dtype)
        self.masks = np.stack([cmap == c for c in range(4)], axis=-1).astype(dtype)
        colour_weights = self._colour_filter(self.masks[..., :3])
        self.colour_norm = (1.0 / colour_weights).astype(dtype)
        w_weights = self._w_filter(self.masks[..., W_INDEX])
        self.w_fill = np.where(self.masks[..., W_INDEX] > 0, 0.0, 1.0 / w_weights).astype(dtype)
        self.coefficients = np.asarray(coefficients, dtype=dtype)
        self.guard = dtype(guard)

    def _colour_filter(self, planes: np.ndarray) -> np.ndarray:
        return cv2.sepFilter2D(
            planes, -1, self.colour_kx, self.colour_ky, borderType=BORDER
        ).reshape(planes.shape)

    def _w_filter(self, plane: np.ndarray) -> np.ndarray:
        return cv2.sepFilter2D(plane, -1, self.w_k, self.w_k, borderType=BORDER)

    def planes(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One image's low-passed colour planes (H, W, 3) and dense W plane (H, W)."""
        colour = self._colour_filter(image[..., None] * self.masks[..., :3])
        colour *= self.colour_norm
        w_sparse = image * self.masks[..., W_INDEX]
        w_dense = self._w_filter(w_sparse) * self.w_fill + w_sparse
        return colour, w_dense

    def __call__(self, mosaic: np.ndarray) -> np.ndarray:
        """(N, H, W) white-balanced, normalised mosaic → (N, H, W, 3) R, G, B."""
        out = np.empty((*mosaic.shape, 3), dtype=mosaic.dtype)
        for i, image in enumerate(mosaic):
            colour, w_dense = self.planes(np.ascontiguousarray(image))
            w_hat = colour @ self.coefficients
            ratio = (w_dense + self.guard) / (np.maximum(w_hat, 0) + self.guard)
            np.multiply(colour, ratio[..., None], out=out[i])
        return out

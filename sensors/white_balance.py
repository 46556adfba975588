"""White-balance gains: from the illuminant through the QE curves, or per image.

A white balance multiplies each colour channel by a gain so that a neutral (grey)
surface gives equal R, G and B. The gains are normalised to G = 1.

* :func:`illuminant_gains`: fixed gains from the light's spectrum and the sensor's QE
  curves (the response to a perfect white reflector, ``e_c = Σ_b QE_c(λ_b)·L(λ_b)``,
  :func:`sensors.spectral.integrate_bands`), ``g_c = e_G / e_c``. Known in advance, so a
  fixed graph (the ONNX raw front end) can carry them.
* :func:`gray_world_gains`: the grey-world assumption (the scene averages to grey),
  ``g_c = mean_G / mean_c`` over each image's pixels of that colour (Buchsbaum 1980).
* :func:`white_patch_gains`: the white-patch (max-RGB) assumption (the brightest
  surface is white), ``g_c = q_G / q_c`` with ``q_c`` a high percentile of the colour's
  pixels in the image (Land & McCann 1971's retinex, in its max-RGB form).

The last two are per-image statistics: every image gets its own gains, so they cannot
be a constant of an exported graph.

References
----------
G. Buchsbaum, "A spatial processor model for object colour perception", J. Franklin
Inst. 310(1), 1980.
E. H. Land, J. J. McCann, "Lightness and retinex theory", JOSA 61(1), 1971.
M. Ebner, Color Constancy, Wiley 2007, sections 6.1–6.2 (white patch, grey world).
"""

from __future__ import annotations

import numpy as np

from sensors.spectral import integrate_bands

__all__ = ["gray_world_gains", "illuminant_gains", "white_patch_gains"]

#: Floor of a channel statistic, relative to G's: a dark channel gets at most 1e6× gain.
_MIN_RELATIVE = 1e-6


def illuminant_gains(qe_curves: np.ndarray, light_photons: np.ndarray) -> np.ndarray:
    """Fixed gains ``e_G / e_c`` that make the perfect white under the light neutral.

    Parameters
    ----------
    qe_curves : (3, B) QE of the R, G, B photosites at the band centres, e⁻/photon.
    light_photons : (B,) the illuminant's photons per band (any scale).

    Returns
    -------
    (3,) float64 gains, G = 1.

    Raises ValueError when a channel sees no light.
    """
    white_e = integrate_bands(np.asarray(light_photons, dtype=np.float64), np.asarray(qe_curves))
    if not (white_e > 0).all():
        raise ValueError(f"a channel sees no light under the illuminant (R, G, B: {white_e})")
    return white_e[1] / white_e


def _ratio(stats: np.ndarray) -> np.ndarray:
    """(N, 3) per-channel statistics → (N, 3) gains stat_G / stat_c (floored)."""
    green = stats[:, 1:2]
    floor = np.maximum(np.abs(green), np.finfo(np.float64).tiny) * _MIN_RELATIVE
    return green / np.maximum(stats, floor)


def _channel_values(images: np.ndarray, channels: np.ndarray | None) -> list[np.ndarray]:
    """Per colour c, the (N, M_c) values of its pixels: planes (N, H, W, 3) when
    ``channels`` is None, else a mosaic (N, H, W) with ``channels`` the (H, W) map."""
    n = len(images)
    if channels is None:
        return [images[..., c].reshape(n, -1) for c in range(3)]
    return [images[:, channels == c] for c in range(3)]


def gray_world_gains(images: np.ndarray, channels: np.ndarray | None = None) -> np.ndarray:
    """Per-image grey-world gains ``mean_G / mean_c``.

    Parameters
    ----------
    images : (N, H, W, 3) planes, or (N, H, W) a mosaic with ``channels``.
    channels : (H, W) the mosaic's channel map (0 R, 1 G, 2 B, others ignored).

    Returns
    -------
    (N, 3) float64 gains, G = 1.
    """
    values = _channel_values(images, channels)
    means = np.stack([v.mean(axis=1, dtype=np.float64) for v in values], axis=1)
    return _ratio(means)


def white_patch_gains(
    images: np.ndarray, channels: np.ndarray | None = None, *, percentile: float = 99.0
) -> np.ndarray:
    """Per-image white-patch gains ``q_G / q_c``, ``q_c`` the ``percentile`` of colour c.

    A percentile below 100 keeps a few hot or noisy pixels from setting the white.

    Returns
    -------
    (N, 3) float64 gains, G = 1.
    """
    values = _channel_values(images, channels)
    stats = np.stack([np.percentile(v, percentile, axis=1) for v in values], axis=1)
    return _ratio(stats.astype(np.float64))

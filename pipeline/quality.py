"""Image quality of the raw stage against the noise-free, high-bit reference: PSNR and SSIM.

For each image, ``out`` is the raw stage's output (unitless, the white level is 1) and
``ref`` the same image through the ideal sensor (:mod:`pipeline.reference`: no shot,
read or fixed-pattern noise, a 24-bit linear ADC), both from the same seeds. Then, with
scikit-image's metrics and a data range of 1 (black to white level)::

    PSNR_dB = 10 · log10(1 / MSE(out, ref))                 (skimage peak_signal_noise_ratio)
    SSIM    = mean local structural similarity, 7×7 window  (skimage structural_similarity;
              Wang et al., IEEE TIP 13 (2004) 600-612), over the colour channels

and the metrics are the means over the first images (``QUALITY_IMAGES`` by default).
A run computes them (``pipeline.runner.image_quality``) only when the last sensor stage
gives unitless images (a raw stage) and the chain has a photodetector; a sweep adds them
to its SNR measurement (columns ``psnr_db`` and ``ssim``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["DATA_RANGE", "QUALITY_IMAGES", "QualitySums"]

QUALITY_IMAGES = 256  # images (the first ones) that enter a run's PSNR and SSIM
DATA_RANGE = 1.0  # the raw stage's black (0) to white level (1)
SSIM_WINDOW = 7


@dataclass
class QualitySums:
    """Running sums of per-image PSNR (dB) and SSIM; :attr:`metrics` gives the means."""

    psnr_db_sum: float = 0.0
    ssim_sum: float = 0.0
    images: int = 0

    def add(self, out: np.ndarray, ref: np.ndarray) -> None:
        """Add a batch of images, (N,H,W,C) or (N,H,W), first axis images."""
        from skimage.metrics import peak_signal_noise_ratio, structural_similarity

        for o, r in zip(np.asarray(out, np.float64), np.asarray(ref, np.float64), strict=True):
            side = min(r.shape[:2])
            window = min(SSIM_WINDOW, side if side % 2 else side - 1)
            channels = -1 if r.ndim == 3 else None
            with np.errstate(divide="ignore"):  # identical images: PSNR is +inf
                self.psnr_db_sum += float(peak_signal_noise_ratio(r, o, data_range=DATA_RANGE))
            self.ssim_sum += float(
                structural_similarity(
                    r, o, data_range=DATA_RANGE, channel_axis=channels, win_size=window
                )
            )
            self.images += 1

    @property
    def metrics(self) -> dict[str, Any]:
        """``{"psnr_db", "ssim", "quality_images"}``: means over the images added."""
        n = self.images
        return {
            "psnr_db": self.psnr_db_sum / n if n else None,
            "ssim": self.ssim_sum / n if n else None,
            "quality_images": n,
        }

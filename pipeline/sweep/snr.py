"""Signal-to-noise ratio of a sensor output against a noise-free, high-bit run of the same sensor.

Definition (used for the sweep's ``snr_db`` column)::

    SNR_dB = 10 · log10( Σ ref² / Σ (out − ref)² )

where ``out`` is a stage's output (by default the last sensor stage: the raw RGB image
the CNN sees) for the cell's config, ``ref`` is the same stage's output for the same
images through the ideal version of the sensor, and the sums run over every pixel,
channel and image. The reference is the sweep file's ``snr.reference`` overrides, by
default :data:`NOISE_SWITCHES`: the photodetector without shot noise, read noise, PRNU
and DSNU (its mean signal kept: QE, dark current, full well) and a 24-bit linear ADC.
Everything that differs between the two runs counts as noise: temporal noise,
fixed-pattern noise, and the quantisation error of the cell's ADC (its bit depth and
transfer curve). Because the reference is digitised with 24 bits, it is black only when
the scene is: an ADC that maps every pixel to the black code gives 0 dB (all signal
lost), never an undefined value.

This is the power-ratio SNR of the whole image set (an energy-weighted mean), not a mean
of per-image or per-pixel SNRs. It is +inf when the two runs agree exactly, and
undefined (None: an empty table cell) when the reference is all zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipeline.reference import NOISE_STAGE, NOISE_SWITCHES, default_reference

__all__ = ["NOISE_STAGE", "NOISE_SWITCHES", "SnrSums", "default_reference", "snr_db"]


def snr_db(out: np.ndarray, ref: np.ndarray) -> float | None:
    """``10·log10(Σ ref² / Σ (out − ref)²)`` in dB.

    Parameters
    ----------
    out : the noisy output (any shape, any real dtype).
    ref : the noise-free output, same shape.

    Returns
    -------
    float or None : dB; +inf when ``out == ref`` everywhere and ``ref`` is not all zero;
    None (undefined: no signal to compare with) when ``ref`` is all zero.
    """
    sums = SnrSums()
    sums.add(out, ref)
    return sums.db


@dataclass
class SnrSums:
    """Running sums for :func:`snr_db` over batches (memory stays flat).

    Attributes
    ----------
    signal_sq : Σ ref², accumulated in float64.
    noise_sq : Σ (out − ref)², accumulated in float64.
    images : how many images were added.
    """

    signal_sq: float = 0.0
    noise_sq: float = 0.0
    images: int = 0

    def add(self, out: np.ndarray, ref: np.ndarray) -> None:
        """Add a batch; ``out`` and ``ref`` must have the same shape (first axis: images).

        Each image's sums use NumPy's pairwise summation (no BLAS: a threaded dot product
        sums in an order that depends on the thread count), then are added one image at a
        time in order, so the result is the same bit for bit on every engine and for any
        batch size.
        """
        out = np.asarray(out)
        ref = np.asarray(ref)
        if out.shape != ref.shape:
            raise ValueError(f"shapes differ: out {out.shape}, ref {ref.shape}")
        n = out.shape[0] if out.ndim else 1
        ref64 = ref.astype(np.float64).reshape(n, -1)
        diff = out.astype(np.float64).reshape(n, -1) - ref64
        for signal_sq, noise_sq in zip(
            np.square(ref64).sum(axis=1), np.square(diff).sum(axis=1), strict=True
        ):
            self.signal_sq += float(signal_sq)
            self.noise_sq += float(noise_sq)
        self.images += n

    @property
    def db(self) -> float | None:
        """The SNR in dB (see :func:`snr_db`); None when the reference is all zero."""
        if self.signal_sq == 0.0:
            return None
        if self.noise_sq == 0.0:
            return math.inf
        return 10.0 * math.log10(self.signal_sq / self.noise_sq)

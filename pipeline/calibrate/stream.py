"""Streaming statistics of one exposure level: memory flat in the number of frames.

Frames arrive one at a time. Per CFA phase (the pixels ``f[i::th, j::tw]`` of one tile
position) the accumulator keeps:

- Welford running mean and sum of squared deviations per pixel (the averaged frame
  ``⟨y⟩`` and the per-pixel temporal variance σ²_s, ddof 1);
- Welford moments of the per-frame row means and column means (row and column
  temporal noise);
- per consecutive pair of frames (A, B): the pair's mean and ``var(y_A − y_B) / 2``,
  the EMVA 1288 temporal variance that no fixed pattern enters (kept per pair: the
  bootstrap resamples them);
- per frame: its mean; the largest value seen and the fraction of a frame at it.

References
----------
B. P. Welford, "Note on a method for calculating corrected sums of squares and
products", Technometrics 4 (1962) 419.
EMVA 1288 Release 4.0 Linear, sections 6.1 (two-frame temporal variance) and 8.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from pipeline import emva

__all__ = ["LevelAccumulator", "LevelStats"]


def _phases(frame: np.ndarray, tile: tuple[int, int]) -> np.ndarray:
    """``(H, W)`` → ``(M, th, N, tw)``: axis 1 and 3 index the tile phase."""
    th, tw = tile
    h, w = frame.shape
    return frame.reshape(h // th, th, w // tw, tw)


@dataclasses.dataclass
class LevelStats:
    """The summary of one level, per tile phase ``(th, tw)`` where shaped so.

    Attributes
    ----------
    n_frames : L.
    mean_frame : ``(H, W)`` the averaged frame ⟨y⟩ (DN).
    temporal_dn2 : ``(th, tw)`` σ²_s, per-pixel temporal variance (ddof 1), mean over pixels.
    row_means_var_dn2, col_means_var_dn2 : ``(th, tw)`` temporal variance of per-frame
        row (column) means, mean over rows (columns).
    pair_mean_dn, pair_var_dn2 : ``(P, th, tw)`` per pair mean and ``var(A − B)/2``.
    frame_mean_dn : ``(L, th, tw)`` per frame means.
    peak_dn : the largest value of any frame; peak_fraction : the largest fraction of one
        frame's pixels at that value (saturation, once the ADC's top code is known).
    """

    n_frames: int
    mean_frame: np.ndarray
    temporal_dn2: np.ndarray
    row_means_var_dn2: np.ndarray
    col_means_var_dn2: np.ndarray
    pair_mean_dn: np.ndarray
    pair_var_dn2: np.ndarray
    frame_mean_dn: np.ndarray
    peak_dn: float
    peak_fraction: float
    row_power_dn2: np.ndarray
    col_power_dn2: np.ndarray

    def profile_spectra(self, tile: tuple[int, int]) -> dict[str, np.ndarray]:
        """Power spectra of the row and column profiles (phase means removed, phases averaged).

        ``fpn``: of the averaged frame's profile; ``temporal``: the per-frame profiles'
        mean power minus the averaged profile's, times L/(L−1) (the unbiased temporal
        variance at each frequency). Units DN² per frequency bin; frequencies in cycles
        per row (column) of one phase.
        """
        p = _phases(self.mean_frame, tile)
        out = {}
        for name, profile, power in (
            ("row", p.mean(axis=2), self.row_power_dn2),
            ("col", p.mean(axis=0), self.col_power_dn2),
        ):
            axis = 0 if name == "row" else 1
            fpn = _power(profile, axis=axis)
            scale = self.n_frames / (self.n_frames - 1)
            out[f"{name}_fpn_dn2"] = fpn
            out[f"{name}_temporal_dn2"] = np.maximum((power - fpn) * scale, 0.0)
            out[f"{name}_frequency"] = np.fft.rfftfreq(profile.shape[axis])
        return out

    def decomposition(self, tile: tuple[int, int], i: int, j: int) -> emva.SpatialDecomposition:
        """The row/column/pixel decomposition of phase (i, j) (:mod:`pipeline.emva`)."""
        return emva.decomposition_from_moments(
            self.mean_frame[i :: tile[0], j :: tile[1]],
            float(self.temporal_dn2[i, j]),
            float(self.row_means_var_dn2[i, j]),
            self.n_frames,
            col_means_var_dn2=float(self.col_means_var_dn2[i, j]),
        )


class LevelAccumulator:
    """Accumulate one level's frames (see the module docstring).

    Parameters
    ----------
    shape : ``(H, W)`` of every frame (a multiple of the tile).
    tile : ``(th, tw)``, the CFA tile's shape.
    """

    def __init__(self, shape: tuple[int, int], tile: tuple[int, int]) -> None:
        self.shape, self.tile = shape, tile
        self.n = 0
        self.mean = np.zeros(shape)
        self.m2 = np.zeros(shape)
        m, n = shape[0] // tile[0], shape[1] // tile[1]
        self.row = _Welford((m, *tile))
        self.col = _Welford((tile[0], n, tile[1]))
        self.pending: np.ndarray | None = None
        self.pairs: list[tuple[np.ndarray, np.ndarray]] = []
        self.frame_means: list[np.ndarray] = []
        self.peak_dn, self.peak_fraction = -np.inf, 0.0
        self.row_power = np.zeros(m // 2 + 1)
        self.col_power = np.zeros(n // 2 + 1)

    def add(self, frame: np.ndarray) -> None:
        """Add one ``(H, W)`` frame (any numeric dtype)."""
        y = np.asarray(frame, dtype=np.float64)
        self.n += 1
        delta = y - self.mean
        self.mean += delta / self.n
        delta *= y - self.mean
        self.m2 += delta
        p = _phases(y, self.tile)
        self.row.add(p.mean(axis=2))  # (M, th, tw)
        self.col.add(p.mean(axis=0))  # (th, N, tw)
        self.frame_means.append(p.mean(axis=(0, 2)))
        self.row_power += _power(p.mean(axis=2), axis=0)
        self.col_power += _power(p.mean(axis=0), axis=1)
        self._peak(y)
        if self.pending is None:
            self.pending = y
            return
        d = _phases(y - self.pending, self.tile)
        pair_mean = (self.frame_means[-1] + self.frame_means[-2]) / 2
        self.pairs.append((pair_mean, d.var(axis=(0, 2)) / 2))
        self.pending = None

    def _peak(self, y: np.ndarray) -> None:
        top = float(y.max())
        fraction = float(np.mean(y == top))
        if top > self.peak_dn:
            self.peak_dn, self.peak_fraction = top, fraction
        elif top == self.peak_dn:
            self.peak_fraction = max(self.peak_fraction, fraction)

    def finish(self) -> LevelStats:
        """The level's :class:`LevelStats` (needs at least two frames)."""
        if self.n < 2:
            raise ValueError("a level needs at least two frames")
        tile_pixels = _phases(self.m2 / (self.n - 1), self.tile).mean(axis=(0, 2))
        return LevelStats(
            n_frames=self.n,
            mean_frame=self.mean,
            temporal_dn2=tile_pixels,
            row_means_var_dn2=self.row.variance().mean(axis=0),
            col_means_var_dn2=self.col.variance().mean(axis=1),
            pair_mean_dn=np.array([p[0] for p in self.pairs]),
            pair_var_dn2=np.array([p[1] for p in self.pairs]),
            frame_mean_dn=np.array(self.frame_means),
            peak_dn=float(self.peak_dn),
            peak_fraction=self.peak_fraction,
            row_power_dn2=self.row_power / self.n,
            col_power_dn2=self.col_power / self.n,
        )


def _power(profile: np.ndarray, axis: int) -> np.ndarray:
    """Mean over tile phases of ``|rfft(profile − its mean)|² / n`` along ``axis``."""
    x = profile - profile.mean(axis=axis, keepdims=True)
    n = x.shape[axis]
    power = np.abs(np.fft.rfft(x, axis=axis)) ** 2 / n
    other = tuple(a for a in range(x.ndim) if a != axis)
    return power.mean(axis=other)


class _Welford:
    """Running mean and variance (ddof 1) of equally shaped arrays."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.n = 0
        self.mean = np.zeros(shape)
        self.m2 = np.zeros(shape)

    def add(self, x: np.ndarray) -> None:
        self.n += 1
        delta = x - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (x - self.mean)

    def variance(self) -> np.ndarray:
        return self.m2 / (self.n - 1)

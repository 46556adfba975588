"""Stream a manifest's frames into per-level statistics, with the input checks.

One pass over every file (each level's frames through a
:class:`~pipeline.calibrate.stream.LevelAccumulator`), then a second pass over the
reference dark level only, for the noise samples whose distribution is fitted: each
sampled pixel's value minus its averaged-frame value minus its frame's row offset,
scaled by ``sqrt(L / (L − 1))`` (the averaged frame shares 1/L of the noise).

Input checks (each a one-line :class:`UserError` naming the file or manifest key):
mixed frame sizes, a level with fewer than two frames, fewer than
:data:`MIN_FLAT_LEVELS` flat levels, no dark level, dark frames with more than
:data:`MAX_DARK_SATURATED` of their pixels at the top code, frames too small to split
into rows and columns.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from pipeline.calibrate.fit import Level
from pipeline.calibrate.frames import read_frames
from pipeline.calibrate.manifest import Entry, Manifest
from pipeline.calibrate.stream import LevelAccumulator
from pipeline.errors import UserError

__all__ = ["MAX_DARK_SATURATED", "MIN_FLAT_LEVELS", "Measured", "measure", "noise_samples"]

MIN_FLAT_LEVELS = 5
MIN_PHASE_SIZE = 8  # rows and columns of one CFA phase, for the row/column split
MAX_DARK_SATURATED = 0.01
NOISE_SAMPLES = 20_000  # samples for the noise-distribution fit (fewer for small frames)


@dataclasses.dataclass
class Measured:
    """The streamed levels: darks by exposure, flats by level; frame shape; ADC bits."""

    darks: list[Level]
    flats: list[Level]
    shape: tuple[int, int]
    bits: int
    dark_entries: dict[float, list[Entry]]


def _group(manifest: Manifest) -> dict[tuple, list[Entry]]:
    groups: dict[tuple, list[Entry]] = defaultdict(list)
    for entry in manifest.entries:
        groups[entry.level].append(entry)
    return dict(groups)


def _tile_shape(manifest: Manifest) -> tuple[int, int]:
    return len(manifest.tile), len(manifest.tile[0])


class _SizeCheck:
    """Every frame must have the first frame's size (and be big enough to split)."""

    def __init__(self, tile: tuple[int, int]) -> None:
        self.tile = tile
        self.shape: tuple[int, int] | None = None
        self.first: Path | None = None

    def __call__(self, frame: np.ndarray, path: Path) -> None:
        if self.shape is None:
            h, w = frame.shape
            th, tw = self.tile
            if h // th < MIN_PHASE_SIZE or w // tw < MIN_PHASE_SIZE:
                raise UserError(
                    f"frame {h}x{w} is too small: at least "
                    f"{MIN_PHASE_SIZE * th}x{MIN_PHASE_SIZE * tw} pixels",
                    file=path,
                )
            self.shape, self.first = frame.shape, path
        elif frame.shape != self.shape:
            raise UserError(
                f"frame size {frame.shape[0]}x{frame.shape[1]} differs from "
                f"{self.shape[0]}x{self.shape[1]} of {self.first}",
                file=path,
            )


def _frames(entries: list[Entry], check: _SizeCheck, tile: tuple[int, int]) -> Iterator[np.ndarray]:
    """Every frame of the entries, size-checked, cropped to whole tiles."""
    for entry in entries:
        for frame in read_frames(entry.path):
            check(frame, entry.path)
            h, w = frame.shape
            yield frame[: h - h % tile[0], : w - w % tile[1]]


def measure(manifest: Manifest) -> Measured:
    """Stream every level of ``manifest`` (see the module docstring)."""
    tile = _tile_shape(manifest)
    groups = _group(manifest)
    check = _SizeCheck(tile)
    levels: list[tuple[tuple, LevelAccumulator]] = []
    for key, entries in groups.items():
        acc = None
        for frame in _frames(entries, check, tile):
            if acc is None:
                acc = LevelAccumulator(frame.shape, tile)
            acc.add(frame)
        if acc is None or acc.n < 2:
            n = 0 if acc is None else acc.n
            raise UserError(
                f"the {key[0]} level at {key[1]:g} s"
                + (f", {key[2]:g} photons" if key[2] is not None else "")
                + f" has {n} frame(s); every level needs at least 2 (a pair)",
                file=entries[0].path,
            )
        levels.append((key, acc))
    peak = max(acc.peak_dn for _, acc in levels)
    bits = manifest.bits or max(8, math.ceil(math.log2(peak + 1)))
    top_code = float(2**bits - 1)
    if peak > top_code:
        raise UserError(
            f"frames hold values up to {peak:g}, above the top code {int(top_code)} of {bits} bits",
            file=manifest.file,
            key="bits",
        )
    darks, flats = [], []
    for (kind, exposure, photons), acc in levels:
        level = Level(kind, exposure, photons, acc.finish())
        if kind == "dark":
            saturated = level.stats.peak_dn >= top_code
            if saturated and level.stats.peak_fraction > MAX_DARK_SATURATED:
                raise UserError(
                    f"dark frames are saturated: {100 * level.stats.peak_fraction:.1f} % of a "
                    f"frame's pixels at the top code {int(top_code)} (bits {bits})",
                    file=groups[(kind, exposure, photons)][0].path,
                )
            darks.append(level)
        else:
            flats.append(level)
    if not darks:
        raise UserError("no dark frames (kind: dark)", file=manifest.file, key="frames")
    if len(flats) < MIN_FLAT_LEVELS:
        raise UserError(
            f"{len(flats)} flat level(s); the photon transfer needs at least "
            f"{MIN_FLAT_LEVELS}, from dark to beyond saturation",
            file=manifest.file,
            key="frames",
        )
    darks.sort(key=lambda lv: lv.exposure_s)
    flats.sort(key=lambda lv: lv.photons if lv.photons is not None else lv.exposure_s)
    dark_entries = {k[1]: v for k, v in groups.items() if k[0] == "dark"}
    assert check.shape is not None
    return Measured(darks, flats, check.shape, bits, dark_entries)


def noise_samples(
    entries: list[Entry],
    mean_frame: np.ndarray,
    n_frames: int,
    tile: tuple[int, int],
    *,
    seed: int = 0,
) -> np.ndarray:
    """Temporal noise samples (DN) of one dark level of ``n_frames`` frames averaging to
    ``mean_frame``: the module docstring's second pass."""
    per_frame = max(1, min(mean_frame.size, NOISE_SAMPLES // n_frames))
    rng = np.random.default_rng(seed)
    idx = rng.choice(mean_frame.size, per_frame, replace=False)
    rows = idx // mean_frame.shape[1]
    out = []
    for frame in _frames(entries, _SizeCheck(tile), tile):
        r = np.asarray(frame, dtype=np.float64) - mean_frame
        row_offset = r.mean(axis=1)
        out.append(r.ravel()[idx] - row_offset[rows])
    return np.concatenate(out) * math.sqrt(n_frames / (n_frames - 1))

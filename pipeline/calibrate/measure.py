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


def _frames(entries: list[Entry], shape_ref: list, tile: tuple[int, int]):
    """Every frame of the entries, cropped to whole tiles; checks the size against the first."""
    for entry in entries:
        for frame in read_frames(entry.path):
            if not shape_ref:
                h, w = frame.shape
                if h // tile[0] < MIN_PHASE_SIZE or w // tile[1] < MIN_PHASE_SIZE:
                    raise UserError(
                        f"frame {frame.shape} is too small: at least "
                        f"{MIN_PHASE_SIZE * tile[0]}x{MIN_PHASE_SIZE * tile[1]} pixels",
                        file=entry.path,
                    )
                shape_ref.extend([frame.shape, entry.path])
            elif frame.shape != shape_ref[0]:
                raise UserError(
                    f"frame size {frame.shape[0]}x{frame.shape[1]} differs from "
                    f"{shape_ref[0][0]}x{shape_ref[0][1]} of {shape_ref[1]}",
                    file=entry.path,
                )
            h, w = frame.shape
            yield entry, frame[: h - h % tile[0], : w - w % tile[1]]


def measure(manifest: Manifest) -> Measured:
    """Stream every level of ``manifest`` (see the module docstring)."""
    tile = _tile_shape(manifest)
    groups = _group(manifest)
    shape_ref: list = []
    levels: list[tuple[tuple, LevelAccumulator, float, float]] = []
    for key, entries in groups.items():
        acc = None
        peak, peak_fraction = -math.inf, 0.0
        for _entry, frame in _frames(entries, shape_ref, tile):
            if acc is None:
                acc = LevelAccumulator(frame.shape, tile, math.inf)
            top = float(frame.max())
            fraction = float(np.mean(frame == top))
            if top > peak:
                peak, peak_fraction = top, fraction
            elif top == peak:
                peak_fraction = max(peak_fraction, fraction)
            acc.add(frame)
        if acc is None or acc.n < 2:
            n = 0 if acc is None else acc.n
            raise UserError(
                f"the {key[0]} level at {key[1]:g} s"
                + (f", {key[2]:g} photons" if key[2] is not None else "")
                + f" has {n} frame(s); every level needs at least 2 (a pair)",
                file=entries[0].path,
            )
        levels.append((key, acc, peak, peak_fraction))
    bits = manifest.bits or max(8, math.ceil(math.log2(max(p for *_, p, _f in levels) + 1)))
    top_code = float(2**bits - 1)
    darks, flats = [], []
    for (kind, exposure, photons), acc, peak, fraction in levels:
        level = Level(kind, exposure, photons, acc.finish())
        if kind == "dark":
            if peak >= top_code and fraction > MAX_DARK_SATURATED:
                raise UserError(
                    f"dark frames are saturated: {100 * fraction:.1f} % of a frame's pixels "
                    f"at the top code {int(top_code)} (bits {bits})",
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
    return Measured(darks, flats, shape_ref[0], bits, dark_entries)


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
    for _entry, frame in _frames(entries, [], tile):
        r = np.asarray(frame, dtype=np.float64) - mean_frame
        row_offset = r.mean(axis=1)
        out.append(r.ravel()[idx] - row_offset[rows])
    return np.concatenate(out) * math.sqrt(n_frames / (n_frames - 1))

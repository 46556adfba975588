"""Frames from sensorlab's own photodetector and ADC stages, written as a manifest folder.

Used by the calibration tests and bench/calibrate_validation.py. Flat fields get
``photons`` per pixel of each colour (each band for R, G, B pixels; a third of it per
band for mono W pixels, which collect all three).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from pipeline.stage import Batch, SignalInfo, Unit
from sensors.adc import ADCStage
from sensors.photodetector import PhotodetectorStage


class SimSensor:
    """A photodetector + ADC pair of given parameters, frames on demand."""

    def __init__(
        self,
        pd: Mapping[str, Any],
        adc: Mapping[str, Any],
        shape: tuple[int, int],
        *,
        seed: int = 0,
        sensor_seed: int | None = None,
    ) -> None:
        self.params = (dict(pd), dict(adc), seed, sensor_seed)
        self.cfa = pd.get("cfa", "RGGB")
        self.pd = PhotodetectorStage(
            PhotodetectorStage.Params(**pd), seed=seed, index=0, sensor_seed=sensor_seed
        )
        self.adc = ADCStage(ADCStage.Params(**adc), seed=seed, index=1, sensor_seed=sensor_seed)
        info = SignalInfo(Unit.PHOTONS, (*shape, 3), np.float64)
        self.info = self.adc.setup(self.pd.setup(info))
        self.shape = shape
        self.next = 0

    def at_exposure(self, exposure_s: float) -> SimSensor:
        """The same physical sensor (same patterns) at another exposure time (new images)."""
        pd, adc, seed, sensor_seed = self.params
        twin = SimSensor(
            {**pd, "exposure_s": exposure_s}, adc, self.shape, seed=seed, sensor_seed=sensor_seed
        )
        twin.next = self.next + 1_000_000 * (1 + int(exposure_s * 1e6))
        return twin

    def frames(self, photons: float, count: int) -> np.ndarray:
        """``count`` flat fields of ``photons`` per pixel (0: dark), as ADC codes."""
        per_band = photons / 3.0 if self.cfa == "mono" else photons
        x = np.full((count, *self.shape, 3), per_band)
        batch = Batch(np.arange(self.next, self.next + count))
        self.next += count
        return self.adc.process(self.pd.process(x, batch), batch)


def write_manifest(
    folder: Path,
    sensor: SimSensor,
    *,
    photon_levels: np.ndarray,
    frames_per_level: int,
    dark_frames: int,
    exposure_s: float,
    dark_exposures: tuple[float, ...] = (),
    cfa: str | None = None,
) -> Path:
    """Simulate darks (at ``exposure_s`` and any extra ``dark_exposures``) and flats, save
    them as ``.npy`` stacks and write ``manifest.yaml``; returns the manifest's path.

    ``sensor`` must have been built with ``exposure_s`` set in its photodetector
    parameters; darks at other exposures come from :meth:`SimSensor.at_exposure`.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    np.save(folder / "dark.npy", sensor.frames(0.0, dark_frames))
    rows.append({"file": "dark.npy", "kind": "dark", "exposure_s": exposure_s})
    for t in dark_exposures:
        name = f"dark_{t:g}s.npy"
        np.save(folder / name, sensor.at_exposure(t).frames(0.0, dark_frames))
        rows.append({"file": name, "kind": "dark", "exposure_s": t})
    for i, p in enumerate(photon_levels):
        name = f"flat_{i:02d}.npy"
        np.save(folder / name, sensor.frames(float(p), frames_per_level))
        rows.append({"file": name, "kind": "flat", "exposure_s": exposure_s, "photons": float(p)})
    manifest = {"cfa": cfa or sensor.cfa, "frames": rows}
    path = folder / "manifest.yaml"
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    return path


def write_dng(path: Path, frame: np.ndarray, *, cfa: str, black_level_dn: int, bits: int) -> Path:
    """One raw frame as an uncompressed DNG (PiDNG), readable by LibRaw (rawpy).

    ``path`` without its ``.dng`` suffix is what PiDNG takes; returns the file's path.
    """
    from pidng.core import RAW2DNG, DNGTags, Tag
    from pidng.defs import CFAPattern, DNGVersion, Orientation, PhotometricInterpretation

    h, w = frame.shape
    tags = DNGTags()
    for tag, value in (
        (Tag.ImageWidth, w),
        (Tag.ImageLength, h),
        (Tag.TileWidth, w),
        (Tag.TileLength, h),
        (Tag.Orientation, Orientation.Horizontal),
        (Tag.PhotometricInterpretation, PhotometricInterpretation.Color_Filter_Array),
        (Tag.SamplesPerPixel, 1),
        (Tag.BitsPerSample, 16),
        (Tag.CFARepeatPatternDim, [2, 2]),
        (Tag.CFAPattern, getattr(CFAPattern, cfa)),
        (Tag.BlackLevel, black_level_dn),
        (Tag.WhiteLevel, 2**bits - 1),
        (Tag.DNGVersion, DNGVersion.V1_4),
        (Tag.DNGBackwardVersion, DNGVersion.V1_2),
        (Tag.Make, "sensorlab"),
        (Tag.Model, "simulated"),
    ):
        tags.set(tag, value)
    writer = RAW2DNG()
    writer.options(tags, path="", compress=False)
    stem = path.with_suffix("")
    writer.convert(np.ascontiguousarray(frame, dtype=np.uint16), filename=str(stem))
    return stem.with_suffix(".dng")


def to_dng_manifest(manifest: Path, folder: Path, *, black_level_dn: int, bits: int) -> Path:
    """The same frames and manifest with every ``.npy`` stack written as one DNG per frame."""
    spec = yaml.safe_load(manifest.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for row in spec["frames"]:
        stack = np.load(manifest.parent / row["file"])
        for i, frame in enumerate(stack):
            name = f"{Path(row['file']).stem}_{i:03d}.dng"
            write_dng(
                folder / name, frame, cfa=spec["cfa"], black_level_dn=black_level_dn, bits=bits
            )
            rows.append({**row, "file": name})
    path = folder / "manifest.yaml"
    path.write_text(yaml.safe_dump({**spec, "frames": rows}, sort_keys=False))
    return path

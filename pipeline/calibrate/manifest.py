"""The calibration manifest: which frame files are dark, which are flat at which level.

A YAML manifest::

    cfa: RGGB                 # RGGB, BGGR, GRBG, GBRG or mono
    bits: 12                  # optional: the ADC's resolution (default: from the data)
    black_level_dn: 256       # optional: the nominal black level (default: the fit)
    frames:
      - {file: dark_10ms.npy, kind: dark, exposure_s: 0.01}
      - {file: dark_40ms.npy, kind: dark, exposure_s: 0.04}
      - {file: flat_0100.tif, kind: flat, exposure_s: 0.01, photons: 100}

or a CSV file with the header ``file,kind,exposure_s,photons,gain,cfa`` (``photons``
empty for darks; ``cfa`` the same on every row). File paths are relative to the
manifest. ``photons`` is the mean number of photons reaching one pixel during the
exposure (without it the level is the exposure time and the quantum efficiency stays
unknown). ``gain`` (optional, default 1) is the camera's analog gain setting: one
calibration is one gain, so every row must give the same.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import UserError, did_you_mean

__all__ = ["CFA_TILES", "Entry", "Manifest", "read_manifest"]

#: The channel letters of each supported colour filter array's tile, row-major.
CFA_TILES: dict[str, tuple[str, ...]] = {
    "RGGB": ("RG", "GB"),
    "BGGR": ("BG", "GR"),
    "GRBG": ("GR", "BG"),
    "GBRG": ("GB", "RG"),
    "mono": ("W",),
}
KINDS = ("dark", "flat")
_TOP_KEYS = ("cfa", "bits", "black_level_dn", "frames")
_ROW_KEYS = ("file", "kind", "exposure_s", "photons", "gain", "cfa")


@dataclasses.dataclass(frozen=True)
class Entry:
    """One frame file: its path, dark or flat, exposure (s), photons per pixel, gain."""

    path: Path
    kind: str
    exposure_s: float
    photons: float | None
    gain: float

    @property
    def level(self) -> tuple[str, float, float | None]:
        """What frames of one level share: kind, exposure, photons."""
        return (self.kind, self.exposure_s, self.photons)


@dataclasses.dataclass(frozen=True)
class Manifest:
    """A parsed manifest: the CFA, optional ADC bits and black level, the entries."""

    file: Path
    cfa: str
    bits: int | None
    black_level_dn: int | None
    gain: float
    entries: tuple[Entry, ...]

    @property
    def tile(self) -> tuple[str, ...]:
        return CFA_TILES[self.cfa]


def read_manifest(path: str | Path) -> Manifest:
    """Read a YAML (``.yaml``/``.yml``) or CSV (``.csv``) manifest; UserError on any problem."""
    path = Path(path)
    if not path.is_file():
        raise UserError("no such manifest file", file=path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read: {exc}", file=path) from None
    if path.suffix.lower() == ".csv":
        top, rows = _csv(text, path)
    elif path.suffix.lower() in (".yaml", ".yml"):
        top, rows = _yaml(text, path)
    else:
        raise UserError("a manifest is a .yaml, .yml or .csv file", file=path)
    return _build(path, top, rows)


def _yaml(text: str, path: Path) -> tuple[dict[str, Any], list[tuple[str, dict[str, Any]]]]:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UserError(f"not valid YAML: {' '.join(str(exc).split())}", file=path) from None
    if not isinstance(raw, dict):
        raise UserError("must be a mapping with cfa and frames", file=path)
    for key in raw:
        if key not in _TOP_KEYS:
            raise UserError(f"unknown key{did_you_mean(key, _TOP_KEYS)}", file=path, key=str(key))
    frames = raw.get("frames")
    if not isinstance(frames, list) or not frames:
        raise UserError("must be a non-empty list of frame files", file=path, key="frames")
    rows = []
    for i, row in enumerate(frames):
        if not isinstance(row, dict):
            raise UserError("must be a mapping with file and kind", file=path, key=f"frames[{i}]")
        rows.append((f"frames[{i}]", row))
    return raw, rows


def _csv(text: str, path: Path) -> tuple[dict[str, Any], list[tuple[str, dict[str, Any]]]]:
    reader = csv.DictReader(text.splitlines())
    header = reader.fieldnames or []
    for key in header:
        if key not in _ROW_KEYS:
            raise UserError(f"unknown column{did_you_mean(key, _ROW_KEYS)}", file=path, key=key)
    rows = [
        (f"row {i + 2}", {k: v for k, v in row.items() if v not in (None, "")})
        for i, row in enumerate(reader)
    ]
    if not rows:
        raise UserError("has no frame rows", file=path)
    cfas = {row.get("cfa") for _, row in rows}
    if len(cfas) > 1:
        raise UserError(
            f"one CFA per calibration, got {sorted(map(str, cfas))}", file=path, key="cfa"
        )
    return {"cfa": cfas.pop()}, rows


def _number(value: Any, path: Path, key: str, *, positive: bool) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UserError(f"must be a number, got {value!r}", file=path, key=key) from None
    if not math.isfinite(number) or number < 0 or (positive and number == 0):
        sign = "positive" if positive else "non-negative"
        raise UserError(f"must be a finite {sign} number, got {value!r}", file=path, key=key)
    return number


def _int_or_none(raw: dict[str, Any], name: str, path: Path, low: int, high: int) -> int | None:
    value = raw.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise UserError(
            f"must be an integer in [{low}, {high}], got {value!r}", file=path, key=name
        )
    return value


def _build(path: Path, top: dict[str, Any], rows: list[tuple[str, dict[str, Any]]]) -> Manifest:
    cfa = top.get("cfa")
    if cfa is None:
        raise UserError(
            "missing: the colour filter array (e.g. RGGB or mono)", file=path, key="cfa"
        )
    if cfa not in CFA_TILES:
        raise UserError(f"unknown CFA {cfa!r}{did_you_mean(cfa, CFA_TILES)}", file=path, key="cfa")
    bits = _int_or_none(top, "bits", path, 1, 24)
    black = _int_or_none(top, "black_level_dn", path, 0, 2**24 - 1)
    entries = []
    for key, row in rows:
        for name in row:
            if name not in _ROW_KEYS:
                raise UserError(
                    f"unknown key{did_you_mean(name, _ROW_KEYS)}", file=path, key=f"{key}.{name}"
                )
        if "file" not in row:
            raise UserError("missing: the frame file", file=path, key=f"{key}.file")
        kind = row.get("kind")
        if kind not in KINDS:
            raise UserError(f"must be dark or flat, got {kind!r}", file=path, key=f"{key}.kind")
        if "exposure_s" not in row:
            raise UserError("missing: the exposure time in s", file=path, key=f"{key}.exposure_s")
        exposure = _number(row["exposure_s"], path, f"{key}.exposure_s", positive=True)
        photons = row.get("photons")
        if photons is not None:
            photons = _number(photons, path, f"{key}.photons", positive=kind == "flat")
            if kind == "dark" and photons != 0:
                raise UserError("a dark frame has 0 photons", file=path, key=f"{key}.photons")
            photons = None if kind == "dark" else photons
        gain = _number(row.get("gain", 1.0), path, f"{key}.gain", positive=True)
        entries.append(Entry(path.parent / str(row["file"]), kind, exposure, photons, gain))
    gains = {e.gain for e in entries}
    if len(gains) > 1:
        raise UserError(
            f"one gain per calibration, got {sorted(gains)}: calibrate each gain separately",
            file=path,
            key="gain",
        )
    flats = [e for e in entries if e.kind == "flat"]
    if flats and len({e.photons is None for e in flats}) > 1:
        raise UserError("give photons for every flat frame or for none", file=path, key="photons")
    return Manifest(path, cfa, bits, black, gains.pop(), tuple(entries))

"""Every frame reader gives back the frames written: .npy, .npz, multi-page TIFF
(tifffile), PNG-16 (OpenCV), DNG (PiDNG → rawpy); and the manifest's CSV form equals
its YAML form."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

from calibrate.simulate import write_dng
from pipeline.calibrate.frames import read_frames
from pipeline.calibrate.manifest import read_manifest
from pipeline.errors import UserError

STACK = np.random.default_rng(1).integers(0, 4096, (3, 64, 96)).astype(np.uint16)


def _npy(tmp: Path) -> list[Path]:
    np.save(tmp / "s.npy", STACK)
    return [tmp / "s.npy"]


def _npz(tmp: Path) -> list[Path]:
    np.savez(tmp / "s.npz", a=STACK[:2], b=STACK[2])
    return [tmp / "s.npz"]


def _tiff(tmp: Path) -> list[Path]:
    tifffile.imwrite(tmp / "s.tif", STACK, photometric="minisblack")
    return [tmp / "s.tif"]


def _png(tmp: Path) -> list[Path]:
    paths = [tmp / f"s{i}.png" for i in range(3)]
    for path, frame in zip(paths, STACK, strict=True):
        assert cv2.imwrite(str(path), frame)
    return paths


def _dng(tmp: Path) -> list[Path]:
    return [
        write_dng(tmp / f"s{i}.dng", f, cfa="RGGB", black_level_dn=256, bits=12)
        for i, f in enumerate(STACK)
    ]


@pytest.mark.parametrize("write", [_npy, _npz, _tiff, _png, _dng])
def test_reader_returns_the_frames_written(write, tmp_path: Path) -> None:
    frames = [f for path in write(tmp_path) for f in read_frames(path)]
    assert len(frames) == 3
    for got, want in zip(frames, STACK, strict=True):
        assert got.dtype == np.uint16
        np.testing.assert_array_equal(got, want)


def test_damaged_file_is_one_user_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.tif"
    path.write_bytes(b"II*\x00garbage")
    with pytest.raises(UserError, match=r"broken\.tif: cannot read frames"):
        list(read_frames(path))


def test_csv_manifest_equals_yaml(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text(
        "file,kind,exposure_s,photons,cfa\nd.npy,dark,0.01,,GRBG\nf.npy,flat,0.01,500,GRBG\n"
    )
    (tmp_path / "m.yaml").write_text(
        "cfa: GRBG\nframes:\n"
        "  - {file: d.npy, kind: dark, exposure_s: 0.01}\n"
        "  - {file: f.npy, kind: flat, exposure_s: 0.01, photons: 500}\n"
    )
    a, b = read_manifest(tmp_path / "m.csv"), read_manifest(tmp_path / "m.yaml")
    assert a.entries[0].level == b.entries[0].level == ("dark", 0.01, None)
    assert [e.path for e in a.entries] == [e.path for e in b.entries]
    assert a.cfa == b.cfa == "GRBG"
    assert a.tile == ("GR", "BG")


def test_a_missing_reader_library_names_the_extra(tmp_path: Path, monkeypatch) -> None:
    import sys

    tifffile.imwrite(tmp_path / "s.tif", STACK, photometric="minisblack")
    monkeypatch.setitem(sys.modules, "tifffile", None)  # import tifffile now fails
    with pytest.raises(UserError, match=r"s\.tif: .*pip install 'sensorlab\[calibrate\]'"):
        list(read_frames(tmp_path / "s.tif"))

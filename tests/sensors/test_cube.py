"""The scene's hyperspectral cube mode: good cubes, and every hostile file refused in one
line naming the file, the key and the problem (through the real CLI: exit status 2)."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
import yaml
from conftest import sensorlab

from pipeline.stage import Batch, SignalInfo, StageError, Unit
from sensors import cube as cube_file
from sensors.scene import SceneStage

BANDS = np.array([450.0, 550.0, 650.0])


def scene(tmp_path, data, name="c.npz", **params):
    path = tmp_path / name
    if name.endswith(".npz"):
        np.savez(path, **data)
    else:
        np.save(path, data)
    stage = SceneStage(SceneStage.Params(spectral="cube", cube_path=str(path), **params))
    info = stage.setup(SignalInfo(Unit.IMAGE, (4, 4, 3), np.uint16, {"encoding": "linear16"}))
    return stage, info, path


def test_npz_cube_gives_reflectance_times_the_white_per_image_key(tmp_path):
    rng = np.random.default_rng(0)
    cubes = rng.random((2, 5, 6, 3)).astype(np.float32)
    stage, info, _ = scene(
        tmp_path,
        {"cube": cubes, "wavelengths_nm": BANDS},
        photons_at_white=100.0,
        illuminant="flat_photons",
    )
    assert info.shape == (5, 6, 3) and info.attr("wavelength_nm") == tuple(BANDS)
    out = stage.process(np.zeros((3, 4, 4, 3), np.uint16), Batch(np.array([0, 1, 2])))
    white = 300.0 / 3  # flat photons: the three channels' photons shared by 3 bands
    np.testing.assert_allclose(out, cubes[[0, 1, 0]] * white, rtol=1e-6)


def test_npy_cube_is_memory_mapped_with_wavelengths_from_the_config(tmp_path):
    data = np.full((4, 4, 3), 0.5)
    stage, _, _ = scene(
        tmp_path, data, name="c.npy", cube_wavelengths_nm=tuple(BANDS), illuminant="E"
    )
    assert isinstance(stage._cube.data, np.memmap)
    out = stage.process(np.zeros((1, 4, 4, 3), np.uint16), Batch(np.array([0])))
    # the default mean_photons: each pixel's band sum over 3 averages 1000
    np.testing.assert_allclose(out.sum(axis=-1).mean() / 3, 1000.0, rtol=1e-5)


def _zip_bomb_npz(path, size):
    """An .npz whose cube member declares ``size`` bytes uncompressed (zeros compress)."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (size // 4,)}
    )
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("cube.npy", "w", force_zip64=True) as f:
            f.write(header.getvalue())
            chunk = bytes(1 << 20)
            for _ in range(size // len(chunk)):
                f.write(chunk)
        z.writestr("wavelengths_nm.npy", _npy_bytes(BANDS))


def _npy_bytes(array):
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


HOSTILE = [
    ({"cube": np.ones((4, 4, 3))}, "wavelengths_nm: missing"),
    ({"wavelengths_nm": BANDS}, "cube: missing"),
    ({"cube": np.ones((4, 4)), "wavelengths_nm": BANDS}, "must be (H, W, B) or (N, H, W, B)"),
    ({"cube": np.ones((0, 4, 3)), "wavelengths_nm": BANDS}, "is empty"),
    ({"cube": np.ones((4, 4, 3)) * 1j, "wavelengths_nm": BANDS}, "real numbers"),
    ({"cube": np.full((4, 4, 3), np.nan), "wavelengths_nm": BANDS}, "NaN or infinity"),
    ({"cube": -np.ones((4, 4, 3)), "wavelengths_nm": BANDS}, "negative"),
    ({"cube": np.ones((4, 4, 3)), "wavelengths_nm": BANDS[:2]}, "2 wavelengths for 3 bands"),
    ({"cube": np.ones((4, 4, 3)), "wavelengths_nm": BANDS[::-1]}, "strictly increasing"),
    ({"cube": np.ones((4, 4, 3)), "wavelengths_nm": np.array(["a", "b", "c"])}, "wavelengths"),
    ({"cube": np.array([{}], dtype=object), "wavelengths_nm": BANDS}, "cannot read it"),
]


@pytest.mark.parametrize(("data", "fragment"), HOSTILE)
def test_hostile_npz_cubes_name_the_file_key_and_problem(tmp_path, data, fragment):
    with pytest.raises(StageError) as err:
        scene(tmp_path, data)
    assert err.value.key == "cube_path"
    message = str(err.value)
    assert message.startswith(f"hyperspectral cube {tmp_path / 'c.npz'}: ") and fragment in message
    assert "\n" not in message


def test_other_hostile_files(tmp_path):
    for path, params, fragment in (
        (tmp_path / "missing.npz", {}, "not found"),
        (tmp_path / "x.txt", {}, "must be .npz or .npy"),
        (tmp_path / "bad.npz", {}, "cannot read it as .npz"),
        (tmp_path / "bad.npy", {"cube_wavelengths_nm": (500.0,)}, "cannot read it as .npy"),
        (tmp_path / "ok.npy", {}, "needs cube_wavelengths_nm"),
    ):
        if path.name != "missing.npz":
            path.write_bytes(b"not an array" if "bad" in path.name or "x" in path.name else b"")
        if path.name == "ok.npy":
            np.save(path, np.ones((2, 2, 1)))
        with pytest.raises(StageError, match=fragment) as err:
            SceneStage(SceneStage.Params(spectral="cube", cube_path=str(path), **params)).setup(
                SignalInfo(Unit.IMAGE, (4, 4, 3), np.uint16, {})
            )
        assert str(path) in str(err.value)


def test_npz_declaring_more_than_the_limit_is_refused_before_reading(tmp_path, monkeypatch):
    monkeypatch.setattr(cube_file, "MAX_NPZ_CUBE_BYTES", 1 << 20)
    path = tmp_path / "bomb.npz"
    _zip_bomb_npz(path, 4 << 20)
    with pytest.raises(ValueError, match="GiB uncompressed, more than"):
        cube_file.open_cube(path)


def test_nan_in_a_memory_mapped_cube_is_found_when_read(tmp_path):
    data = np.ones((2, 4, 4, 3))
    data[1, 2, 2, 1] = np.nan
    stage, _, path = scene(tmp_path, data, name="c.npy", cube_wavelengths_nm=tuple(BANDS))
    stage.process(np.zeros((1, 4, 4, 3), np.uint16), Batch(np.array([0])))
    with pytest.raises(StageError, match="NaN") as err:
        stage.process(np.zeros((1, 4, 4, 3), np.uint16), Batch(np.array([1])))
    assert str(path) in str(err.value) and err.value.key == "cube_path"


def test_cli_reports_a_bad_cube_in_one_line_with_exit_status_2(tmp_path):
    np.savez(tmp_path / "c.npz", cube=-np.ones((4, 4, 3)), wavelengths_nm=BANDS)
    config = {
        "dataset": {"kind": "procedural", "n": 4, "split": "test"},
        "sensor": [{"stage": "scene", "spectral": "cube", "cube_path": "c.npz"}],
        "run": {"out": "runs"},
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config))
    proc = sensorlab("run", "cfg.yaml", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert "cfg.yaml: sensor[0].scene.cube_path: hyperspectral cube" in lines[0]
    assert "c.npz: cube: holds negative values" in lines[0]
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())

"""Hostile files and absurd numbers (issue 12): one line, exit 2, nothing allocated first.

Most cases call the real command line in-process (``pipeline.cli.main``) with the file
descriptors captured (``capfd``: OpenCV's C++ warnings go to fd 2, not ``sys.stderr``);
one subprocess runs a batch of them and reports its peak RSS.
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import textwrap
import time
import zipfile
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from conftest import ROOT, cli_env
from onnx import TensorProto, helper, numpy_helper

from pipeline import limits
from pipeline.cli import main
from pipeline.errors import UserError
from pipeline.store import OWNER_FILE, RunWriter, remove_stale_partials

SHIPPED_MODEL = ROOT / "data" / "models" / "procedural32-default" / "model.yaml"


# --------------------------------------------------------------------------- helpers
def cli(capfd, *args) -> tuple[int, str, str]:
    """Run ``sensorlab ARGS`` in-process; (exit status, stdout, stderr)."""
    status = main([str(a) for a in args])
    out, err = capfd.readouterr()
    return status, out, err


def refused(result, *fragments: str) -> str:
    """Assert exit 2 with exactly one stderr line holding every fragment; return it."""
    status, _out, err = result
    lines = err.strip().splitlines()
    assert status == 2, (status, err)
    assert len(lines) == 1, err
    assert "Traceback" not in err and "[ WARN" not in err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def no_run_folder(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    assert not runs.exists() or list(runs.iterdir()) == []


def default_config(tmp_path: Path, *, model: bool = False, n: int = 4) -> Path:
    """configs/default.yaml on ``n`` images (with or without the shipped model) in tmp_path."""
    cfg = yaml.safe_load((ROOT / "configs" / "default.yaml").read_text())
    cfg["dataset"]["n"] = n
    cfg["model"] = {"path": str(SHIPPED_MODEL)} if model else None
    cfg["run"] = {"out": "runs", "batch_size": 4, "progress": False}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def npy_header(shape: tuple[int, ...], dtype: str) -> bytes:
    buf = io.BytesIO()
    header = {
        "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
        "fortran_order": False,
        "shape": shape,
    }
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue()


def npz_with(path: Path, members: dict[str, bytes], compression=zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(f"{name}.npy", data)
    return path


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def npz_config(tmp_path: Path, dataset: Path, *, model: bool = True) -> Path:
    cfg = {
        "dataset": {"kind": "npz", "path": str(dataset), "split": "all"},
        "sensor": [
            {"stage": "scene", "mean_photons": 1000},
            {"stage": "photodetector", "cfa": "RGGB"},
            {"stage": "adc", "bits": 10},
            {"stage": "raw", "demosaic": "bilinear"},
        ],
        "model": {"path": str(SHIPPED_MODEL)} if model else None,
        "run": {"out": "runs", "progress": False},
    }
    path = tmp_path / "npz.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


# --------------------------------------------------------------------------- limits
def test_a_limit_is_overridden_by_its_environment_variable(monkeypatch):
    assert limits.limit("sweep_cells") == limits.LIMITS["sweep_cells"].default
    monkeypatch.setenv("SENSORLAB_MAX_SWEEP_CELLS", "7")
    limits.check("sweep_cells", 7, what="the grid")
    with pytest.raises(UserError, match="set SENSORLAB_MAX_SWEEP_CELLS to allow more"):
        limits.check("sweep_cells", 8, what="the grid")
    monkeypatch.setenv("SENSORLAB_MAX_SWEEP_CELLS", "lots")
    with pytest.raises(UserError, match="must be a positive integer"):
        limits.limit("sweep_cells")


def test_nan_and_huge_floats_are_above_every_limit():
    for value in (float("nan"), float("inf"), 1e300):
        with pytest.raises(UserError):
            limits.check("workers", value, what="--workers")


# --------------------------------------------------------------------------- files
def test_npz_dataset_declaring_a_billion_images_is_refused_from_its_header(tmp_path, capfd):
    x = npy_header((10**9, 32, 32, 3), "u1") + b"\0" * 1000
    y = npy_bytes(np.zeros(10, np.int64))
    for compression in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        data = npz_with(tmp_path / "big.npz", {"x": x, "y": y}, compression)
        line = refused(cli(capfd, "run", npz_config(tmp_path, data)), "big.npz", "dataset.path")
        assert "declares shape (1000000000, 32, 32, 3)" in line
    no_run_folder(tmp_path)


def test_npz_zip_bomb_is_refused_before_decompressing(tmp_path, capfd):
    n = 8192  # 24 MiB of zeros that deflate ~1000:1
    x = npy_header((n, 32, 32, 3), "u1") + bytes(n * 32 * 32 * 3)
    data = npz_with(
        tmp_path / "bomb.npz", {"x": x, "y": npy_bytes(np.zeros(n, np.int64))}, zipfile.ZIP_DEFLATED
    )
    assert data.stat().st_size < 200_000
    refused(
        cli(capfd, "run", npz_config(tmp_path, data)),
        "'x' (compressed) asks for",
        "SENSORLAB_MAX_ZIP_RATIO",
    )


def test_labels_beyond_the_models_classes_are_one_line(tmp_path, capfd):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (50, 32, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / "labels.npz", x=x, y=np.arange(50))
    refused(
        cli(capfd, "run", npz_config(tmp_path, tmp_path / "labels.npz")),
        "dataset: the dataset has 50 classes (labels up to 49) but the model scores 10",
    )
    no_run_folder(tmp_path)


def test_confusion_matrix_refuses_labels_outside_its_classes():
    from pipeline.metrics import confusion_matrix

    with pytest.raises(UserError, match=r"label 12 .* outside the model's 10 classes"):
        confusion_matrix(np.array([1, 12]), np.array([1, 2]), 10)


@pytest.mark.parametrize("bomb", [False, True])
def test_weights_declaring_more_than_they_hold(tmp_path, capfd, bomb):
    if bomb:  # a 32 MiB member of zeros: deflates ~1000:1
        member = npy_header((4 << 20,), "<f8") + bytes(32 << 20)
        weights = npz_with(tmp_path / "w.npz", {"conv1.W": member}, zipfile.ZIP_DEFLATED)
        fragment = "(compressed) asks for"
    else:  # 10^12 floats declared, 64 bytes stored
        member = npy_header((10**12,), "<f4") + b"\0" * 64
        weights = npz_with(tmp_path / "w.npz", {"conv1.W": member})
        fragment = "declares shape (1000000000000,)"
    cfg = yaml.safe_load(default_config(tmp_path, model=True).read_text())
    cfg["model"]["weights"] = str(weights)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    refused(cli(capfd, "run", "cfg.yaml"), "w.npz", fragment)
    no_run_folder(tmp_path)
    # export reads a model YAML's weights from <stem>.npz beside it
    (tmp_path / "model.yaml").write_text(SHIPPED_MODEL.read_text())
    weights.rename(tmp_path / "model.npz")
    refused(cli(capfd, "export", "model.yaml", "--out", "m.onnx"), "model.npz", fragment)
    assert not (tmp_path / "m.onnx").exists()


def test_psf_kernel_declaring_terabytes_is_refused(tmp_path, capfd):
    (tmp_path / "psf.npy").write_bytes(npy_header((10**6, 10**6), "<f8") + b"\0" * 64)
    refused(
        cli(
            capfd,
            "run",
            default_config(tmp_path),
            "--set",
            "sensor.optics.psf=kernel",
            "--set",
            f"sensor.optics.kernel_path={tmp_path / 'psf.npy'}",
        ),
        "sensor[1].optics.kernel_path",
        "psf.npy",
    )


def test_psf_kernel_larger_than_the_radius_limit_is_refused_before_reading(tmp_path, capfd):
    np.save(tmp_path / "psf.npy", np.ones((1100, 3), np.float32))
    refused(
        cli(
            capfd,
            "run",
            default_config(tmp_path),
            "--set",
            "sensor.optics.psf=kernel",
            "--set",
            f"sensor.optics.kernel_path={tmp_path / 'psf.npy'}",
        ),
        "is 1100×3 px, more than 1025×1025 px",
        "SENSORLAB_MAX_KERNEL_RADIUS_PX",
    )


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose IHDR declares width×height, with one small (truncated) IDAT."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1000)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat))


def _folder_config(tmp_path: Path) -> Path:
    cfg = {
        "dataset": {"kind": "folder", "path": "imgs", "split": "all"},
        "sensor": [{"stage": "scene"}],
        "run": {"out": "runs", "progress": False},
    }
    (tmp_path / "folder.yaml").write_text(yaml.safe_dump(cfg))
    return tmp_path / "folder.yaml"


def test_png_declaring_20000_squared_pixels_is_refused_from_its_header(tmp_path, capfd):
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    _png_header_only(tmp_path / "imgs" / "a" / "huge.png", 20000, 20000)
    refused(
        cli(capfd, "run", _folder_config(tmp_path)),
        "huge.png asks for 400,000,000 pixels in an image file",
        "SENSORLAB_MAX_DECODED_PIXELS",
    )


def test_truncated_png_is_one_line_without_opencv_warnings(tmp_path, capfd):
    from pipeline.datasets.folder import read_image

    _ok, buf = cv2.imencode(".png", np.full((16, 16, 3), 200, np.uint8))
    (tmp_path / "cut.png").write_bytes(buf.tobytes()[: len(buf) // 2])
    with pytest.raises(UserError, match="cannot decode"):
        read_image(tmp_path / "cut.png", key="dataset.path")
    _out, err = capfd.readouterr()
    assert err == ""


def _onnx_gemm(tmp_path: Path, name: str, w: TensorProto, meta: dict | None = None) -> Path:
    b = numpy_helper.from_array(np.zeros(10, np.float32), "B")
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["x"], ["f"], axis=1),
            helper.make_node("Gemm", ["f", "W", "B"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        [w, b],
    )
    model = helper.make_model(graph)
    if meta:
        helper.set_model_props(model, meta)
    path = tmp_path / name
    path.write_bytes(model.SerializeToString())
    return path


def test_onnx_initializer_whose_dims_exceed_its_data(tmp_path, capfd):
    w = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[48, 10], raw_data=b"\0" * 40)
    refused(
        cli(capfd, "import", _onnx_gemm(tmp_path, "bad.onnx", w), "--out", "imported"),
        "bad.onnx: initializer 'W' declares dims [48, 10] (480 values) but holds 10",
    )
    huge = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[10**6, 10**6], raw_data=b"0")
    refused(
        cli(capfd, "import", _onnx_gemm(tmp_path, "huge.onnx", huge), "--out", "imported"),
        "initializer 'W' asks for 1,000,000,000,000 parameters in one layer",
    )
    assert not (tmp_path / "imported").exists()


def test_onnx_model_name_too_long_for_a_file_name(tmp_path, capfd):
    w = numpy_helper.from_array(np.zeros((48, 10), np.float32), "W")
    path = _onnx_gemm(tmp_path, "long.onnx", w, {"model_name": "m" * 300})
    refused(cli(capfd, "import", path, "--out", "imported"), "300 characters", "--name")
    assert cli(capfd, "import", path, "--out", "imported", "--name", "short")[0] == 0


# --------------------------------------------------------------------------- absurd numbers
@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        ({"layers": {11: {"units": 10**9}}}, "layers[11] (fc1): this layer asks for"),
        ({"layers": {0: {"filters": 10**9}}}, "layers[0] (conv1): this layer asks for"),
        ({"layers": {0: {"kernel": 100000}}}, "layers[0] (conv1): this layer asks for"),
        ({"input": [3, 100000, 100000]}, "input: the input asks for 30,000,000,000 values"),
    ],
)
def test_absurd_model_yaml_is_refused_before_allocating(tmp_path, capfd, edit, fragment):
    model = yaml.safe_load((ROOT / "configs" / "models" / "rgb32.yaml").read_text())
    for key, value in edit.items():
        if key == "layers":
            for i, row in value.items():
                model["layers"][i].update(row)
        else:
            model[key] = value
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(model))
    refused(cli(capfd, "export", "m.yaml", "--out", "m.onnx"), "m.yaml", fragment)


@pytest.mark.parametrize(
    ("sets", "fragment"),
    [
        (["sensor.optics.sigma_px=1e6"], "sensor[1].optics.sigma_px: the PSF needs"),
        (["sensor.optics.sigma_px=3000"], "kernel half-width of 12000 px"),
        (
            ["sensor.optics.psf=defocus", "sensor.optics.defocus_radius_px=1e6"],
            "sensor[1].optics.defocus_radius_px",
        ),
        (
            [
                "sensor.optics.psf=airy",
                "sensor.optics.f_number=1e300",
                "sensor.optics.pixel_pitch_um=3",
                "sensor.optics.wavelength_nm=[600, 550, 450]",
                "sensor.optics.edge=constant",
            ],
            "sensor[1].optics.edge: an Airy kernel",
        ),
        (
            ["dataset.size=4096", "sensor.scene.pixels_per_image_pixel=16"],
            "sensor[0].scene: its output asks for 4,294,967,296 pixels per image",
        ),
        (["sensor.scene.mean_photons=1e300"], "sensor[0].scene.mean_photons: gives 1e+300"),
        (
            ["sensor.scene.mean_photons=null", "sensor.scene.photons_at_white=1e300"],
            "sensor[0].scene.photons_at_white: gives 1e+300",
        ),
        (["sensor.adc.bits=!!int 3.5"], "sensor.adc.bits: --set YAML value cannot be read"),
        (
            ["sensor[1].stage=.nan", "sensor.optics.psf=gaussian"],
            "no stage named 'optics' in the chain (choose from",
        ),
        (["sensor.scene.stage=[null]"], "sensor[0].stage: stage name must be a string"),
        (["run.name=" + "n" * 10_000], "run.name: the run folder name asks for 10,000"),
        (["run.name=" + "[" * 100_000 + "]" * 100_000], "the YAML nesting asks for 100,001"),
        (["a" + ".a" * 50_000 + "=1"], "this key path asks for 50,001 levels"),
    ],
)
def test_absurd_config_values_are_one_line(tmp_path, capfd, sets, fragment):
    args = [x for s in sets for x in ("--set", s)]
    refused(cli(capfd, "run", default_config(tmp_path), *args), fragment)
    no_run_folder(tmp_path)


def test_deep_yaml_file_is_refused_before_parsing(tmp_path, capfd):
    (tmp_path / "deep.yaml").write_text("a: " + "[" * 100_000 + "]" * 100_000)
    refused(cli(capfd, "run", "deep.yaml"), "deep.yaml: the YAML nesting asks for 100,001")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--size", "1000000"], "size: a 1000000×1000000 px frame asks for"),
        (["--levels", "1000000000"], "levels: --levels asks for 1,000,000,000 levels"),
    ],
)
def test_characterize_size_and_levels_are_bounded(tmp_path, capfd, args, fragment):
    refused(cli(capfd, "characterize", default_config(tmp_path), *args), fragment)


def _sweep_file(tmp_path: Path, axes: dict) -> Path:
    default_config(tmp_path)
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({"base": "cfg.yaml", "axes": axes}))
    return tmp_path / "sweep.yaml"


def test_sweep_of_a_billion_cells_is_refused_before_expanding(tmp_path, capfd):
    axes = {"sensor.adc.offset_lsb": list(range(1000)), "seed": list(range(1000))}
    axes["sensor.adc.noise_lsb"] = [i / 1000 for i in range(1000)]
    refused(
        cli(capfd, "sweep", _sweep_file(tmp_path, axes)),
        "sweep.yaml: axes: the grid asks for 1,000,000,000 cells",
    )


def test_sweep_workers_have_an_upper_bound(tmp_path, capfd):
    path = _sweep_file(tmp_path, {"sensor.adc.bits": [8, 10]})
    refused(cli(capfd, "sweep", path, "--workers", "1000000"), "--workers asks for 1,000,000")


# --------------------------------------------------------------------------- the top level
def test_an_unexpected_exception_is_one_line_with_a_debug_hint(tmp_path, capfd, monkeypatch):
    import pipeline.cli.run as run_cli

    def broken(*_args, **_kwargs):
        raise RuntimeError("something\nnobody foresaw")

    monkeypatch.setattr(run_cli, "run", broken)
    line = refused(cli(capfd, "run", default_config(tmp_path)))
    assert line.startswith("sensorlab: error: sensorlab run ")
    assert "cfg.yaml: unexpected failure: " in line
    assert "RuntimeError: something" in line and "rerun with --debug" in line
    for args in (["--debug", "run", "cfg.yaml"], ["run", "cfg.yaml", "--debug"]):
        with pytest.raises(RuntimeError, match="nobody foresaw"):
            main(args)


def test_a_library_warning_is_folded_into_the_error_line(tmp_path, capfd, monkeypatch):
    import pipeline.cli.run as run_cli

    def overflowing(*_args, **_kwargs):
        np.float32(1e30) * np.float32(1e30)  # RuntimeWarning: overflow
        raise UserError("photodetector input contains NaN", key="sensor[2]")

    monkeypatch.setattr(run_cli, "run", overflowing)
    refused(cli(capfd, "run", default_config(tmp_path)), "(after a warning: overflow")


# --------------------------------------------------------------------------- run folders
def test_two_runs_with_one_name_the_second_to_rename_is_refused(tmp_path):
    first = RunWriter(tmp_path / "runs", "same")
    second = RunWriter(tmp_path / "runs", "same")  # both started before either finished
    (first.path("a.txt")).write_text("first")
    (second.path("b.txt")).write_text("second")
    final = first.commit({"who": "first"})
    with pytest.raises(UserError, match=r"another run wrote .*same first"):
        second.commit({"who": "second"})
    assert sorted(p.name for p in final.iterdir()) == ["a.txt", "manifest.json"]
    assert json.loads((final / "manifest.json").read_text()) == {"who": "first"}
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["same"]


@pytest.mark.slow  # two interpreters at once (~10 s on 2 cores); the race itself is tested above
def test_two_real_processes_with_one_run_name(tmp_path):
    cfg = default_config(tmp_path, n=8)
    cmd = [sys.executable, "-m", "pipeline", "run", str(cfg), "-q", "--name", "same"]
    procs = [
        subprocess.Popen(cmd, cwd=tmp_path, env=cli_env(), stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    for p in procs:
        p.stderr.close()
    assert sorted(code for code, _ in results) == [0, 2]
    (_, loser_err) = next(r for r in results if r[0] == 2)
    lines = loser_err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in loser_err
    assert "another run wrote" in lines[0] or "already exists" in lines[0]
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["same"]
    assert (tmp_path / "runs" / "same" / "manifest.json").is_file()


def test_stale_partial_folders_are_removed_and_reported(tmp_path, capfd):
    root = tmp_path / "runs"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], stdout=-1)
    owners = {"killed": dead.stdout.decode().strip(), "alive": str(os.getppid()), "none": None}
    for name, pid in owners.items():
        folder = root / f".{name}.partial-x"
        folder.mkdir(parents=True)
        if pid is not None:
            (folder / OWNER_FILE).write_text(pid)
        old = time.time() - 3600
        os.utime(folder, (old, old))
    young = root / ".young.partial-x"
    young.mkdir()  # changed after this process started: maybe a run starting right now
    removed = remove_stale_partials(root)
    assert sorted(p.name for p in removed) == [".killed.partial-x", ".none.partial-x"]
    assert sorted(p.name for p in root.iterdir()) == [".alive.partial-x", ".young.partial-x"]
    assert "removed 2 partial folder(s) of interrupted runs" in capfd.readouterr().err


# --------------------------------------------------------------------------- memory
_BATCH = textwrap.dedent(
    """
    import contextlib, io, resource, sys
    from pipeline.cli import main
    codes = []
    for args in CASES:
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            codes.append(main(args))
        assert "Traceback" not in err.getvalue(), err.getvalue()
    print(codes, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    """
)


def test_hostile_batch_stays_under_one_gib_of_peak_rss(tmp_path):
    """One process refuses the large cases in turn; its peak RSS (Linux: KiB) < 1 GiB."""
    n = 8192
    x = npy_header((n, 64, 64, 3), "u1") + bytes(n * 64 * 64 * 3)  # 96 MiB of zeros
    bomb = npz_with(
        tmp_path / "bomb.npz", {"x": x, "y": npy_bytes(np.zeros(n, np.int64))}, zipfile.ZIP_DEFLATED
    )
    del x
    big = npz_with(
        tmp_path / "big.npz",
        {"x": npy_header((10**9, 32, 32, 3), "u1"), "y": npy_bytes(np.zeros(1, np.int64))},
    )
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    _png_header_only(tmp_path / "imgs" / "a" / "huge.png", 20000, 20000)
    cfg = str(default_config(tmp_path))
    cases = [
        ["run", str(npz_config(tmp_path, bomb, model=False))],
        ["run", str(npz_config(tmp_path, big, model=False))],
        ["run", str(_folder_config(tmp_path))],
        ["run", cfg, "--set", "sensor.optics.sigma_px=3000"],
        [
            "run",
            cfg,
            "--set",
            "dataset.size=4096",
            "--set",
            "sensor.scene.pixels_per_image_pixel=16",
        ],
        ["characterize", cfg, "--size", "1000000"],
        ["characterize", cfg, "--levels", "1000000000"],
    ]
    script = f"CASES = {cases!r}\n{_BATCH}"
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    codes, peak_kib = proc.stdout.strip().rsplit(" ", 1)
    assert codes == str([2] * len(cases))
    assert int(peak_kib) < (1 << 20), f"peak RSS {int(peak_kib) / 1024:.0f} MiB"  # Linux: KiB


def test_yaml_file_size_is_bounded_and_the_limit_can_be_raised(tmp_path, capfd, monkeypatch):
    path = default_config(tmp_path)
    monkeypatch.setenv("SENSORLAB_MAX_YAML_BYTES", "100")
    refused(
        cli(capfd, "run", path),
        "cfg.yaml: this YAML file asks for",
        "more than the limit of 100 (set SENSORLAB_MAX_YAML_BYTES to allow more)",
    )
    monkeypatch.setenv("SENSORLAB_MAX_YAML_BYTES", str(path.stat().st_size))
    assert cli(capfd, "run", path, "-q")[0] == 0


def test_a_batch_larger_than_the_batch_bytes_limit_is_refused(tmp_path, capfd, monkeypatch):
    # the scene gives 4 images of 32×32×3 float32: 49,152 bytes; the uint16 input is half that
    monkeypatch.setenv("SENSORLAB_MAX_BATCH_BYTES", str(4 * 32 * 32 * 3 * 4 - 1))
    refused(
        cli(capfd, "run", default_config(tmp_path)),
        "run.batch_size: a batch of 4 images of sensor[0]'s output asks for 49,152 bytes",
        "; or lower it",
    )
    no_run_folder(tmp_path)

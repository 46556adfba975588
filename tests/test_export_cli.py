"""`sensorlab export`, `sensorlab eval` and `sensorlab import` on a model trained by
`sensorlab train`: float, raw-front and int8 exports; the backends agreeing with the NumPy
chain of `sensorlab run`; the int8 report against an independent recount; the import round
trip; and the bad inputs (one line, exit 2, nothing written)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from pipeline.cli import main
from pipeline.cnn.onnx_export import RAW_INPUT_NAME, check_onnx, read_metadata
from pipeline.cnn.onnx_import import load_onnx
from pipeline.export import evaluate, load_source, report_path_for
from pipeline.runner import run
from tests.cnn.test_onnx_export import (
    SENSOR,
    TINY,
    make_config,
    max_diff,
    pattern_images,
    run_onnxruntime,
    write_yaml,
)
from tests.conftest import sensorlab

# The trained model's sensor: SENSOR with 150 photons per pixel instead of 50. At 50 the
# patterns' contrast is under one ADC code (~3 codes above black), and whether 12 epochs
# train the tiny net above chance hinged on single codes: moving the ADC's pedestal to
# the centre of its code (issue 10) changed 0.2 % of the codes by one and the accuracy
# from 0.875 to 0.495 (other seeds: 0.72-0.86 before, 0.33-0.64 after); with codes made
# identical again (a matching gain) it went back to the old value. At 150 photons seeds
# 3-5 give 0.995, 0.94, 0.705. (At 100 an int8 near-tie split onnxruntime and OpenCV.)
TRAINED_SENSOR = [{"stage": "scene", "mean_photons": 150}, *SENSOR[1:]]


def cli(*args, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A run folder from `sensorlab train`: the tiny net trained on the train split (60 %,
    192 images) of 320 pattern images seen through a 10-bit RGGB sensor, validated on the
    val split (15 %); its config's own split is test (25 %, 80 images). And an evaluation
    config of 200 other images, same sensor."""
    from threadpoolctl import threadpool_limits

    from pipeline.train import train_from_config

    folder = tmp_path_factory.mktemp("trained")
    for split, n, seed in (("pool", 320, 1), ("test", 200, 2)):
        x, y = pattern_images(n, 16, seed)
        np.savez(folder / f"{split}.npz", x=x, y=y, class_names=np.array(TINY["classes"]))
    write_yaml(folder / "tiny16.yaml", TINY)
    train_cfg = make_config(
        folder,
        "pool.npz",
        sensor=TRAINED_SENSOR,
        name="train",
        split={"val_fraction": 0.15, "test_fraction": 0.25},
        train={
            "epochs": 12,
            "batch_size": 16,
            "lr": 0.01,
            "optimizer": "adam",
        },
    )
    eval_cfg = make_config(folder, "test.npz", sensor=TRAINED_SENSOR, name="eval")
    with threadpool_limits(1, user_api="blas"):
        run = train_from_config(train_cfg, ["run.name=tiny"])
    return {"folder": folder, "run": run.path, "eval": eval_cfg, "train": train_cfg}


@pytest.fixture(scope="module")
def exports(trained, tmp_path_factory):
    """The run exported three ways through the CLI: float, raw front, raw front int8."""
    folder = tmp_path_factory.mktemp("exports")
    paths = {k: folder / f"{k}.onnx" for k in ("float", "raw", "int8")}
    common = [trained["run"], "--out"]
    assert main(["export", *map(str, common), str(paths["float"])]) == 0
    assert main(["export", *map(str, common), str(paths["raw"]), "--front", "raw"]) == 0
    assert (
        main(
            [
                "export",
                *map(str, common),
                str(paths["int8"]),
                "--front",
                "raw",
                "--int8",
                "--calibration",
                str(trained["eval"]),
                "--calibration-images",
                "64",
                "--opset",
                "19",
            ]
        )
        == 0
    )
    return paths


def test_exported_files(trained, exports):
    for kind, path in exports.items():
        proto = load_onnx(path)
        check_onnx(proto)
        meta = read_metadata(proto)
        assert meta["class_names"] == TINY["classes"]
        assert meta["sensor"]["bits"] == 10 and meta["sensor"]["cfa"] == "RGGB"
        assert meta["front"] == ("none" if kind == "float" else "raw")
        assert (proto.graph.input[0].name == RAW_INPUT_NAME) == (kind != "float")
        assert proto.opset_import[0].version == (19 if kind == "int8" else 17)
    assert sorted(p.name for p in exports["int8"].parent.iterdir()) == [
        "float.onnx",
        "int8.onnx",
        "int8.report.json",
        "raw.onnx",
    ]


def test_backends_agree_with_the_numpy_chain_of_sensorlab_run(trained, exports):
    source = load_source(trained["run"])
    numpy_result = evaluate(source, backend="numpy", config=trained["eval"])
    # the numpy backend is the chain `sensorlab run` builds: the same predictions
    model_yaml = str(trained["run"] / "model.yaml")
    ran = run(trained["eval"], set={"model.path": model_yaml}, store=False, progress=False)
    assert np.array_equal(ran.predictions, numpy_result.predictions)
    assert numpy_result.metrics["accuracy"] == ran.metrics["accuracy"]
    # a real classifier, above chance (3 classes); whether 12 epochs end at 0.99 or 1.0 on
    # these 200 images hinges on the float rounding of training (0.99 before the training
    # kernels of issue 14 changed the order of some sums, 1.0 after)
    assert 0.5 < numpy_result.metrics["accuracy"] <= 1.0
    for backend, engine in (("onnxruntime", "auto"), ("opencv", "new"), ("opencv", "classic")):
        for onnx_file in (None, exports["float"], exports["raw"]):
            r = evaluate(
                source, backend=backend, onnx_file=onnx_file, config=trained["eval"], engine=engine
            )
            assert max_diff(r.logits, numpy_result.logits) <= 1e-4, (backend, onnx_file)
            assert np.mean(r.predictions == numpy_result.predictions) >= 0.999
    q = {
        (b, e): evaluate(
            source, backend=b, onnx_file=exports["int8"], config=trained["eval"], engine=e
        )
        for b, e in (("onnxruntime", "auto"), ("opencv", "new"), ("opencv", "classic"))
    }
    ref = q[("onnxruntime", "auto")]
    # int8 backends may round an output code differently by one step (the dequantised
    # logits' spacing); predictions agree wherever such a step cannot flip the argmax
    step = float(np.min(np.diff(np.unique(ref.logits))))
    top = np.sort(ref.logits, axis=1)
    clear = top[:, -1] - top[:, -2] > 2 * step
    assert np.mean(clear) >= 0.95
    for r in q.values():
        assert max_diff(r.logits, ref.logits) <= 1.01 * step
        assert np.array_equal(r.predictions[clear], ref.predictions[clear])
    assert np.mean(ref.predictions == numpy_result.predictions) >= 0.95


def test_the_int8_report_against_a_recount(trained, exports):
    report = json.loads(report_path_for(exports["int8"]).read_text())
    source = load_source(trained["run"])
    numpy_result = evaluate(source, backend="numpy", config=trained["eval"])
    int8 = evaluate(
        source, backend="onnxruntime", onnx_file=exports["int8"], config=trained["eval"]
    )
    held = slice(64, None)
    y = numpy_result.labels[held]
    assert report["calibration_images"] == 64 and report["held_out_images"] == len(y) == 136
    assert report["float"]["accuracy"] == pytest.approx(
        np.mean(numpy_result.predictions[held] == y)
    )
    assert report["int8"]["accuracy"] == pytest.approx(np.mean(int8.predictions[held] == y))
    assert report["agreement"] == pytest.approx(
        np.mean(numpy_result.predictions[held] == int8.predictions[held])
    )
    assert report["agreement"] >= 0.95
    assert abs(report["int8"]["accuracy"] - report["float"]["accuracy"]) <= 0.05
    assert report["max_abs_logit_diff"] == pytest.approx(
        np.max(np.abs(numpy_result.logits[held] - int8.logits[held])), rel=1e-3, abs=1e-4
    )


def test_eval_prints_the_accuracy(trained, exports, capsys):
    code, out, _ = cli(
        "eval",
        trained["run"],
        "--backend",
        "opencv",
        "--onnx",
        exports["raw"],
        "--config",
        trained["eval"],
        capsys=capsys,
    )
    assert code == 0 and "accuracy" in out and "on 200 images" in out
    code, out, _ = cli("eval", trained["run"], "--json", "--config", trained["eval"], capsys=capsys)
    data = json.loads(out)
    assert code == 0 and data["backend"] == "numpy" and data["n"] == 200


def test_eval_defaults_to_the_runs_own_config(trained, capsys):
    code, out, _ = cli("eval", trained["run"], "--backend", "onnxruntime", capsys=capsys)
    assert code == 0 and "on 80 images" in out  # the test split of the training pool


def test_import_round_trip(trained, exports, tmp_path, capsys):
    code, out, err = cli("import", exports["raw"], "--out", tmp_path / "imported", capsys=capsys)
    assert code == 0 and "tiny16.yaml" in out and "front end" in err
    imported = tmp_path / "imported" / "tiny16.yaml"
    assert main(["export", str(imported), "--out", str(tmp_path / "again.onnx")]) == 0
    x = np.random.default_rng(0).random((5, 3, 16, 16), dtype=np.float32)
    a = run_onnxruntime(load_onnx(exports["float"]), {"input": x})[0]
    b = run_onnxruntime(load_onnx(tmp_path / "again.onnx"), {"input": x})[0]
    assert max_diff(a, b) <= 1e-6


def test_a_model_yaml_with_config_exports_the_raw_front(trained, tmp_path, capsys):
    model_yaml = trained["run"] / "model.yaml"
    out = tmp_path / "m.onnx"
    code, _, err = cli("export", model_yaml, "--out", out, "--front", "raw", capsys=capsys)
    assert code == 2 and "--front raw needs the sensor" in err and not out.exists()
    code, _, _ = cli(
        "export",
        model_yaml,
        "--out",
        out,
        "--front",
        "raw",
        "--config",
        trained["eval"],
        "--input-dtype",
        "int32",
        capsys=capsys,
    )
    assert code == 0
    assert read_metadata(load_onnx(out))["input_range"]["dtype"] == "int32"


# ---------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("method", ["gray_world", "white_patch"])
def test_raw_front_refuses_per_image_white_balance(trained, tmp_path, capsys, method):
    """A per-image white balance is no constant a graph can hold: one line, exit 2."""
    raw = {**SENSOR[3], "white_balance": method}
    folder = trained["folder"]
    config = make_config(folder, "test.npz", sensor=[*TRAINED_SENSOR[:3], raw], name=method)
    args = ["export", trained["run"] / "model.yaml", "--out", tmp_path / "x.onnx"]
    _bad(
        [*args, "--front", "raw", "--config", config],
        capsys,
        tmp_path,
        f"white_balance: {method} is per image",
    )


def _bad(args, capsys, tmp_path, message):
    before = sorted(os.listdir(tmp_path))
    code, _, err = cli(*args, capsys=capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], err
    assert sorted(os.listdir(tmp_path)) == before  # nothing written, no temporary files


def test_missing_and_corrupt_weights(trained, tmp_path, capsys):
    write_yaml(tmp_path / "lonely.yaml", TINY)
    _bad(
        ["export", tmp_path / "lonely.yaml", "--out", tmp_path / "x.onnx"],
        capsys,
        tmp_path,
        "no weights",
    )
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 this is not a zip file")
    write_yaml(tmp_path / "broken.yaml", TINY)
    _bad(
        ["export", tmp_path / "broken.yaml", "--out", tmp_path / "x.onnx"],
        capsys,
        tmp_path,
        "cannot read weights file",
    )
    _bad(
        ["export", tmp_path / "nothing-here", "--out", tmp_path / "x.onnx"],
        capsys,
        tmp_path,
        "no such model YAML or run folder",
    )
    _bad(
        ["export", tmp_path, "--out", tmp_path / "x.onnx"],
        capsys,
        tmp_path,
        "not a training run folder",
    )


@pytest.mark.parametrize("opset", ["12", "22", "seventeen"])
def test_opset_out_of_range(trained, tmp_path, capsys, opset):
    message = "invalid int value" if opset == "seventeen" else "opset must be between 13 and 21"
    _bad(
        ["export", trained["run"], "--out", tmp_path / "x.onnx", "--opset", opset],
        capsys,
        tmp_path,
        message,
    )


def test_calibration_config_that_does_not_match_the_model(trained, tmp_path, capsys):
    folder = trained["folder"]
    twelve = [*TRAINED_SENSOR[:2], {"stage": "adc", "bits": 12}, TRAINED_SENSOR[3]]
    cfg = make_config(folder, "test.npz", sensor=twelve, name=f"bits12-{tmp_path.name}")
    _bad(
        ["export", trained["run"], "--out", tmp_path / "x.onnx", "--int8", "--calibration", cfg],
        capsys,
        tmp_path,
        "sensor does not match the one the model was trained on: bits 12 (model: 10)",
    )
    x = np.zeros((8, 8, 8, 3), np.uint8)
    np.savez(tmp_path.parent / f"small-{tmp_path.name}.npz", x=x, y=np.arange(8) % 3)
    small = make_config(
        tmp_path.parent,
        f"small-{tmp_path.name}.npz",
        sensor=TRAINED_SENSOR,
        name=f"s-{tmp_path.name}",
    )
    _bad(
        ["export", trained["run"], "--out", tmp_path / "x.onnx", "--int8", "--calibration", small],
        capsys,
        tmp_path,
        "the model takes (3, 16, 16)",
    )
    _bad(
        [
            "export",
            trained["run"],
            "--out",
            tmp_path / "x.onnx",
            "--int8",
            "--calibration",
            trained["eval"],
            "--float-layers",
            "fx",
        ],
        capsys,
        tmp_path,
        "no layer 'fx' in the model (choose from batchnorm2d_4, c1, c2, fc,",
    )
    _bad(
        ["export", trained["run"], "--out", tmp_path / "x.onnx", "--int8"],
        capsys,
        tmp_path,
        "--int8 needs --calibration",
    )
    _bad(
        [
            "export",
            trained["run"],
            "--out",
            tmp_path / "x.onnx",
            "--int8",
            "--calibration",
            trained["eval"],
            "--calibration-images",
            "500",
        ],
        capsys,
        tmp_path,
        "leaves none held out",
    )


@pytest.mark.parametrize(("dtype", "ok"), [("uint8", False), ("uint16", True), ("float32", True)])
def test_input_dtype_must_hold_the_adcs_codes(trained, tmp_path, capsys, dtype, ok):
    """The model's sensor has a 10-bit ADC (codes 0..1023): uint8 cannot carry them."""
    args = ["export", trained["run"], "--out", tmp_path / "x.onnx", "--front", "raw"]
    if ok:
        assert cli(*args, "--input-dtype", dtype, capsys=capsys)[0] == 0
        assert read_metadata(load_onnx(tmp_path / "x.onnx"))["input_range"]["dtype"] == dtype
    else:
        _bad(
            [*args, "--input-dtype", dtype],
            capsys,
            tmp_path,
            "input_dtype: uint8 cannot hold the ADC's 10-bit codes (up to 1023)",
        )


@pytest.mark.parametrize(
    ("dtype", "bits", "ok"),
    [
        ("uint8", 8, True),
        ("uint8", 9, False),
        ("uint16", 16, True),
        ("uint16", 17, False),
        ("int32", 31, True),
        ("int32", 32, False),
        ("uint32", 32, True),
        ("float32", 24, True),  # 2**24 - 1 is exact in float32's 24-bit significand
        ("float32", 25, False),
    ],
)
def test_check_input_dtype_against_the_dtypes_range(dtype, bits, ok):
    from pipeline.errors import UserError
    from pipeline.export import check_input_dtype

    top = 2**bits - 1
    # independent references: an integer type's largest value; float32's rounding of top
    if np.dtype(dtype).kind == "f":
        exact = float(np.float32(top)) == top
    else:
        exact = top <= np.iinfo(dtype).max
    assert exact == ok
    if ok:
        check_input_dtype(dtype, bits)
    else:
        with pytest.raises(UserError, match=f"{dtype} cannot hold the ADC's {bits}-bit codes"):
            check_input_dtype(dtype, bits)


def test_sensor_front_takes_the_raw_stages_own_parameters(trained, tmp_path):
    """Every raw-stage setting in the front end is the stage's resolved parameter, given or
    default, so a changed default cannot diverge from a copy."""
    from pipeline.config import load_config
    from pipeline.export import sensor_front
    from sensors.raw import RawStage

    raw = {"stage": "raw", "auto_gain": True, "gain_target": 0.3, "wb_gains": [2.0, 1.0, 1.5]}
    cfg = make_config(
        trained["folder"], "test.npz", sensor=[*SENSOR[:3], raw], name=f"gain-{tmp_path.name}"
    )
    front, chain = sensor_front(load_config(cfg))
    params = chain.sensor_stages[-1].params
    defaults = RawStage.Params()
    assert (front.auto_gain, front.gain_target, front.wb_gains) == (True, 0.3, (2.0, 1.0, 1.5))
    assert front.max_gain == params.max_gain == defaults.max_gain
    assert (front.raw_output, front.mono_output) == (params.output, params.mono_output)
    assert (front.encode, front.gamma, front.clip) == (defaults.encode, defaults.gamma, False)


def test_a_raw_plugin_without_the_raw_parameters_is_a_user_error(trained, tmp_path):
    from pipeline.cnn.onnx_export import SensorFront
    from pipeline.config import load_config
    from pipeline.errors import UserError
    from pipeline.registry import Registry
    from pipeline.runner import build_chain
    from pipeline.stage import SignalInfo, Stage, StageParams, Unit
    from sensors.adc import ADCStage
    from sensors.photodetector import PhotodetectorStage
    from sensors.scene import SceneStage

    class PlainRaw(Stage):
        name = "plain_raw"
        kind = "raw"
        takes = (Unit.DN,)
        gives = Unit.UNITLESS

        class Params(StageParams):
            pass

        def setup(self, info: SignalInfo) -> SignalInfo:
            return info.evolve(
                unit=Unit.UNITLESS, shape=(*info.shape, 3), dtype=np.dtype(np.float32)
            )

        def process(self, x, batch):
            return np.repeat(x[..., None], 3, axis=-1).astype(np.float32)

    registry = Registry([SceneStage, PhotodetectorStage, ADCStage, PlainRaw], entry_points=False)
    cfg = make_config(
        trained["folder"],
        "test.npz",
        sensor=[*SENSOR[:3], {"stage": "plain_raw"}],
        name=f"plain-{tmp_path.name}",
    )
    loaded = load_config(cfg, registry=registry)
    info = SignalInfo(Unit.IMAGE, (16, 16, 3), np.uint8, {"encoding": "srgb8"})
    chain = build_chain(loaded, info, registry=registry, with_model=False)
    with pytest.raises(
        UserError, match="sensor\\[3\\]: the raw stage 'plain_raw' has no parameter"
    ):
        SensorFront.from_chain(chain)


def test_importing_unsupported_operators(tmp_path, capsys):
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Erf", ["r"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
    )
    path = tmp_path / "erf.onnx"
    path.write_bytes(helper.make_model(graph).SerializeToString())
    _bad(
        ["import", path, "--out", tmp_path / "out"],
        capsys,
        tmp_path,
        "unsupported ONNX operator: Erf",
    )


def test_eval_refuses_an_onnx_file_of_another_model(trained, exports, tmp_path, capsys):
    other = dict(TINY, classes=["a", "b", "c"])
    write_yaml(tmp_path / "other.yaml", other)
    from pipeline.cnn.graph import load_graph
    from pipeline.cnn.model import Model

    Model(load_graph(tmp_path / "other.yaml")).save(tmp_path / "other.npz")
    _bad(
        [
            "eval",
            tmp_path / "other.yaml",
            "--backend",
            "onnxruntime",
            "--onnx",
            exports["float"],
            "--config",
            trained["eval"],
        ],
        capsys,
        tmp_path,
        "exported from another model graph",
    )


def test_the_real_command_line(trained, tmp_path):
    ok = sensorlab("export", trained["run"], "--out", tmp_path / "m.onnx", cwd=tmp_path)
    assert ok.returncode == 0 and "wrote" in ok.stdout and (tmp_path / "m.onnx").is_file()
    bad = sensorlab(
        "export", trained["run"], "--out", tmp_path / "n.onnx", "--opset", "30", cwd=tmp_path
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines() == [
        "sensorlab: error: opset: opset must be between 13 and 21, got 30"
    ]
    assert not (tmp_path / "n.onnx").exists()


def test_model_and_report_are_written_together(tmp_path, monkeypatch):
    """If the model cannot be written, no new report is left beside it (and an old one is
    kept as it was); when both succeed, both are there."""
    import onnx

    from pipeline.export import int8

    proto = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], []))
    out = tmp_path / "m.int8.onnx"
    int8.write_model_and_report(proto, out, {"agreement": 1.0})
    assert out.is_file() and json.loads(report_path_for(out).read_text()) == {"agreement": 1.0}

    def broken_save(proto, path):
        raise OSError("disk full")

    monkeypatch.setattr(int8, "save_onnx", broken_save)
    with pytest.raises(OSError, match="disk full"):
        int8.write_model_and_report(proto, out, {"agreement": 0.5})
    assert json.loads(report_path_for(out).read_text()) == {"agreement": 1.0}
    fresh = tmp_path / "fresh.onnx"
    with pytest.raises(OSError, match="disk full"):
        int8.write_model_and_report(proto, fresh, {"agreement": 0.5})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.int8.onnx", "m.int8.report.json"]

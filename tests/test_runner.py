"""The runner: determinism across batch sizes, atomic records, the zarr store, units."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr
from conftest import toy_config

from pipeline.errors import UserError
from pipeline.runner import run


def _complete_runs(out):
    return [p for p in out.iterdir() if not p.name.startswith(".")] if out.exists() else []


def test_same_arrays_for_batch_sizes_1_7_64(toy_registry, npz_dataset, tmp_path):
    results = [
        run(
            toy_config(npz_dataset, tmp_path / "runs", batch_size=b, record={"images": "all"}),
            registry=toy_registry,
            store=False,
        )
        for b in (1, 7, 64)
    ]
    names = ["dataset", "toy_scene", "toy_shot", "toy_adc"]
    assert list(results[0].arrays) == names
    for r in results[1:]:
        for name in names:
            assert r.arrays[name].dtype == results[0].arrays[name].dtype
            np.testing.assert_array_equal(r.arrays[name], results[0].arrays[name])
    # the noise is real: different images draw different noise, a new seed changes it
    electrons = results[0].arrays["toy_shot"]
    assert electrons.shape == (40, 8, 8, 3)
    other = run(
        {**toy_config(npz_dataset, tmp_path, record={"images": "all"}), "seed": 8},
        registry=toy_registry,
        store=False,
    )
    assert not np.array_equal(other.arrays["toy_shot"], electrons)


def test_fixed_pattern_is_per_sensor_not_per_image(toy_registry, tmp_path):
    # a flat black dataset: the electrons are exactly the offset pattern, same on every image
    x = np.zeros((10, 6, 6, 3), np.uint8)
    np.savez(tmp_path / "black.npz", x=x, y=np.zeros(10, int))
    cfg = toy_config(tmp_path / "black.npz", tmp_path, record={"images": "all"})
    a = run(cfg, registry=toy_registry, store=False).arrays["toy_shot"]
    assert all(np.array_equal(a[0], a[i]) for i in range(10))
    b = run({**cfg, "sensor_seed": 99}, registry=toy_registry, store=False).arrays["toy_shot"]
    assert not np.array_equal(a[0], b[0])
    c = run({**cfg, "seed": 99, "sensor_seed": 7}, registry=toy_registry, store=False)
    np.testing.assert_array_equal(a, c.arrays["toy_shot"])  # the run seed leaves the sensor be


def test_store_reopens_with_plain_zarr(toy_registry, npz_dataset, tmp_path):
    res = run(
        toy_config(npz_dataset, tmp_path / "runs", batch_size=6, record={"images": 13}),
        registry=toy_registry,
    )
    assert res.path is not None and res.path.parent == tmp_path / "runs"
    manifest = json.loads((res.path / "manifest.json").read_text())
    group = zarr.open_group(str(res.path / "arrays.zarr"), mode="r")
    assert sorted(group.array_keys()) == sorted(manifest["arrays"])
    units = {"dataset": "image", "toy_scene": "photons", "toy_shot": "electrons", "toy_adc": "DN"}
    for name, meta in manifest["arrays"].items():
        arr = group[name]
        assert list(arr.shape) == meta["shape"]
        assert arr.shape[0] == 13
        assert str(arr.dtype) == meta["dtype"]
        assert arr.attrs["unit"] == meta["unit"] == units[name]
        assert arr.chunks[1:] == arr.shape[1:]  # chunked by whole images
        np.testing.assert_array_equal(arr[:], res.arrays[name])
    assert group["toy_adc"].dtype == np.uint16
    assert group["toy_adc"].attrs["signal_attrs"]["bits"] == 8
    assert (res.path / "samples.png").stat().st_size > 1000
    for key in ("config", "seed", "versions", "stages", "metrics", "wall_seconds"):
        assert key in manifest
    assert manifest["config"]["run"]["batch_size"] == 6
    assert all("seconds" in s for s in manifest["stages"])
    assert res.stage("toy_adc")["unit"] == "DN" and res.stage("toy_adc")["attrs"]["bits"] == 8
    assert res.class_names == ["c0", "c1", "c2", "c3"]


def test_interrupted_run_leaves_nothing_complete(toy_registry, npz_dataset, tmp_path):
    cfg = toy_config(npz_dataset, tmp_path / "runs", batch_size=4)
    cfg["sensor"].append({"stage": "toy_boom", "at": 20})
    with pytest.raises(RuntimeError, match="boom"):
        run(cfg, registry=toy_registry)
    out = tmp_path / "runs"
    assert _complete_runs(out) == []
    assert list(out.rglob("manifest.json")) == []
    assert list(out.iterdir()) == []  # the temporary folder is removed too


def test_units_must_chain(toy_registry, npz_dataset, tmp_path):
    cfg = toy_config(npz_dataset, tmp_path / "runs")
    cfg["sensor"] = [cfg["sensor"][0], cfg["sensor"][2]]  # photons straight into the ADC
    with pytest.raises(UserError) as info:
        run(cfg, registry=toy_registry)
    assert (
        str(info.value)
        == "<dict>: sensor[1].stage: toy_adc takes electrons; toy_scene gives photons"
    )
    assert _complete_runs(tmp_path / "runs") == []


def test_record_selection_and_overrides(toy_registry, npz_dataset, tmp_path):
    cfg = toy_config(npz_dataset, tmp_path, record={"stages": ["toy_adc"], "images": 3})
    res = run(cfg, registry=toy_registry, store=False, set=["sensor.toy_adc.bits=2"])
    assert list(res.arrays) == ["toy_adc"]
    assert res.arrays["toy_adc"].shape == (3, 8, 8, 3)
    assert res.arrays["toy_adc"].max() <= 3
    assert res.manifest["config"]["sensor"][2]["bits"] == 2
    with pytest.raises(UserError, match=r"run\.record\.stages: no stage 'toy_ad' .*did you mean"):
        run(
            {**cfg, "run": {"record": {"stages": ["toy_ad"]}, "out": str(tmp_path)}},
            registry=toy_registry,
            store=False,
        )


def test_nan_in_input_is_a_user_error(toy_registry, tmp_path):
    from pipeline.datasets import ArrayDataset

    x = np.full((5, 4, 4, 3), 0.5, np.float32)
    x[3, 1, 1, 0] = np.nan
    np.savez(tmp_path / "nan.npz", x=x, y=np.zeros(5, int))
    cfg = toy_config(tmp_path / "nan.npz", tmp_path / "runs", batch_size=2)
    with pytest.raises(UserError, match=r"<dict>: dataset\.path: x contains NaN at image 3"):
        run(cfg, registry=toy_registry)
    # arrays handed over through the Python API are checked too
    with pytest.raises(UserError, match="x contains NaN at image 3"):
        run(cfg, registry=toy_registry, dataset=ArrayDataset(x, np.zeros(5, int)))
    assert _complete_runs(tmp_path / "runs") == []


def test_stage_file_parameters_resolve_against_the_config_folder(tmp_path):
    """optics.kernel_path is a file path: relative to the config file, not the cwd."""
    import yaml

    from pipeline.config import load_config
    from pipeline.runner import build_chain
    from pipeline.stage import SignalInfo, Unit

    folder = tmp_path / "cfgs"
    folder.mkdir()
    kernel = np.zeros((3, 3))
    kernel[1, 2] = 1.0  # a pure one-pixel shift
    np.save(folder / "psf.npy", kernel)
    cfg = {
        "dataset": {"kind": "npz", "path": "none.npz"},
        "sensor": [{"stage": "optics", "psf": "kernel", "kernel_path": "psf.npy"}],
    }
    (folder / "c.yaml").write_text(yaml.safe_dump(cfg))
    loaded = load_config(folder / "c.yaml")
    chain = build_chain(loaded, SignalInfo(Unit.PHOTONS, (8, 8, 3), np.float32))
    assert chain.stages[0].params.kernel_path == str(folder / "psf.npy")


def test_noise_is_keyed_by_image_identity_not_position(toy_registry, tmp_path):
    """Image 0 of train and image 0 of val draw different noise; an image read through
    split 'all' gets exactly the noise it gets through its own split."""
    base = {
        "seed": 3,
        "dataset": {"kind": "procedural", "n": 6, "size": 8},
        "sensor": [{"stage": "toy_scene", "photons": 500}, {"stage": "toy_shot", "dsnu_e": 0}],
        "run": {"out": str(tmp_path), "record": {"images": "all"}},
    }

    def electrons_minus_mean(split):
        cfg = {**base, "dataset": {**base["dataset"], "split": split}}
        res = run(cfg, registry=toy_registry, store=False)
        return res.arrays["toy_shot"] - res.arrays["toy_scene"]

    train, val, everything = (electrons_minus_mean(s) for s in ("train", "val", "all"))
    assert not np.array_equal(train[0], val[0])
    np.testing.assert_array_equal(everything[:6], train)  # 'all' is train, val, test in order
    np.testing.assert_array_equal(everything[6:12], val)


def test_stage_error_while_data_flows_is_a_located_user_error(npz_dataset, tmp_path):
    from pipeline.registry import Registry
    from pipeline.stage import Stage, StageError, Unit

    class Refuse(Stage):
        name = "toy_refuse"
        takes = ()
        gives = Unit.DN

        def process(self, x, batch):
            raise StageError("input out of range", key="limit")

    cfg = toy_config(npz_dataset, tmp_path / "runs")
    cfg["sensor"] = [{"stage": "toy_refuse"}]
    with pytest.raises(UserError) as info:
        run(cfg, registry=Registry([Refuse], entry_points=False))
    assert str(info.value) == "<dict>: sensor[0].toy_refuse.limit: input out of range"
    assert _complete_runs(tmp_path / "runs") == []


def test_logits_are_identical_for_any_batch_size(tmp_path):
    """The classifier runs fixed-size calls with each image in a fixed row: logits (not
    only the sensor arrays) are the same bit for bit for batch sizes 1, 7 and 64."""
    from conftest import ROOT

    from pipeline.cnn.graph import load_graph
    from pipeline.cnn.model import Model

    graph = ROOT / "configs" / "models" / "procedural32.yaml"
    (tmp_path / "m.yaml").write_text(graph.read_text())
    Model(load_graph(tmp_path / "m.yaml"), init_seed=4).save(tmp_path / "m.npz")
    cfg = {
        "dataset": {"kind": "procedural", "n": 70, "size": 32},
        "sensor": [
            {"stage": "scene"},
            {"stage": "photodetector"},
            {"stage": "adc"},
            {"stage": "raw", "auto_gain": True},
        ],
        "model": {"path": str(tmp_path / "m.yaml")},
        "run": {"out": str(tmp_path), "record": {"stages": ["cnn"], "images": "all"}},
    }
    logits = [run(cfg, store=False, set={"run.batch_size": b}).arrays["cnn"] for b in (1, 7, 64)]
    assert logits[0].shape == (70, 10)
    np.testing.assert_array_equal(logits[0], logits[1])
    np.testing.assert_array_equal(logits[0], logits[2])


def test_written_files_have_ordinary_permissions(tmp_path):
    """Weights and run folders are readable like any other file the user writes."""
    import os
    import stat

    from conftest import ROOT

    from pipeline.cnn.graph import load_graph
    from pipeline.cnn.model import Model

    umask = os.umask(0o022)
    try:
        Model(load_graph(ROOT / "configs" / "models" / "procedural32.yaml")).save(
            tmp_path / "w.npz"
        )
        mode = stat.S_IMODE((tmp_path / "w.npz").stat().st_mode)
    finally:
        os.umask(umask)
    assert mode == 0o644


def test_stream_gives_runs_arrays_for_any_range_and_batch_size(toy_registry, npz_dataset, tmp_path):
    """The one batch loop: images start..stop streamed in any batch size (and only the
    first stages) are exactly the images of a whole run."""
    from pipeline.config import load_config
    from pipeline.runner import build_chain, open_config_dataset, stream

    cfg = toy_config(npz_dataset, tmp_path / "runs", record={"images": "all"})
    whole = run(cfg, registry=toy_registry, store=False)
    loaded = load_config(cfg, registry=toy_registry)
    dataset = open_config_dataset(loaded)
    chain = build_chain(loaded, dataset.info(), registry=toy_registry)
    for batch_size, start, stop, upto in ((3, 5, 23, 2), (64, 0, None, None), (1, 38, 99, 3)):
        batches = list(stream(chain, dataset, batch_size, upto=upto, start=start, stop=stop))
        end = 40 if stop is None else min(stop, 40)
        assert np.concatenate([b.index for b in batches]).tolist() == list(range(start, end))
        assert max(len(b.index) for b in batches) <= batch_size
        last = chain.names[(upto or len(chain.stages)) - 1]
        got = np.concatenate([b.last for b in batches])
        np.testing.assert_array_equal(got, whole.arrays[last][start:end])
        np.testing.assert_array_equal(
            np.concatenate([b.labels for b in batches]), whole.labels[start:end]
        )


def test_stream_refuses_nan_for_every_caller(toy_registry, tmp_path):
    """A dataset that lets NaN through (a Python-API dataset) meets the NaN check of the one
    loop, on every path that reads through it (run, eval and export's model inputs)."""
    from pipeline.config import load_config
    from pipeline.datasets import ArrayDataset
    from pipeline.export import model_inputs
    from pipeline.runner import build_chain, stream

    x = np.full((6, 8, 8, 3), 0.5, np.float32)
    x[4, 2, 2, 1] = np.nan

    class Leaky(ArrayDataset):  # skips ArrayDataset's own NaN check on construction
        def read(self, start, stop):
            return x[start:stop], np.zeros(stop - start, np.int64)

    dataset = Leaky(np.zeros_like(x), np.zeros(6, np.int64))
    loaded = load_config(toy_config(tmp_path / "none.npz", tmp_path), registry=toy_registry)
    chain = build_chain(loaded, dataset.info(), registry=toy_registry)
    with pytest.raises(UserError, match=r"^cfg\.yaml: dataset: image 4 contains NaN$"):
        list(stream(chain, dataset, 4, file="cfg.yaml"))
    with pytest.raises(UserError, match="image 4 contains NaN"):
        list(model_inputs(chain, dataset, 4, adc_codes=False, start=3))
    assert len(list(model_inputs(chain, dataset, 4, adc_codes=True, stop=4))) == 1


def test_batch_invariance_holds_under_openblas_haswell_kernel_too():
    """Some machines set OPENBLAS_CORETYPE=Haswell (the env's README), whose sgemm rounds a
    GEMM row by its offset in the GEMM: the runner's batch-size tests, run in a process
    that loads that kernel, still hold (the classifier stage puts each image at a fixed
    row). The compiled evaluator's own checks run there too."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OPENBLAS_CORETYPE": "Haswell", "OPENBLAS_L2_SIZE": "512"}
    probe = (
        "from threadpoolctl import threadpool_info; import numpy; "
        "print(sorted({i.get('architecture') for i in threadpool_info() "
        "if i['internal_api'] == 'openblas'}))"
    )
    kernel = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert "Haswell" in kernel
    tests = [
        "tests/test_runner.py::test_same_arrays_for_batch_sizes_1_7_64",
        "tests/test_runner.py::test_logits_are_identical_for_any_batch_size",
        "tests/cnn/test_fast_determinism.py",
    ]
    pytest = [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider"]
    done = subprocess.run(
        [*pytest, *tests],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-3000:]

"""Model: whole-graph gradients (float64, skip connection and concat), modes, dtypes,
initialisation, saving and loading weights and the errors for mismatched files."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.cnn import functional as F
from pipeline.cnn.graph import load_graph, parse_graph
from pipeline.cnn.model import Model, load_model
from pipeline.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
RGB32 = ROOT / "configs" / "models" / "rgb32.yaml"

SKIP_GRAPH = {
    "name": "skip",
    "input": [2, 6, 6],
    "classes": ["a", "b", "c"],
    "layers": [
        {"type": "conv2d", "filters": 3, "kernel": 3, "padding": "same", "name": "c1"},
        {"type": "leaky_relu", "alpha": 0.1},
        {"type": "conv2d", "filters": 3, "kernel": 3, "padding": 1, "bias": False, "name": "c2"},
        {"type": "batchnorm2d", "name": "bn"},
        {"type": "add", "from": [-1, "c1"], "name": "skip"},
        {"type": "concat", "from": [-1, "input"], "name": "cat"},
        {"type": "maxpool2d", "size": 2},
        {"type": "conv2d", "filters": 4, "kernel": 2, "name": "c3"},
        {"type": "tanh"},
        {"type": "flatten"},
        {"type": "dense", "units": 6, "name": "fc1"},
        {"type": "sigmoid"},
        {"type": "dropout", "rate": 0.25},
        {"type": "dense", "units": 3, "name": "fc2"},
        {"type": "softmax"},
    ],
}


def skip_model(dtype=np.float64, seed=0):
    return Model(parse_graph(SKIP_GRAPH, source="skip.yaml"), dtype=dtype, init_seed=seed)


def test_whole_graph_gradients_match_finite_differences():
    model = skip_model()
    rng = np.random.default_rng(0)
    for v in model.params.values():  # move BN and biases away from their trivial init
        v += 0.2 * rng.standard_normal(v.shape)
    x = rng.standard_normal((4, 2, 6, 6))
    labels = np.array([0, 2, 1, 2])

    def loss_and_grad():
        logits = model.forward(x, train=True, rng=np.random.default_rng(11))
        return F.cross_entropy(logits, labels)

    _, dlogits = loss_and_grad()
    grads, dx = model.backward(dlogits, input_grad=True)
    assert list(grads) == list(model.params)

    h = 1e-6

    def numeric(arr):
        g = np.zeros_like(arr)
        for i in np.ndindex(arr.shape):
            old = arr[i]
            arr[i] = old + h
            up = float(loss_and_grad()[0])
            arr[i] = old - h
            down = float(loss_and_grad()[0])
            arr[i] = old
            g[i] = (up - down) / (2 * h)
        return g

    def rel(a, b):
        return np.linalg.norm(a - b) / (np.linalg.norm(a) + np.linalg.norm(b))

    for name, p in model.params.items():
        assert rel(grads[name], numeric(p)) < 1e-6, name
    assert rel(dx, numeric(x)) < 1e-6
    # without input_grad the layers reading the input skip their dx: same parameter grads
    model.forward(x, train=True, rng=np.random.default_rng(11))
    assert all(np.array_equal(g, grads[k]) for k, g in model.backward(dlogits).items())


def test_forward_single_image_dtypes_and_softmax_output():
    m32 = skip_model(np.float32)
    m64 = skip_model(np.float64)
    x = np.random.default_rng(1).standard_normal((5, 2, 6, 6))
    z32, z64 = m32.forward(x), m64.forward(x)
    assert z32.dtype == np.float32 and z64.dtype == np.float64
    assert z32.shape == (5, 3)
    np.testing.assert_allclose(z32, z64, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(m64.forward(x[2]), z64[2:3], rtol=1e-12)
    # the trailing softmax is the output activation: forward gives logits
    p = m64.predict_proba(x)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    np.testing.assert_allclose(np.log(p), z64 - np.log(np.exp(z64).sum(1, keepdims=True)))
    np.testing.assert_array_equal(m64.predict(x, batch_size=2), np.argmax(z64, axis=1))


def test_eval_is_deterministic_and_train_mode_differs():
    m = skip_model()
    x = np.random.default_rng(2).standard_normal((6, 2, 6, 6))
    np.testing.assert_array_equal(m.forward(x), m.forward(x))
    before = m.buffers["bn.running_mean"].copy()
    zt = m.forward(x, train=True, rng=np.random.default_rng(0))
    assert not np.allclose(zt, m.forward(x))  # batch statistics and dropout in training
    assert not np.array_equal(before, m.buffers["bn.running_mean"])


def test_input_shape_is_checked():
    with pytest.raises(UserError, match=r"skip.yaml: input: model 'skip' takes \(N, 2, 6, 6\)"):
        skip_model().forward(np.zeros((1, 3, 6, 6)))


def test_backward_needs_a_training_forward():
    m = skip_model()
    m.forward(np.zeros((1, 2, 6, 6)))
    with pytest.raises(RuntimeError, match="forward"):
        m.backward(np.zeros((1, 3)))


def test_initialisation_is_seeded_and_he_before_relu():
    a, b, c = skip_model(seed=1), skip_model(seed=1), skip_model(seed=2)
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])
    assert not np.array_equal(a.params["c1.weight"], c.params["c1.weight"])
    rgb = load_model(RGB32, init_seed=0)
    w = rgb.params["fc1.weight"]  # 4096 -> 256, before a ReLU: He normal
    assert w.std() == pytest.approx(np.sqrt(2 / 4096), rel=0.01)
    w = rgb.params["fc2.weight"]  # last layer: Glorot uniform
    assert np.abs(w).max() <= np.sqrt(6 / (256 + 10))
    assert w.std() == pytest.approx(np.sqrt(6 / (256 + 10)) / np.sqrt(3), rel=0.1)


def write_pair(tmp_path, data=SKIP_GRAPH, stem="net"):
    path = tmp_path / f"{stem}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_save_and_load_round_trip(tmp_path):
    path = write_pair(tmp_path)
    m = load_model(path, init_seed=3)
    m.forward(np.random.default_rng(0).standard_normal((8, 2, 6, 6)), train=True)
    m.save(tmp_path / "net.npz")
    assert not list(tmp_path.glob("*.tmp"))
    back = load_model(path)  # default weights: net.npz next to the YAML
    for k, v in m.state_arrays().items():
        np.testing.assert_array_equal(back.state_arrays()[k], v)
    x = np.random.default_rng(1).standard_normal((3, 2, 6, 6))
    np.testing.assert_array_equal(back.forward(x), m.forward(x))
    assert load_model(path, dtype=np.float64).forward(x).dtype == np.float64


def test_missing_weights_is_an_error_unless_init_seed(tmp_path):
    path = write_pair(tmp_path)
    with pytest.raises(UserError) as info:
        load_model(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: no weights: {tmp_path / 'net.npz'} does not exist")
    assert "\n" not in msg
    assert load_model(path, init_seed=0).n_params > 0
    with pytest.raises(UserError, match="weights file not found"):
        load_model(path, tmp_path / "other.npz", init_seed=0)


def test_weights_for_another_graph_are_refused_naming_both_files(tmp_path):
    path = write_pair(tmp_path)
    other = dict(SKIP_GRAPH, layers=[dict(r) for r in SKIP_GRAPH["layers"]])
    other["layers"][7]["filters"] = 5  # c3
    other_path = write_pair(tmp_path, other, stem="other")
    load_model(other_path, init_seed=0).save(tmp_path / "other.npz")
    with pytest.raises(UserError) as info:
        load_model(path, tmp_path / "other.npz")
    msg = str(info.value)
    assert msg.startswith(f"{tmp_path / 'other.npz'}: these weights belong to another model graph")
    assert f"not to {path}" in msg and "\n" not in msg


def test_renaming_the_model_or_reformatting_keeps_weights_valid(tmp_path):
    path = write_pair(tmp_path)
    load_model(path, init_seed=0).save(tmp_path / "net.npz")
    renamed = tmp_path / "renamed.yaml"
    renamed.write_text("# comment\n" + yaml.safe_dump(dict(SKIP_GRAPH, name="else")))
    shutil.copy(tmp_path / "net.npz", tmp_path / "renamed.npz")
    saved = load_model(path).state_arrays()
    loaded = load_model(renamed, init_seed=1)  # another init seed: the weights must be read
    assert loaded.spec.name == "else"
    assert loaded.state_arrays().keys() == saved.keys()
    for k, v in saved.items():
        np.testing.assert_array_equal(loaded.state_arrays()[k], v, err_msg=k)


def test_corrupt_or_foreign_weights(tmp_path):
    path = write_pair(tmp_path)
    (tmp_path / "net.npz").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="cannot read weights file"):
        load_model(path)
    np.savez(tmp_path / "net.npz", w=np.zeros(3))
    with pytest.raises(UserError, match="not a sensorlab weights file"):
        load_model(path)
    m = Model(parse_graph(SKIP_GRAPH))
    with pytest.raises(UserError, match=r"c1.weight has shape \(1,\)"):
        m.set_state_arrays({**m.state_arrays(), "c1.weight": np.zeros(1)}, source="w.npz")
    with pytest.raises(UserError, match=r"missing bn\.running_var"):
        m.set_state_arrays(
            {k: v for k, v in m.state_arrays().items() if k != "bn.running_var"}, source="w.npz"
        )


# ------------------------------------------------------------------ through the CLI (exit 2)

TINY_RGB = {
    "input": [3, 8, 8],
    "classes": ["c0", "c1", "c2", "c3"],
    "layers": [{"type": "flatten"}, {"type": "dense", "units": 4}],
}


def _run_config(tmp_path, npz_dataset):
    from tests.conftest import sensorlab

    write_pair(tmp_path, TINY_RGB, stem="tiny")
    cfg = {
        "dataset": {"kind": "npz", "path": str(npz_dataset)},
        "model": {"path": "tiny.yaml"},
        "run": {"out": str(tmp_path / "runs")},
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    return lambda: sensorlab("run", "cfg.yaml", cwd=tmp_path)


def test_cli_missing_weights_exit_2(tmp_path, npz_dataset):
    res = _run_config(tmp_path, npz_dataset)()
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1
    assert f"tiny.yaml: no weights: {tmp_path / 'tiny.npz'} does not exist" in lines[0]


def test_cli_weights_of_another_graph_exit_2(tmp_path, npz_dataset):
    run = _run_config(tmp_path, npz_dataset)
    other = dict(TINY_RGB, layers=[{"type": "global_avgpool"}, {"type": "dense", "units": 4}])
    other_path = write_pair(tmp_path, other, stem="other")
    load_model(other_path, init_seed=0).save(tmp_path / "tiny.npz")
    res = run()
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "tiny.npz: these weights belong to another model graph" in lines[0]
    assert "tiny.yaml" in lines[0]
    Model(load_graph(tmp_path / "tiny.yaml")).save(tmp_path / "tiny.npz")  # the right pair
    assert run().returncode == 0

"""Optimisers against hand-computed updates, schedules at known epochs, a small CNN
learning a synthetic task, early stopping, and bit-exact resume from a checkpoint."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError
from threadpoolctl import threadpool_limits

from pipeline.cnn.graph import parse_graph
from pipeline.cnn.model import Model
from pipeline.cnn.optim import SGD, Adam, AdamW, LRSchedule
from pipeline.cnn.training import Callback, TrainConfig, evaluate, fit, split_train_val
from pipeline.errors import UserError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def one_blas_thread():
    """Single-threaded BLAS: on a shared 2-core machine under load, OpenBLAS's two-thread
    GEMM on these small matrices was measured 400x slower (36 ms vs 0.09 ms)."""
    with threadpool_limits(1, user_api="blas"):
        yield


# ------------------------------------------------------------------ optimisers
# One 1x2 weight (decayed: 2 axes) and one bias (not decayed), two steps with known
# gradients; expected values worked out by hand from the update equations
# (PyTorch SGD/Adam/AdamW documentation; Loshchilov & Hutter 2019, Algorithm 2).

P0 = [1.0, -2.0]
G1 = [0.5, 0.25]
G2 = [-0.1, 0.4]


def two_steps(opt_cls, **kw):
    params = {"w": np.array([P0]), "b": np.array(P0)}
    opt = opt_cls(params, **kw)
    after = []
    for g in (G1, G2):
        opt.step({"w": np.array([g]), "b": np.array(g)})
        after.append((params["w"][0].copy(), params["b"].copy()))
    return after


def test_sgd_momentum_with_l2_decay():
    (w1, b1), (w2, b2) = two_steps(SGD, lr=0.1, momentum=0.9, weight_decay=0.01)
    # step 1: g = G1 + 0.01 p0 = [0.51, 0.23]; buf = g; p1 = p0 - 0.1 buf
    np.testing.assert_allclose(w1, [0.949, -2.023], rtol=1e-14)
    # step 2: g = G2 + 0.01 p1 = [-0.09051, 0.37977]; buf = 0.9 buf + g = [0.36849, 0.58677]
    np.testing.assert_allclose(w2, [0.912151, -2.081677], rtol=1e-14)
    # the bias is not decayed: buf = G1, then 0.9 G1 + G2 = [0.35, 0.625]
    np.testing.assert_allclose(b1, [0.95, -2.025], rtol=1e-14)
    np.testing.assert_allclose(b2, [0.915, -2.0875], rtol=1e-14)


def test_sgd_nesterov():
    (w1, _), (w2, _) = two_steps(SGD, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)
    # step 1: g = [0.51, 0.23], buf = g, update = g + 0.9 buf = 1.9 g = [0.969, 0.437]
    np.testing.assert_allclose(w1, [0.9031, -2.0437], rtol=1e-14)
    # step 2: g = G2 + 0.01 p1 = [-0.090969, 0.379563]; buf = 0.9 buf + g
    # = [0.368031, 0.586563]; update = g + 0.9 buf = [0.2402589, 0.9074697]
    np.testing.assert_allclose(w2, [0.87907411, -2.13444697], rtol=1e-14)


def test_plain_sgd():
    (_, b1), _ = two_steps(SGD, lr=0.5)
    np.testing.assert_allclose(b1, [0.75, -2.125], rtol=1e-15)


def test_adam():
    (w1, _), (w2, _) = two_steps(Adam, lr=0.01)
    # step 1: m_hat = g, v_hat = g^2 -> p -= lr * g / (|g| + eps) = lr * sign(g)
    np.testing.assert_allclose(w1, [0.99, -2.01], rtol=1e-9)
    # step 2: m = [0.035, 0.0625], v = [2.5975e-4, 2.224375e-4];
    # m_hat = m / 0.19, v_hat = v / 0.001999
    np.testing.assert_allclose(w2, [0.9848897395699324, -2.019861177591303], rtol=1e-12)


def test_adam_l2_decay_enters_the_moments():
    (w1, _), (w2, _) = two_steps(Adam, lr=0.01, weight_decay=0.1)
    np.testing.assert_allclose(w1, [0.9900000001666667, -2.0099999980000005], rtol=1e-12)
    np.testing.assert_allclose(w2, [0.9833118355673723, -2.0188493053998084], rtol=1e-12)


def test_adamw_decay_is_decoupled():
    (w1, _), (w2, b2) = two_steps(AdamW, lr=0.01, weight_decay=0.1)
    # step 1: p *= 1 - 0.01 * 0.1, then the Adam step lr * sign(g)
    np.testing.assert_allclose(w1, [0.999 - 0.01, -1.998 - 0.01], rtol=1e-9)
    # step 2: p *= 0.999, then the same Adam step as without decay
    np.testing.assert_allclose(w2, [0.9829007395697325, -2.015853177591703], rtol=1e-12)
    _, (bw2, _) = two_steps(Adam, lr=0.01)
    np.testing.assert_allclose(b2, bw2, rtol=1e-15)  # biases: no decay


def test_optimizer_state_round_trip():
    params = {"w": np.array([P0])}
    a = Adam(params, lr=0.01)
    a.step({"w": np.array([G1])})
    b = Adam({"w": params["w"].copy()}, lr=0.01)
    b.load_state_dict(a.state_dict())
    a.step({"w": np.array([G2])})
    b.step({"w": np.array([G2])})
    np.testing.assert_array_equal(a.params["w"], b.params["w"])


# ------------------------------------------------------------------ schedules


def test_warmup_is_linear_per_step():
    s = LRSchedule("constant", lr=0.1, epochs=10, warmup_epochs=2)
    assert s(0, 0, 4) == pytest.approx(0.1 / 8)
    assert s(0, 3, 4) == pytest.approx(0.1 * 4 / 8)
    assert s(1, 3, 4) == pytest.approx(0.1)
    assert s(2, 0, 4) == 0.1
    assert s(9, 3, 4) == 0.1


def test_step_schedule_counts_epochs_after_warmup():
    s = LRSchedule("step", lr=0.1, epochs=20, step_epochs=3, gamma=0.5)
    assert [s(e) for e in (0, 2, 3, 5, 6, 9)] == pytest.approx(
        [0.1, 0.1, 0.05, 0.05, 0.025, 0.0125]
    )
    w = LRSchedule("step", lr=0.1, epochs=20, warmup_epochs=1, step_epochs=3, gamma=0.5)
    assert w(3) == 0.1 and w(4) == pytest.approx(0.05)


def test_cosine_schedule():
    s = LRSchedule("cosine", lr=0.1, epochs=10, warmup_epochs=2, min_lr=0.001)
    assert s(2) == pytest.approx(0.1)
    assert s(6) == pytest.approx(0.001 + 0.099 / 2)  # halfway: cos(pi/2) = 0
    assert s(9) == pytest.approx(0.001 + 0.099 * (1 + math.cos(7 * math.pi / 8)) / 2)
    s = LRSchedule("cosine", lr=1.0, epochs=4)
    assert [s(e) for e in range(4)] == pytest.approx([1.0, 0.8535534, 0.5, 0.1464466])


def test_train_config_is_validated():
    with pytest.raises(ValidationError, match="Extra inputs"):
        TrainConfig(epoch=3)
    with pytest.raises(ValidationError, match="warmup_epochs"):
        TrainConfig(epochs=3, warmup_epochs=3)
    with pytest.raises(ValidationError, match="nesterov"):
        TrainConfig(optimizer="adam", nesterov=True)
    with pytest.raises(ValidationError, match="greater than 0"):
        TrainConfig(lr=0)


# ------------------------------------------------------------------ data and training


def bars(n: int, size: int = 12, noise: float = 0.45, seed: int = 0):
    """Oriented bars: class c is a short bar at c * 45 degrees (+-5 degrees), anywhere near
    the centre, in Gaussian noise of standard deviation ``noise`` (bar = 1)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    x = np.zeros((n, 1, size, size), np.float32)
    for i, c in enumerate(labels):
        cx, cy = rng.uniform(3.5, size - 3.5, 2)
        a = c * math.pi / 4 + rng.normal(0, 0.08)
        across = np.abs((xx - cx) * math.sin(a) - (yy - cy) * math.cos(a))
        along = np.abs((xx - cx) * math.cos(a) + (yy - cy) * math.sin(a))
        x[i, 0] = (across < 0.8) & (along < 3.5)
    x += rng.normal(0, noise, x.shape).astype(np.float32)
    return x, labels


SMALL = {
    "input": [1, 12, 12],
    "classes": ["0deg", "45deg", "90deg", "135deg"],
    "layers": [
        {"type": "conv2d", "filters": 8, "kernel": 3, "padding": "same"},
        {"type": "relu"},
        {"type": "maxpool2d", "size": 2},
        {"type": "conv2d", "filters": 16, "kernel": 3, "padding": "same"},
        {"type": "relu"},
        {"type": "global_avgpool"},
        {"type": "dense", "units": 4},
    ],
}

# BN + dropout + skip: exercises every piece of state a resume must restore
STATEFUL = {
    "input": [1, 12, 12],
    "classes": ["0deg", "45deg", "90deg", "135deg"],
    "layers": [
        {"type": "conv2d", "filters": 6, "kernel": 3, "padding": 1, "bias": False, "name": "c1"},
        {"type": "batchnorm2d"},
        {"type": "relu", "name": "r1"},
        {"type": "conv2d", "filters": 6, "kernel": 3, "padding": 1},
        {"type": "add", "from": [-1, "r1"]},
        {"type": "maxpool2d", "size": 3, "stride": 3},
        {"type": "flatten"},
        {"type": "dropout", "rate": 0.3},
        {"type": "dense", "units": 4},
    ],
}


def test_small_cnn_learns_oriented_bars():
    """Chance is 25 %; measured: 92.5 % on 400 fresh images after 15 epochs (~2 s)."""
    x, y = bars(1200)
    model = Model(parse_graph(SMALL), init_seed=0)
    cfg = TrainConfig(epochs=15, batch_size=32, lr=0.01, schedule="cosine", val_fraction=0.25)
    result = fit(model, (x, y), cfg=cfg)
    assert result.epochs_run == 15
    hist = result.history
    assert hist[-1]["train_loss"] < 0.5 * hist[0]["train_loss"]
    x_test, y_test = bars(400, seed=1)
    assert evaluate(model, (x_test, y_test))["accuracy"] >= 0.85


def test_split_is_stratified_and_seeded():
    y = np.repeat(np.arange(4), [10, 20, 30, 40])
    x = np.arange(100)
    (xt, _), (xv, yv) = split_train_val(x, y, 0.2, seed=3)
    assert np.bincount(yv).tolist() == [2, 4, 6, 8]
    assert sorted([*xt, *xv]) == list(range(100))
    (_, _), (xv2, _) = split_train_val(x, y, 0.2, seed=3)
    np.testing.assert_array_equal(xv, xv2)


class Interrupt(Callback):
    def __init__(self, after_epoch):
        self.after_epoch = after_epoch

    def on_epoch_end(self, epoch, record):
        if epoch == self.after_epoch:
            raise KeyboardInterrupt


def _without_time(history):
    return [{k: v for k, v in row.items() if k != "time_s"} for row in history]


def test_resume_reproduces_the_uninterrupted_run_bit_for_bit(tmp_path):
    x, y = bars(240, seed=5)
    cfg = TrainConfig(
        epochs=5,
        batch_size=32,
        optimizer="adamw",
        lr=0.005,
        weight_decay=0.01,
        schedule="cosine",
        warmup_epochs=1,
        val_fraction=0.2,
        seed=7,
    )
    straight = Model(parse_graph(STATEFUL), init_seed=1)
    full = fit(straight, (x, y), cfg=cfg, checkpoint=tmp_path / "a.npz")

    ckpt = tmp_path / "b.npz"
    first = Model(parse_graph(STATEFUL), init_seed=1)
    with pytest.raises(KeyboardInterrupt):
        fit(first, (x, y), cfg=cfg, callbacks=[Interrupt(after_epoch=2)], checkpoint=ckpt)
    resumed = Model(parse_graph(STATEFUL), init_seed=99)  # state comes from the checkpoint
    result = fit(resumed, (x, y), cfg=cfg, checkpoint=ckpt, resume=True)

    assert _without_time(result.history) == _without_time(full.history)
    assert result.best_epoch == full.best_epoch
    for k, v in straight.state_arrays().items():
        np.testing.assert_array_equal(resumed.state_arrays()[k], v, err_msg=k)


def test_resume_refuses_a_changed_config(tmp_path):
    x, y = bars(64, seed=2)
    model = Model(parse_graph(SMALL), init_seed=0)
    cfg = TrainConfig(epochs=1, batch_size=32, val_fraction=0.25)
    fit(model, (x, y), cfg=cfg, checkpoint=tmp_path / "c.npz")
    changed = TrainConfig(epochs=2, batch_size=16, val_fraction=0.25)
    with pytest.raises(UserError, match=r"cannot resume: .*batch_size: 32 -> 16"):
        fit(model, (x, y), cfg=changed, checkpoint=tmp_path / "c.npz", resume=True)
    longer = TrainConfig(epochs=2, batch_size=32, val_fraction=0.25)  # more epochs: allowed
    result = fit(model, (x, y), cfg=longer, checkpoint=tmp_path / "c.npz", resume=True)
    assert [r["epoch"] for r in result.history] == [0, 1]


def test_early_stopping_restores_the_best_epoch():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((160, 1, 12, 12)).astype(np.float32)
    y = rng.integers(0, 4, 160)  # no signal: validation loss rises while training overfits
    model = Model(parse_graph(SMALL), init_seed=0)
    cfg = TrainConfig(epochs=40, batch_size=16, lr=0.02, patience=3, val_fraction=0.25)
    result = fit(model, (x, y), cfg=cfg)
    assert result.stopped_early
    assert result.epochs_run == result.best_epoch + 1 + 3
    (_, _), val = split_train_val(x, y, 0.25, seed=0)
    best = min(r["val_loss"] for r in result.history)
    assert evaluate(model, val)["loss"] == pytest.approx(best, rel=1e-6)


def test_iterator_factory_data():
    x, y = bars(128, seed=3)
    seen = []

    def batches(epoch):
        seen.append(epoch)
        return [(x[i : i + 32], y[i : i + 32]) for i in range(0, 128, 32)]

    model = Model(parse_graph(SMALL), init_seed=0)
    cfg = TrainConfig(epochs=3, lr=0.01, warmup_epochs=1)
    lrs = []

    class Lr(Callback):
        def on_batch_end(self, epoch, step, logs):
            lrs.append(logs["lr"])

    result = fit(model, batches, val_data=lambda e: batches(e)[:1], cfg=cfg, callbacks=[Lr()])
    assert [r["epoch"] for r in result.history] == [0, 1, 2]
    assert "val_accuracy" in result.history[0]
    assert lrs[:4] == pytest.approx([0.0025, 0.005, 0.0075, 0.01])  # warm-up over 4 steps


def test_bad_training_data():
    model = Model(parse_graph(SMALL), init_seed=0)
    x, y = bars(16)
    with pytest.raises(UserError, match=r"labels must be in 0\.\.3"):
        fit(model, (x, y + 4))
    with pytest.raises(UserError, match="16 images but 15 labels"):
        fit(model, (x, y[:-1]))
    with pytest.raises(UserError, match=r"patience \(early stopping\) needs validation data"):
        fit(model, (x, y), cfg=TrainConfig(val_fraction=0, patience=2))
    with pytest.raises(UserError, match=r"takes \(N, 1, 12, 12\)"):
        fit(model, (np.zeros((16, 3, 12, 12)), y), cfg=TrainConfig(epochs=1))


# ------------------------------------------------------------------ the shipped rgb32 net


def colour_shapes(n: int, size: int = 32, seed: int = 0):
    """10 classes, label = 5 * colour + shape: colour red or blue, shape disk, square,
    triangle, cross or ring; random position, size and rotation, on a grey background of
    random level, with Gaussian noise (standard deviation 0.08) everywhere."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    x = np.empty((n, 3, size, size), np.float32)
    for i, c in enumerate(labels):
        colour, shape = divmod(int(c), 5)
        cx, cy = rng.uniform(size * 0.35, size * 0.65, 2)
        r = rng.uniform(0.2, 0.3) * size
        a = rng.uniform(0, 2 * math.pi)
        u = (xx - cx) * math.cos(a) + (yy - cy) * math.sin(a)
        v = -(xx - cx) * math.sin(a) + (yy - cy) * math.cos(a)
        d = np.hypot(u, v)
        if shape == 0:
            mask = d < r
        elif shape == 1:
            mask = (np.abs(u) < 0.8 * r) & (np.abs(v) < 0.8 * r)
        elif shape == 2:
            mask = np.ones_like(u, dtype=bool)
            for k in range(3):
                t = a + k * 2 * math.pi / 3
                mask &= (xx - cx) * math.cos(t) + (yy - cy) * math.sin(t) < 0.5 * r
        elif shape == 3:
            arms = (np.abs(u) < 0.3 * r) | (np.abs(v) < 0.3 * r)
            mask = arms & (np.maximum(np.abs(u), np.abs(v)) < r)
        else:
            mask = (d < r) & (d > 0.6 * r)
        rgb = [0.85, 0.25, 0.2] if colour == 0 else [0.2, 0.35, 0.85]
        fg = np.array(rgb) * rng.uniform(0.6, 1.1)
        img = rng.uniform(0.2, 0.6) + rng.normal(0, 0.08, (3, size, size))
        img[:, mask] = fg[:, None] + rng.normal(0, 0.08, (3, int(mask.sum())))
        x[i] = img
    return x, labels


@pytest.mark.slow
def test_rgb32_learns_colour_shapes():
    """The shipped benchmark net on 2,250 training images, 10 epochs (chance 10 %).
    Measured: 91.8 % on 500 fresh images, ~290 s with one BLAS thread on a busy 2-core
    machine (~77 training images/s)."""
    from pipeline.cnn.model import load_model

    x, y = colour_shapes(2500)
    model = load_model(ROOT / "configs" / "models" / "rgb32.yaml", init_seed=0)
    cfg = TrainConfig(
        epochs=10,
        batch_size=64,
        lr=0.002,
        schedule="cosine",
        warmup_epochs=1,
        val_fraction=0.1,
    )
    result = fit(model, (x, y), cfg=cfg)
    assert result.history[-1]["train_accuracy"] > 0.85
    x_test, y_test = colour_shapes(500, seed=1)
    assert evaluate(model, (x_test, y_test))["accuracy"] >= 0.85


# Big enough that every split the training kernels make has several pieces: the
# same-size conv 4 row chunks (16 images of 17x17 flat rows), the valid conv the
# plain padded layout, the dense layer 2 forward and 3 backward column blocks, and
# AdamW 2 blocks of its 73,728 weights.
THREADED = {
    "input": [3, 16, 16],
    "classes": ["0deg", "45deg", "90deg", "135deg"],
    "layers": [
        {"type": "conv2d", "filters": 8, "kernel": 3, "padding": "same"},
        {"type": "relu"},
        {"type": "maxpool2d", "size": 2},
        {"type": "conv2d", "filters": 8, "kernel": 3},
        {"type": "relu"},
        {"type": "flatten"},
        {"type": "dense", "units": 256},
        {"type": "relu"},
        {"type": "dense", "units": 4},
    ],
}
# the training kernels of the bench net and of the shipped models: fused conv -> ReLU
# without and with a pool (several row chunks), batch norm, a layer-by-layer pool
THREADED_BN = {
    "input": [3, 16, 16],
    "classes": ["0deg", "45deg", "90deg", "135deg"],
    "layers": [
        {"type": "conv2d", "filters": 8, "kernel": 3, "padding": 1},
        {"type": "relu"},
        {"type": "conv2d", "filters": 8, "kernel": 3, "padding": 1},
        {"type": "relu"},
        {"type": "maxpool2d", "size": 2},
        {"type": "conv2d", "filters": 8, "kernel": 3, "padding": 1, "bias": False},
        {"type": "batchnorm2d"},
        {"type": "relu"},
        {"type": "maxpool2d", "size": 2},
        {"type": "flatten"},
        {"type": "dense", "units": 4},
    ],
}


@pytest.mark.parametrize("graph", [THREADED, THREADED_BN], ids=["plain", "batchnorm"])
def test_trained_weights_are_bit_identical_for_any_thread_count(monkeypatch, graph):
    """Weight gradients are summed over fixed chunks in a fixed order, whichever thread
    computed each chunk: 1, 2 and 3 worker threads train the same weights, bit for bit."""
    from pipeline.threads import THREADS_ENV

    x, y = bars(48, seed=3, size=16)
    x = np.repeat(x, 3, axis=1)
    cfg = TrainConfig(epochs=1, batch_size=16, optimizer="adamw", lr=0.01, weight_decay=0.01)
    weights = []
    for n_threads in (1, 2, 3):
        monkeypatch.setenv(THREADS_ENV, str(n_threads))
        model = Model(parse_graph(graph), init_seed=4)
        fit(model, (x, y), cfg=cfg)
        weights.append(model.state_arrays())
    for other in weights[1:]:
        for k, v in weights[0].items():
            np.testing.assert_array_equal(other[k], v, err_msg=k)
    initial = Model(parse_graph(graph), init_seed=4).params
    assert all(not np.array_equal(weights[0][k], v) for k, v in initial.items())

"""Benchmark: the NumPy CNN engine against onnxruntime on the shipped-style RGB 32x32 net.

The network: conv3x3 3->32, relu, conv3x3 32->32, relu, maxpool 2, conv3x3 32->64, relu,
conv3x3 64->64, relu, maxpool 2, flatten, dense 4096->256, relu, dense 256->10
(padding 1 everywhere), 13.1 GFLOP per batch of 256.

Measured in one process, as ratios (the machine is shared and timings are noisy):
- inference images/s at batch 256: the compiled evaluator (pipeline.cnn.fast), the
  layers' own forward (pipeline.cnn.functional, ``Model.fast_eval = False``) and onnxruntime
  (intra_op_num_threads=2), with the outputs checked to agree (< 1e-4 relative);
- a training step (forward + backward through pipeline.cnn.functional + SGD update) in
  images/s, and PyTorch's CPU training step if torch is importable.

It prints the BLAS kernel (threadpoolctl's internal_api, architecture, num_threads) and
the OPENBLAS_* variables. ``--all-envs`` runs itself three times as subprocesses: with the
environment as it is, with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset (what users'
machines have), and with them set as on this machine's kind (Haswell, 512), and prints
the ratios side by side.

Usage::

    /work/venv/bin/python bench/cnn.py                 # this environment
    /work/venv/bin/python bench/cnn.py --all-envs      # the three environments
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE /work/venv/bin/python bench/cnn.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.cnn import functional as F
from pipeline.cnn.fast import compile_model
from pipeline.cnn.graph import parse_graph
from pipeline.cnn.model import Model

CHANNELS = (3, 32, 32, 64, 64)
HIDDEN, CLASSES, SIZE_PX = 256, 10, 32


def make_weights(seed: int = 0) -> dict[str, np.ndarray]:
    """He-initialised float32 weights for the benchmark net."""
    rng = np.random.default_rng(seed)
    wts: dict[str, np.ndarray] = {}
    for k in range(4):
        c_in, c_out = CHANNELS[k], CHANNELS[k + 1]
        std = np.sqrt(2.0 / (c_in * 9))
        wts[f"conv{k}.w"] = (rng.standard_normal((c_out, c_in, 3, 3)) * std).astype(np.float32)
        wts[f"conv{k}.b"] = (rng.standard_normal(c_out) * 0.1).astype(np.float32)
    flat = CHANNELS[-1] * (SIZE_PX // 4) ** 2
    wts["fc0.w"] = (rng.standard_normal((HIDDEN, flat)) * np.sqrt(2.0 / flat)).astype(np.float32)
    wts["fc0.b"] = (rng.standard_normal(HIDDEN) * 0.1).astype(np.float32)
    wts["fc1.w"] = (rng.standard_normal((CLASSES, HIDDEN)) * np.sqrt(1.0 / HIDDEN)).astype(
        np.float32
    )
    wts["fc1.b"] = np.zeros(CLASSES, np.float32)
    return wts


def make_model(wts: dict[str, np.ndarray]) -> Model:
    """The benchmark net as a layer graph (a float32 :class:`pipeline.cnn.model.Model`)."""
    layers: list[dict] = []
    for k in range(4):
        layers.append(
            {
                "type": "conv2d",
                "filters": CHANNELS[k + 1],
                "kernel": 3,
                "padding": 1,
                "name": f"conv{k}",
            }
        )
        layers.append({"type": "relu"})
        if k in (1, 3):
            layers.append({"type": "maxpool2d", "size": 2})
    layers += [
        {"type": "flatten"},
        {"type": "dense", "units": HIDDEN, "name": "fc0"},
        {"type": "relu"},
        {"type": "dense", "units": CLASSES, "name": "fc1"},
    ]
    spec = parse_graph(
        {
            "input": [3, SIZE_PX, SIZE_PX],
            "classes": [str(c) for c in range(CLASSES)],
            "layers": layers,
        }
    )
    model = Model(spec)
    model.set_state_arrays(
        {k.replace(".w", ".weight").replace(".b", ".bias"): v for k, v in wts.items()}
    )
    return model


def layers_forward(model: Model, x: np.ndarray) -> np.ndarray:
    """The model through each layer's own forward (pipeline.cnn.functional), not compiled."""
    model.fast_eval = False
    try:
        return model.forward(x)
    finally:
        model.fast_eval = True


def make_onnx(wts: dict[str, np.ndarray]) -> bytes:
    """The benchmark net as an ONNX model (opset 17, IR version 8), serialised."""
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []
    cur = "x"
    for k in range(4):
        for p in ("w", "b"):
            inits.append(numpy_helper.from_array(wts[f"conv{k}.{p}"], f"conv{k}.{p}"))
        nodes.append(
            helper.make_node(
                "Conv",
                [cur, f"conv{k}.w", f"conv{k}.b"],
                [f"c{k}"],
                kernel_shape=[3, 3],
                pads=[1, 1, 1, 1],
            )
        )
        nodes.append(helper.make_node("Relu", [f"c{k}"], [f"r{k}"]))
        cur = f"r{k}"
        if k in (1, 3):
            nodes.append(
                helper.make_node("MaxPool", [cur], [f"p{k}"], kernel_shape=[2, 2], strides=[2, 2])
            )
            cur = f"p{k}"
    nodes.append(helper.make_node("Flatten", [cur], ["flat"], axis=1))
    for k, (src, dst) in enumerate((("flat", "h0"), ("a0", "logits"))):
        for p in ("w", "b"):
            inits.append(numpy_helper.from_array(wts[f"fc{k}.{p}"], f"fc{k}.{p}"))
        nodes.append(helper.make_node("Gemm", [src, f"fc{k}.w", f"fc{k}.b"], [dst], transB=1))
        if k == 0:
            nodes.append(helper.make_node("Relu", ["h0"], ["a0"]))
    graph = helper.make_graph(
        nodes,
        "bench_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, SIZE_PX, SIZE_PX])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def blas_info() -> list[dict]:
    from threadpoolctl import threadpool_info

    keys = ("internal_api", "architecture", "num_threads", "version")
    return [{k: i.get(k) for k in keys} for i in threadpool_info() if i["user_api"] == "blas"]


def time_best(fn, reps: int) -> float:
    """Best wall time of ``reps`` calls (s): the least disturbed by other workers."""
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def train_step_factory(wts: dict[str, np.ndarray], lr: float = 0.01):
    """A forward + backward + SGD step of the bench net through pipeline.cnn.functional."""
    p = {k: v.copy() for k, v in wts.items()}

    def step(x: np.ndarray, labels: np.ndarray) -> float:
        acts, h = [], x
        for k in range(4):
            y = F.conv2d(h, p[f"conv{k}.w"], p[f"conv{k}.b"], padding=1)
            r = F.relu(y)
            acts.append((h, y))
            h = F.max_pool2d(r, 2) if k in (1, 3) else r
            if k in (1, 3):
                acts[-1] = (*acts[-1], r)
        flat = F.flatten(h)
        z0 = F.dense(flat, p["fc0.w"], p["fc0.b"])
        a0 = F.relu(z0)
        logits = F.dense(a0, p["fc1.w"], p["fc1.b"])
        loss, d = F.cross_entropy(logits, labels)
        grads = {}
        d, grads["fc1.w"], grads["fc1.b"] = F.dense_backward(d, a0, p["fc1.w"])
        d = F.relu_backward(d, z0)
        d, grads["fc0.w"], grads["fc0.b"] = F.dense_backward(d, flat, p["fc0.w"])
        d = F.flatten_backward(d, h.shape)
        for k in (3, 2, 1, 0):
            if k in (1, 3):
                h_in, y, r = acts[k]
                d = F.max_pool2d_backward(d, r, 2)
            else:
                h_in, y = acts[k]
            d = F.relu_backward(d, y)
            d, grads[f"conv{k}.w"], grads[f"conv{k}.b"] = F.conv2d_backward(
                d, h_in, p[f"conv{k}.w"], padding=1
            )
        for k, g in grads.items():
            p[k] -= np.float32(lr) * g
        return loss

    return step


def torch_train_images_per_s(wts, x, labels, reps):
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(2)
    nn = torch.nn
    net = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(64, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(4096, 256),
        nn.ReLU(),
        nn.Linear(256, 10),
    )
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    xt, yt = torch.from_numpy(x), torch.from_numpy(labels.astype(np.int64))

    def step():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(net(xt), yt)
        loss.backward()
        opt.step()

    step()
    return len(x) / time_best(step, reps)


def run(batch: int, reps: int, train_batch: int, seed: int) -> dict:
    import onnxruntime as ort

    wts = make_weights(seed)
    rng = np.random.default_rng(seed + 1)
    x = rng.random((batch, 3, SIZE_PX, SIZE_PX), dtype=np.float32)

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(make_onnx(wts), opts, providers=["CPUExecutionProvider"])
    model = make_model(wts)
    fast = compile_model(model)

    y_ort = sess.run(None, {"x": x})[0]
    y_fast = fast(x)
    y_ref = layers_forward(model, x)
    scale = float(np.abs(y_ort).max())
    err_fast = float(np.abs(y_fast - y_ort).max() / scale)
    err_ref = float(np.abs(y_ref - y_ort).max() / scale)

    # interleave the engines so that they see the same background load
    t_ort, t_fast = [], []
    for _ in range(reps):
        t_ort.append(time_best(lambda: sess.run(None, {"x": x}), 1))
        t_fast.append(time_best(lambda: fast(x), 1))
    t_ref = time_best(lambda: layers_forward(model, x), max(1, reps // 5))
    ratios = sorted(o / f for o, f in zip(t_ort, t_fast, strict=True))

    xt = x[:train_batch]
    labels = rng.integers(0, CLASSES, train_batch)
    step = train_step_factory(wts)
    step(xt, labels)
    t_train = time_best(lambda: step(xt, labels), max(1, reps // 5))
    torch_ips = torch_train_images_per_s(wts, xt, labels, max(1, reps // 5))

    return {
        "env": {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")},
        "blas": blas_info(),
        "batch": batch,
        "onnxruntime_img_s": batch / min(t_ort),
        "fast_img_s": batch / min(t_fast),
        "functional_img_s": batch / t_ref,
        "ratio_fast_to_ort_best": min(t_ort) / min(t_fast),
        "ratio_fast_to_ort_median": ratios[len(ratios) // 2],
        "ratio_functional_to_ort": min(t_ort) / t_ref,
        "max_rel_err_fast_vs_ort": err_fast,
        "max_rel_err_functional_vs_ort": err_ref,
        "train_batch": train_batch,
        "train_step_img_s": train_batch / t_train,
        "torch_train_step_img_s": torch_ips,
    }


def report(r: dict) -> None:
    print(f"env: {r['env']}")
    for b in r["blas"]:
        print(
            f"BLAS: {b['internal_api']} {b['version']}, kernel {b['architecture']}, "
            f"{b['num_threads']} threads"
        )
    print(f"inference, batch {r['batch']}:")
    print(f"  onnxruntime (2 threads) {r['onnxruntime_img_s']:9.0f} images/s")
    print(
        f"  numpy fast path         {r['fast_img_s']:9.0f} images/s  "
        f"ratio {r['ratio_fast_to_ort_best']:.2f}x (best), "
        f"{r['ratio_fast_to_ort_median']:.2f}x (median of pairs)"
    )
    print(
        f"  numpy functional path   {r['functional_img_s']:9.0f} images/s  "
        f"ratio {r['ratio_functional_to_ort']:.2f}x"
    )
    print(
        f"  max |diff| / max |ort|: fast {r['max_rel_err_fast_vs_ort']:.1e}, "
        f"functional {r['max_rel_err_functional_vs_ort']:.1e}"
    )
    print(
        f"training step, batch {r['train_batch']}: functional {r['train_step_img_s']:.0f} "
        "images/s; torch "
        + (
            "not installed"
            if r["torch_train_step_img_s"] is None
            else f"{r['torch_train_step_img_s']:.0f} images/s"
        )
    )
    ok = r["max_rel_err_fast_vs_ort"] < 1e-4 and r["max_rel_err_functional_vs_ort"] < 1e-4
    print("outputs agree (< 1e-4)" if ok else "OUTPUTS DISAGREE")


ENVS = {
    "as-is": ([], {}),
    "unset": (["-u", "OPENBLAS_CORETYPE", "-u", "OPENBLAS_L2_SIZE"], {}),
    "haswell": ([], {"OPENBLAS_CORETYPE": "Haswell", "OPENBLAS_L2_SIZE": "512"}),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--reps", type=int, default=15, help="timed runs per engine")
    ap.add_argument("--train-batch", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    ap.add_argument(
        "--all-envs",
        action="store_true",
        help="run as subprocesses with OPENBLAS_* as is, unset, and Haswell",
    )
    args = ap.parse_args(argv)
    if not args.all_envs:
        r = run(args.batch, args.reps, args.train_batch, args.seed)
        print(json.dumps(r)) if args.json else report(r)
        return 0 if r["max_rel_err_fast_vs_ort"] < 1e-4 else 1
    rows = []
    for name, (unset, extra) in ENVS.items():
        cmd = [
            "env",
            *unset,
            *[f"{k}={v}" for k, v in extra.items()],
            sys.executable,
            __file__,
            "--json",
            "--batch",
            str(args.batch),
            "--reps",
            str(args.reps),
            "--train-batch",
            str(args.train_batch),
            "--seed",
            str(args.seed),
        ]
        print(f"== {name}: {' '.join(cmd[:-10])} ... bench/cnn.py", flush=True)
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        report(r)
        rows.append((name, r))
    print("\nsummary (fast / onnxruntime, best and median of interleaved pairs):")
    for name, r in rows:
        arch = ",".join(sorted({b["architecture"] for b in r["blas"]}))
        print(
            f"  {name:8s} kernel {arch:10s} {r['ratio_fast_to_ort_best']:.2f}x best, "
            f"{r['ratio_fast_to_ort_median']:.2f}x median; ort {r['onnxruntime_img_s']:.0f} "
            f"img/s, fast {r['fast_img_s']:.0f} img/s"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Benchmark: the NumPy CNN engine against onnxruntime on the shipped-style RGB 32x32 net.

The network: conv3x3 3->32, relu, conv3x3 32->32, relu, maxpool 2, conv3x3 32->64, relu,
conv3x3 64->64, relu, maxpool 2, flatten, dense 4096->256, relu, dense 256->10
(padding 1 everywhere), 13.1 GFLOP per batch of 256.

Measured in one process, with one statistic for both sides: the median over interleaved
pairs (ours, theirs, ours, theirs, ...), so both see the same background load.

- inference at batch 256: the compiled evaluator (pipeline.cnn.fast) against onnxruntime
  (2 intra-op threads), outputs checked to agree (< 1e-4 of the largest logit); then the
  time of each fused step of ours (``CompiledNet.profile``) and of each onnxruntime node
  (its profiler), median over a few runs;
- a training step (forward + backward through pipeline.cnn.functional + SGD update)
  against PyTorch's eager CPU step on the same net and batch.

It prints the load, the BLAS library, kernel (threadpoolctl's ``architecture``) and
threads. The BLAS environment (``--blas-env``):

- ``free`` (default): OpenBLAS picks its kernel, as on users' machines; if
  OPENBLAS_CORETYPE or OPENBLAS_L2_SIZE is set, the bench re-executes itself with both
  removed from its own environment (nothing else is changed);
- ``haswell``: re-executes with OPENBLAS_CORETYPE=Haswell OPENBLAS_L2_SIZE=512 (the
  setting of some machines here);
- ``machine``: the environment as it is.

``--all-envs`` runs ``free`` and ``haswell`` as subprocesses and prints both.

Usage::

    python bench/cnn.py                    # OpenBLAS free to pick its kernel
    python bench/cnn.py --blas-env haswell
    python bench/cnn.py --all-envs         # both (3 minutes at load 13 on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
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


BLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
BLAS_ENVS = {"free": {}, "haswell": {"OPENBLAS_CORETYPE": "Haswell", "OPENBLAS_L2_SIZE": "512"}}


def blas_env(mode: str) -> dict[str, str] | None:
    """The environment to re-execute in for ``mode``, or None if this one is right."""
    if mode == "machine":
        return None
    want = BLAS_ENVS[mode]
    if all(os.environ.get(k) == want.get(k) for k in BLAS_VARS):
        return None
    env = {k: v for k, v in os.environ.items() if k not in BLAS_VARS}
    return env | want


def blas_info() -> list[dict]:
    """Library, version, kernel and threads of each BLAS loaded (threadpoolctl)."""
    from threadpoolctl import threadpool_info

    keys = ("internal_api", "architecture", "num_threads", "version", "filepath")
    return [{k: i.get(k) for k in keys} for i in threadpool_info() if i["user_api"] == "blas"]


def interleaved(ours, theirs, pairs: int) -> tuple[float, float, float]:
    """Median seconds of ``ours`` and of ``theirs`` over ``pairs`` interleaved calls, and
    the median over the pairs of (their time / our time)."""
    t_ours, t_theirs = [], []
    for _ in range(pairs):
        for fn, ts in ((ours, t_ours), (theirs, t_theirs)):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
    a, b = np.array(t_ours), np.array(t_theirs)
    return float(np.median(a)), float(np.median(b)), float(np.median(b / a))


def ort_session(onnx_bytes: bytes, profile_dir: str | None = None):
    """An onnxruntime CPU session with 2 intra-op threads (profiling into a directory)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.inter_op_num_threads = 1
    if profile_dir is not None:
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(profile_dir) / "ort")
    return ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])


def per_layer(fast, onnx_bytes: bytes, x: np.ndarray, runs: int) -> dict:
    """Median wall time (s) of each step of ours and of each onnxruntime node, over
    ``runs`` interleaved profiled runs (not the timed ones: profiling costs a little)."""
    ours: list[list[float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        sess = ort_session(onnx_bytes, tmp)
        for _ in range(runs):
            _, steps = fast.profile(x)
            ours.append([t for _, t in steps])
            sess.run(None, {"x": x})
        events = json.loads(Path(sess.end_profiling()).read_text())
    nodes: dict[str, list[float]] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            key = f"{e['name'][: -len('_kernel_time')]} ({e['args'].get('op_name', '?')})"
            nodes.setdefault(key, []).append(e["dur"] * 1e-6)
    labels = [lab for lab, _ in steps]
    return {
        "ours": dict(zip(labels, np.median(ours, axis=0).tolist(), strict=True)),
        "onnxruntime": {k: float(np.median(v)) for k, v in nodes.items()},
    }


def torch_step_factory(x: np.ndarray, labels: np.ndarray):
    """PyTorch's eager CPU training step on the bench net (2 threads), or None without
    torch."""
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

    def step() -> None:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(net(xt), yt)
        loss.backward()
        opt.step()

    return step


def run(args: argparse.Namespace) -> dict:
    wts = make_weights(args.seed)
    rng = np.random.default_rng(args.seed + 1)
    x = rng.random((args.batch, 3, SIZE_PX, SIZE_PX), dtype=np.float32)
    onnx_bytes = make_onnx(wts)
    sess = ort_session(onnx_bytes)
    model = make_model(wts)
    fast = compile_model(model)

    y_ort = sess.run(None, {"x": x})[0]
    scale = float(np.abs(y_ort).max())
    err_fast = float(np.abs(fast(x) - y_ort).max() / scale)
    err_layers = float(np.abs(layers_forward(model, x[:16]) - y_ort[:16]).max() / scale)
    load = [os.getloadavg()[0]]
    t_fast, t_ort, ratio = interleaved(
        lambda: fast(x), lambda: sess.run(None, {"x": x}), args.pairs
    )
    layers = per_layer(fast, onnx_bytes, x, args.profile_runs)
    r = {
        "env": {k: os.environ.get(k) for k in BLAS_VARS},
        "blas": blas_info(),
        "batch": args.batch,
        "pairs": args.pairs,
        "block_images": fast.block_images,
        "fast_img_s": args.batch / t_fast,
        "onnxruntime_img_s": args.batch / t_ort,
        "ratio_fast_to_ort": ratio,
        "per_layer_s": layers,
        "max_rel_err_fast_vs_ort": err_fast,
        "max_rel_err_layers_vs_ort": err_layers,
    }
    if args.train_pairs > 0:
        xt = x[: args.train_batch]
        labels = rng.integers(0, CLASSES, args.train_batch)
        step = train_step_factory(wts)
        torch_step = torch_step_factory(xt, labels)
        step(xt, labels)
        r["train_batch"] = args.train_batch
        if torch_step is None:
            t_np, _, _ = interleaved(lambda: step(xt, labels), lambda: None, args.train_pairs)
            r["train_img_s"], r["torch_train_img_s"], r["ratio_train_to_torch"] = (
                args.train_batch / t_np,
                None,
                None,
            )
        else:
            torch_step()
            t_np, t_torch, tr = interleaved(lambda: step(xt, labels), torch_step, args.train_pairs)
            r["train_img_s"] = args.train_batch / t_np
            r["torch_train_img_s"] = args.train_batch / t_torch
            r["ratio_train_to_torch"] = tr
    load.append(os.getloadavg()[0])
    r["load_1min"] = load
    return r


def report(r: dict) -> None:
    print(
        f"env: {r['env']}; load (1-min average) {r['load_1min'][0]:.2f} -> {r['load_1min'][1]:.2f}"
    )
    for b in r["blas"]:
        print(
            f"BLAS: {b['internal_api']} {b['version']}, kernel {b['architecture']}, "
            f"{b['num_threads']} threads ({Path(b['filepath']).name})"
        )
    print(
        f"inference, batch {r['batch']}, median of {r['pairs']} interleaved pairs "
        f"(blocks of {r['block_images']} images):"
    )
    print(f"  onnxruntime (2 threads) {r['onnxruntime_img_s']:8.0f} images/s")
    print(f"  numpy compiled path     {r['fast_img_s']:8.0f} images/s")
    print(f"  ratio numpy / onnxruntime: {r['ratio_fast_to_ort']:.2f}x")
    ours, theirs = r["per_layer_s"]["ours"], r["per_layer_s"]["onnxruntime"]
    print("  per step, ms (median of profiled runs; ours: per thread, averaged over threads)")
    total = sum(ours.values())
    for lab, t in ours.items():
        print(f"    ours {lab:30s} {t * 1e3:8.2f}  {100 * t / total:5.1f} %")
    total = sum(theirs.values())
    for lab, t in theirs.items():
        print(f"    ort  {lab:30s} {t * 1e3:8.2f}  {100 * t / total:5.1f} %")
    print(
        f"  max |diff| / max |ort|: compiled {r['max_rel_err_fast_vs_ort']:.1e}, "
        f"layers' forward {r['max_rel_err_layers_vs_ort']:.1e}"
    )
    if "train_img_s" in r:
        line = f"training step, batch {r['train_batch']}: numpy {r['train_img_s']:.0f} images/s"
        if r["torch_train_img_s"] is None:
            print(line + "; torch not installed")
        else:
            print(
                line + f", torch eager {r['torch_train_img_s']:.0f} images/s, "
                f"ratio {r['ratio_train_to_torch']:.2f}x (median of pairs)"
            )
    ok = r["max_rel_err_fast_vs_ort"] < 1e-4 and r["max_rel_err_layers_vs_ort"] < 1e-4
    print("outputs agree (< 1e-4)" if ok else "OUTPUTS DISAGREE")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--pairs", type=int, default=15, help="interleaved inference pairs")
    ap.add_argument("--profile-runs", type=int, default=5, help="profiled runs per engine")
    ap.add_argument("--train-batch", type=int, default=64)
    ap.add_argument(
        "--train-pairs", type=int, default=3, help="interleaved training pairs (0: none)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--blas-env", choices=("free", "haswell", "machine"), default="free")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    ap.add_argument("--all-envs", action="store_true", help="run free and haswell, both")
    args = ap.parse_args(argv)
    if args.all_envs:
        return all_envs(argv)
    env = blas_env(args.blas_env)
    if env is not None:  # the BLAS kernel is chosen when the library loads: start afresh
        os.execve(sys.executable, [sys.executable, __file__, *argv], env)
    r = run(args)
    print(json.dumps(r)) if args.json else report(r)
    return 0 if r["max_rel_err_fast_vs_ort"] < 1e-4 else 1


def all_envs(argv: list[str]) -> int:
    """This bench under each BLAS environment, as subprocesses; both reports and a summary."""
    rest = [a for a in argv if a not in ("--all-envs", "--json")]
    rows = []
    for mode in BLAS_ENVS:
        cmd = [sys.executable, __file__, *rest, "--json", "--blas-env", mode]
        print(f"== --blas-env {mode}", flush=True)
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        report(r)
        rows.append((mode, r))
    print("\nsummary (numpy compiled / onnxruntime, median of interleaved pairs):")
    for mode, r in rows:
        arch = ",".join(sorted({b["architecture"] for b in r["blas"]}))
        print(
            f"  {mode:8s} kernel {arch:10s} {r['ratio_fast_to_ort']:.2f}x; "
            f"ort {r['onnxruntime_img_s']:.0f} img/s, numpy {r['fast_img_s']:.0f} img/s; "
            f"load {r['load_1min'][0]:.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

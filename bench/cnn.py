"""Benchmark: the NumPy CNN engine's inference against onnxruntime on the shipped-style
RGB 32x32 net.

The network: conv3x3 3->32, relu, conv3x3 32->32, relu, maxpool 2, conv3x3 32->64, relu,
conv3x3 64->64, relu, maxpool 2, flatten, dense 4096->256, relu, dense 256->10
(padding 1 everywhere), 13.1 GFLOP per batch of 256.

Inference at batch 256: the compiled evaluator (pipeline.cnn.fast) against onnxruntime
(2 intra-op threads), outputs checked to agree (< 1e-4 of the largest logit), timed as
interleaved pairs by bench/common.py (the median of the pairs' ratios, each side's
median); then the time of each fused step of ours (``CompiledNet.profile``) and of each
onnxruntime node (its profiler), median over a few runs; and the ceiling the BLAS sets
(``bench.common.gemm_floor`` of :func:`net_gemms`: the batch's GEMMs as sgemm calls in the
engine's row groups on one core, against onnxruntime's CPU time). The training step against
PyTorch is bench/train.py's.

The header, the load and ``--blas-env free|haswell|machine`` are bench/common.py's;
``--all-envs`` runs ``free`` and ``haswell`` as subprocesses and prints both.

Usage (from the repository root)::

    python -m bench.cnn                    # OpenBLAS free to pick its kernel
    python -m bench.cnn --blas-env haswell
    python -m bench.cnn --all-envs         # both
    python -m bench.cnn --pairs 3 --profile-runs 1 --batch 64   # a smoke run
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    Gemm,
    Pairs,
    add_blas_env,
    apply_blas_env,
    blas_kernels,
    ceiling_line,
    each_blas_env,
    environment,
    gemm_floor,
    header_lines,
    interleaved,
    load_average,
    load_line,
)
from pipeline.cnn.fast import compile_model
from pipeline.cnn.flat_conv import FlatLayout, small_gemm_rows
from pipeline.cnn.functional import _row_chunks
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


def net_gemms(
    batch: int, *, train: bool, chunk_rows: int = 2048, small_groups: bool = False
) -> list[Gemm]:
    """The benchmark net's GEMMs in the shapes of the flat-layout engine.

    A 3×3 convolution C → F over P output rows of the flat padded layout (each image's
    pixels and its padding rows, which the engine computes and drops:
    ``FlatLayout.img_rows``) is, per chunk, three GEMMs (one per kernel row, K = 3C; the
    3-channel input layer: one im2col GEMM, K = 27). Inference cuts P into near-equal
    chunks of at most ``chunk_rows`` rows; training into the chunks its kernels use
    (``functional._row_chunks``) and adds the input gradient (chunk × 3F @ 3F × C, not
    for the input layer) and the weight gradient (K × chunk @ chunk × F). Dense layers:
    one GEMM each (training: three). ``small_groups``: each GEMM in the row groups the
    engine uses where the BLAS has small-matrix kernels (``flat_conv.small_gemm_rows``;
    a weight gradient's chunk rows are its inner dimension, the groups' products then
    summed), the same flops.
    """

    def grouped(count: int, m: int, k: int, n: int, rows: int, inner: bool = False) -> list:
        """``count`` (m, k) @ (k, n) products, each split into GEMMs of ``rows`` rows of m
        (of k when ``inner``)."""
        split = k if inner else m
        if not (small_groups and 0 < rows < split):
            return [Gemm(count, m, k, n)]
        shape = (m, rows, n) if inner else (rows, k, n)
        out = [Gemm(count * (split // rows), *shape)]
        if split % rows:
            out.append(Gemm(count, *((m, split % rows, n) if inner else (split % rows, k, n))))
        return out

    gemms: list[Gemm] = []
    for k in range(4):
        c, f = CHANNELS[k], CHANNELS[k + 1]
        size = SIZE_PX if k < 2 else SIZE_PX // 2
        rows = batch * FlatLayout(size, size, c, 1, 1).img_rows
        if train:
            sizes = [m for _, m in _row_chunks(rows, 3 * max(c, f))]
        else:
            chunks = -(-rows // chunk_rows)  # near-equal chunks of at most chunk_rows rows
            sizes = [-(-rows // chunks)] * chunks
        taps, depth = (1, 9 * c) if k == 0 else (3, 3 * c)
        for m in sorted(set(sizes)):
            count = sizes.count(m) * taps
            gemms += grouped(count, m, depth, f, small_gemm_rows(depth, f))
            if train:
                gemms += grouped(count, depth, m, f, small_gemm_rows(depth, f), inner=True)
                if k > 0:
                    gemms += grouped(count, m, 3 * f, c, small_gemm_rows(3 * f, c))
    flat = CHANNELS[-1] * (SIZE_PX // 4) ** 2
    for d_in, d_out in ((flat, HIDDEN), (HIDDEN, CLASSES)):
        gemms.append(Gemm(1, batch, d_in, d_out))
        if train:
            gemms += [Gemm(1, batch, d_out, d_in), Gemm(1, d_in, batch, d_out)]
    return gemms


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
    env = environment()
    pairs = interleaved(lambda: fast(x), lambda: sess.run(None, {"x": x}), args.pairs)
    layers = per_layer(fast, onnx_bytes, x, args.profile_runs)
    gemms = net_gemms(args.batch, train=False, chunk_rows=fast.chunk_rows, small_groups=True)
    gemm_cpu_s, gflop = gemm_floor(gemms)
    return {
        "gemm_floor_cpu_s": gemm_cpu_s,
        "gemm_gflop": gflop,
        "environment": env,
        "batch": args.batch,
        "block_images": fast.block_images,
        "pairs_s": [a.tolist() for a in dataclasses.astuple(pairs)],
        "fast_img_s": args.batch / pairs.ours_median_s,
        "onnxruntime_img_s": args.batch / pairs.theirs_median_s,
        "ratio_fast_to_ort": pairs.ratio,
        "per_layer_s": layers,
        "max_rel_err_fast_vs_ort": err_fast,
        "max_rel_err_layers_vs_ort": err_layers,
        "load_end": load_average(),
    }


def report(r: dict) -> None:
    for line in header_lines(r["environment"]):
        print(line)
    print("onnxruntime: 2 intra-op threads")
    print(f"inference, batch {r['batch']} (blocks of {r['block_images']} images):")
    pairs = Pairs(*(np.array(a) for a in r["pairs_s"]))
    for line in pairs.lines("numpy compiled", "onnxruntime"):
        print(line)
    print(f"  onnxruntime {r['onnxruntime_img_s']:8.0f} images/s (median)")
    print(f"  numpy       {r['fast_img_s']:8.0f} images/s (median)")
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
    ort_cpu_s = float(np.median(pairs.theirs_cpu_s))
    print(ceiling_line(r["gemm_floor_cpu_s"], r["gemm_gflop"], "onnxruntime", ort_cpu_s, "batch"))
    ok = r["max_rel_err_fast_vs_ort"] < 1e-4 and r["max_rel_err_layers_vs_ort"] < 1e-4
    print("outputs agree (< 1e-4)" if ok else "OUTPUTS DISAGREE")
    print(load_line(r["load_end"]))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--pairs", type=int, default=15, help="interleaved inference pairs")
    ap.add_argument("--profile-runs", type=int, default=5, help="profiled runs per engine")
    ap.add_argument("--seed", type=int, default=0)
    add_blas_env(ap)
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    ap.add_argument("--all-envs", action="store_true", help="run free and haswell, both")
    args = ap.parse_args(argv)
    if args.all_envs:
        return all_envs(argv)
    apply_blas_env(args.blas_env)
    r = run(args)
    print(json.dumps(r)) if args.json else report(r)
    return 0 if r["max_rel_err_fast_vs_ort"] < 1e-4 else 1


def all_envs(argv: list[str]) -> int:
    """This bench under each BLAS environment, as subprocesses; both reports and a summary."""
    rows = each_blas_env("bench.cnn", argv)
    for _, r in rows:
        report(r)
    print("\nsummary (numpy compiled / onnxruntime, median of interleaved pairs):")
    for mode, r in rows:
        arch = blas_kernels(r["environment"])
        print(
            f"  {mode:8s} kernel {arch:10s} {r['ratio_fast_to_ort']:.2f}x; "
            f"ort {r['onnxruntime_img_s']:.0f} img/s, numpy {r['fast_img_s']:.0f} img/s; "
            f"load {r['environment']['load'][0]:.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

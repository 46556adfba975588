"""Benchmark: a training step of the NumPy CNN against PyTorch eager CPU on the same net.

The net is bench/cnn.py's RGB 32x32 net (conv3x3 3->32, 32->32, pool, 32->64, 64->64,
pool, dense 4096->256, dense 256->10, ReLU after every layer but the last), float32, the
same initial weights, batch and labels on both sides. A step is forward + softmax
cross-entropy + backward + an AdamW update (lr 1e-3, weight decay 5e-4 on the weights,
not the biases, on both sides): ``Model.forward(train=True)``, ``Model.backward`` and
:class:`pipeline.cnn.optim.AdamW` here, ``torch.nn`` + ``torch.optim.AdamW`` there.

Both sides use the same number of threads (``torch.set_num_threads`` = our worker
threads, ``SENSORLAB_THREADS`` or the usable cores; ``--threads N`` pins the process to N
cores first). Steps are timed as interleaved pairs by bench/common.py (the median over the
pairs of torch step time / our step time, each side's images/s from its median step
time, CPU ms a step), each timed step after an untimed step of its own side, as in a
training loop: right after PyTorch's step its OpenMP threads still spin, and the next
step of ours measured 3-7 % slower than after one of ours. Before timing, the first
step's loss and gradients are checked to agree between the two (same net, same maths).

It prints the ceiling the BLAS sets (``bench.common.gemm_floor``: the step's GEMMs in
the engine's shapes and row groups, ``bench.cnn.net_gemms``, as sgemm calls on one core, against
torch's CPU time for its whole step), and per-layer forward and backward times of our
step (median over ``--profile-reps`` steps, each step of the model as
``Model.forward(train=True)`` and ``Model.backward`` run it: a layer, or a fused conv ->
ReLU [-> max-pool] chain, pipeline/cnn/fused_train.py), and on more than one thread
where the threads wait (``bench.common.thread_waits``: the caller alone between
parallel regions, and in them before, between and after the tasks). The header, the load and
``--blas-env free|haswell|machine`` are bench/common.py's; ``--all-envs`` runs ``free``
and ``haswell`` as subprocesses. PyTorch is not a dependency of the project: without it
the torch side is skipped and said so.

Usage (from the repository root)::

    python -m bench.train                   # batch 64, OpenBLAS free to pick its kernel
    python -m bench.train --batch 256 --reps 15
    python -m bench.train --all-envs        # free and haswell, with a summary
    python -m bench.train --reps 1 --profile-reps 1 --batch 16   # a smoke run
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.cnn import CHANNELS, CLASSES, SIZE_PX, make_model, make_weights, net_gemms
from bench.common import (
    WARM_NOTE,
    Pairs,
    ThreadWaits,
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
    thread_waits,
)
from pipeline.cnn import functional as F
from pipeline.cnn.flat_conv import blas_small_gemm
from pipeline.cnn.graph import INPUT
from pipeline.cnn.model import Model
from pipeline.cnn.optim import AdamW
from pipeline.threads import worker_threads

LR, WEIGHT_DECAY = 1e-3, 5e-4


# ------------------------------------------------------------------------------ ours


def numpy_step(model: Model, opt: AdamW, x: np.ndarray, labels: np.ndarray) -> float:
    """One training step of the model; returns the loss."""
    logits = model.forward(x, train=True)
    loss, dlogits = F.cross_entropy(logits, labels)
    opt.step(model.backward(dlogits))
    return loss


def layer_times(model: Model, x: np.ndarray, labels: np.ndarray, reps: int) -> list[list]:
    """[step, forward s, backward s, forward CPU s, backward CPU s] of each step of
    ``Model.forward(train=True)`` and ``Model.backward`` (a node, or a fused chain named
    by its nodes joined with "+"), medians over ``reps`` steps run step by step as the
    model does (no update). CPU time is summed over the process's threads: the work,
    which a busy machine disturbs less than the wall time."""
    nodes = model.spec.nodes[: model.spec.output_index + 1]
    chains = model.train_chains()
    inner = {nd.index for ch in chains.values() for nd in ch.nodes[1:]}
    units = [nd for nd in nodes if nd.index not in inner]
    times = {nd.index: [] for nd in units}  # per rep: (fwd, bwd, fwd cpu, bwd cpu)
    rng = np.random.default_rng(0)
    clocks = (time.perf_counter, time.process_time)
    for _ in range(reps):
        outs, tape, fwd = {INPUT: x}, {}, {}
        for nd in units:
            ch, p = chains.get(nd.index), model.layer_params(nd)
            xs = [outs[j] for j in nd.inputs]
            t0 = [c() for c in clocks]
            y, cache = ch.forward(xs[0], p) if ch else nd.layer.forward(xs, p, train=True, rng=rng)
            fwd[nd.index] = [c() - t for c, t in zip(clocks, t0, strict=True)]
            outs[ch.last if ch else nd.index], tape[nd.index] = y, cache
        _, d = F.cross_entropy(outs[nodes[-1].index], labels)
        dys = {nodes[-1].index: d}
        for nd in reversed(units):
            ch, p = chains.get(nd.index), model.layer_params(nd)
            need_dx = any(j != INPUT for j in nd.inputs)  # as Model.backward
            dy = dys.pop(ch.last if ch else nd.index)
            t0 = [c() for c in clocks]
            if ch:
                dxs = [ch.backward(dy, tape[nd.index], p, need_dx=need_dx)[0]]
            else:
                dxs = nd.layer.backward(dy, tape[nd.index], p, need_dx=need_dx)[0]
            (wall, cpu), (fwall, fcpu) = (
                [c() - t for c, t in zip(clocks, t0, strict=True)],
                fwd[nd.index],
            )
            times[nd.index].append((fwall, wall, fcpu, cpu))
            for j, dx in zip(nd.inputs, dxs, strict=True):
                if j != INPUT:
                    dys[j] = dx
    names = {nd.index: nd.name for nd in nodes}
    for k, ch in chains.items():
        names[k] = "+".join(n.name for n in ch.nodes)
    return [[names[nd.index], *np.median(times[nd.index], axis=0).tolist()] for nd in units]


# ----------------------------------------------------------------------------- torch


def torch_net(wts: dict[str, np.ndarray]):
    """The bench net in torch.nn with the same weights."""
    import torch

    nn = torch.nn
    net = nn.Sequential(
        nn.Conv2d(CHANNELS[0], CHANNELS[1], 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(CHANNELS[1], CHANNELS[2], 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(CHANNELS[2], CHANNELS[3], 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(CHANNELS[3], CHANNELS[4], 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(wts["fc0.w"].shape[1], wts["fc0.w"].shape[0]),
        nn.ReLU(),
        nn.Linear(wts["fc1.w"].shape[1], CLASSES),
    )
    layers = [m for m in net if isinstance(m, (nn.Conv2d, nn.Linear))]
    names = [f"conv{k}" for k in range(4)] + ["fc0", "fc1"]
    with torch.no_grad():
        for name, layer in zip(names, layers, strict=True):
            layer.weight.copy_(torch.from_numpy(wts[f"{name}.w"]))
            layer.bias.copy_(torch.from_numpy(wts[f"{name}.b"]))
    return net, names, layers


def torch_side(wts, x, labels, threads: int):
    """(step function, first-step loss, first-step gradients by our parameter names)."""
    import torch

    torch.set_num_threads(threads)
    net, names, layers = torch_net(wts)
    weights = [m.weight for m in layers]
    biases = [m.bias for m in layers]
    opt = torch.optim.AdamW(
        [{"params": weights, "weight_decay": WEIGHT_DECAY}, {"params": biases, "weight_decay": 0}],
        lr=LR,
    )
    xt, yt = torch.from_numpy(x), torch.from_numpy(labels.astype(np.int64))

    def loss_and_grads():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(xt), yt)
        loss.backward()
        return loss

    loss = float(loss_and_grads().detach())
    grads = {}
    for name, layer in zip(names, layers, strict=True):
        grads[f"{name}.weight"] = layer.weight.grad.numpy().copy()
        grads[f"{name}.bias"] = layer.bias.grad.numpy().copy()

    def step():
        loss_and_grads()
        opt.step()

    return step, loss, grads


def torch_version() -> str | None:
    try:
        import torch
    except ImportError:
        return None
    return f"{torch.__version__} (mkldnn {torch.backends.mkldnn.is_available()})"


# ------------------------------------------------------------------------------- run


def check_same_net(model, wts, x, labels, t_loss, t_grads) -> float:
    """Largest relative difference between our and torch's first-step loss and gradients."""
    probe = make_model(wts)
    logits = probe.forward(x, train=True)
    loss, d = F.cross_entropy(logits, labels)
    grads = probe.backward(d)
    worst = abs(loss - t_loss) / abs(t_loss)
    for k, g in grads.items():
        ref = t_grads[k]
        worst = max(worst, float(np.abs(g - ref).max() / max(np.abs(ref).max(), 1e-30)))
    return worst


def bench_data(batch: int, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """The bench's weights (bench.cnn's, for ``seed``), images and labels of a batch."""
    rng = np.random.default_rng(seed + 1)
    x = rng.random((batch, 3, SIZE_PX, SIZE_PX), dtype=np.float32)
    return make_weights(seed), x, rng.integers(0, CLASSES, batch)


def run(batch: int, reps: int, seed: int, profile_reps: int) -> dict:
    threads = worker_threads()
    wts, x, labels = bench_data(batch, seed)
    model = make_model(wts)
    opt = AdamW(model.params, lr=LR, weight_decay=WEIGHT_DECAY)
    ours = lambda: numpy_step(model, opt, x, labels)  # noqa: E731
    result: dict = {"threads": threads, "batch": batch, "torch": torch_version()}
    theirs = None
    if result["torch"] is not None:
        theirs, t_loss, t_grads = torch_side(wts, x, labels, threads)
        result["max_rel_diff_vs_torch"] = check_same_net(model, wts, x, labels, t_loss, t_grads)
        theirs()
    ours()
    result["environment"] = environment()
    pairs = interleaved(ours, theirs, reps, warm=True)
    result["pairs_s"] = [a.tolist() for a in dataclasses.astuple(pairs)]
    result["numpy_img_s"] = batch / pairs.ours_median_s
    result["torch_img_s"] = batch / pairs.theirs_median_s
    result["ratio_median_of_pairs"] = pairs.ratio
    result["layers"] = layer_times(model, x, labels, profile_reps)
    if threads > 1:
        result["thread_waits"] = dataclasses.asdict(thread_waits(ours, profile_reps))
    gemms = net_gemms(batch, train=True, small_groups=blas_small_gemm())
    result["gemm_floor_cpu_s"], result["gemm_gflop"] = gemm_floor(gemms)
    result["load_end"] = load_average()
    return result


def report(r: dict) -> None:
    for line in header_lines(r["environment"]):
        print(line)
    print(f"threads: ours {r['threads']} (one Python thread per core, BLAS at 1 each)", end="")
    print(f", torch {r['torch']}, set_num_threads({r['threads']})" if r["torch"] else "")
    print(f"training step, batch {r['batch']}, float32, AdamW:")
    pairs = Pairs(*(np.array(a) for a in r["pairs_s"]))
    for line in pairs.lines("numpy", "torch"):
        print(line)
    if r["torch"] is not None:
        print(WARM_NOTE)
    print(f"  numpy  {r['numpy_img_s']:8.0f} images/s (median)")
    if r["torch"] is None:
        print("  torch  skipped: torch is not installed (it is not a sensorlab dependency)")
    else:
        print(f"  torch  {r['torch_img_s']:8.0f} images/s (median)")
        print(f"  first step vs torch: max relative difference {r['max_rel_diff_vs_torch']:.1e}")
        theirs_cpu_s = float(np.median(pairs.theirs_cpu_s))
        print(ceiling_line(r["gemm_floor_cpu_s"], r["gemm_gflop"], "torch", theirs_cpu_s))
    print("per layer, ours (median ms): forward, backward wall; forward, backward CPU")
    rows = [*r["layers"], ["sum", *np.sum([row[1:] for row in r["layers"]], axis=0)]]
    for name, *ms in rows:
        print(f"  {name:28s} " + " ".join(f"{v * 1e3:7.2f}" for v in ms))
    if "thread_waits" in r:
        for line in ThreadWaits(**r["thread_waits"]).lines(r["threads"]):
            print(line)
    print(load_line(r["load_end"]))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--reps", type=int, default=15, help="interleaved pairs")
    ap.add_argument("--profile-reps", type=int, default=5, help="steps of the per-layer profile")
    ap.add_argument("--threads", type=int, default=None, help="pin to this many cores first")
    ap.add_argument("--seed", type=int, default=0)
    add_blas_env(ap)
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    ap.add_argument("--all-envs", action="store_true", help="run free and haswell, both")
    args = ap.parse_args(argv)
    if args.all_envs:
        rows = each_blas_env("bench.train", argv)
        for _, r in rows:
            report(r)
        print("\nsummary (numpy / torch training step, median of interleaved pairs):")
        for mode, r in rows:
            arch = blas_kernels(r["environment"])
            ratio = "torch skipped" if r["torch"] is None else f"{r['ratio_median_of_pairs']:.2f}x"
            print(f"  {mode:8s} kernel {arch:10s} {ratio}; numpy {r['numpy_img_s']:.0f} img/s")
        return 0
    apply_blas_env(args.blas_env)
    if args.threads is not None:
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.threads])
    r = run(args.batch, args.reps, args.seed, args.profile_reps)
    print(json.dumps(r)) if args.json else report(r)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

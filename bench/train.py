"""Benchmark: a training step of the NumPy CNN against PyTorch eager CPU on the same net.

The net is bench/cnn.py's RGB 32x32 net (conv3x3 3->32, 32->32, pool, 32->64, 64->64,
pool, dense 4096->256, dense 256->10, ReLU after every layer but the last), float32, the
same initial weights, batch and labels on both sides. A step is forward + softmax
cross-entropy + backward + an AdamW update (lr 1e-3, weight decay 5e-4 on the weights,
not the biases, on both sides): ``Model.forward(train=True)``, ``Model.backward`` and
:class:`pipeline.cnn.optim.AdamW` here, ``torch.nn`` + ``torch.optim.AdamW`` there.

Both sides use the same number of threads (``torch.set_num_threads`` = our worker
threads = the usable cores; ``--threads N`` pins the process to N cores first). Steps are
timed interleaved (ours, torch, ours, torch, ...) so both see the same background load;
the figure is the median over the pairs of (torch step time / our step time), with each
side's images/s from its median step time over the same pairs. Before timing, the first
step's loss and gradients are checked to agree between the two (same net, same maths).

It also prints per-layer forward and backward times of our step (median over the
timed repetitions, each layer's ``forward``/``backward`` through the model's nodes) and
the BLAS kernel and threads (threadpoolctl). PyTorch is not a dependency of the project:
without it the torch side is skipped and said so. ``--all-envs`` runs itself as
subprocesses with OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE as they are, unset (what users'
machines have) and set as on this machine's kind (Haswell, 512).

Usage::

    python bench/train.py                   # batch 64, this environment
    python bench/train.py --batch 256 --reps 15
    python bench/train.py --all-envs
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/train.py
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cnn import CHANNELS, CLASSES, ENVS, SIZE_PX, blas_info, make_model, make_weights

from pipeline.cnn import functional as F
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
    """[layer, forward s, backward s, forward CPU s, backward CPU s] of each node, medians
    over ``reps`` steps run node by node as ``Model.forward(train=True)`` and
    ``Model.backward`` do (no update). CPU time is summed over the process's threads: the
    work, which a busy machine disturbs less than the wall time."""
    nodes = model.spec.nodes[: model.spec.output_index + 1]
    times = {nd.index: [] for nd in nodes}  # per rep: (fwd, bwd, fwd cpu, bwd cpu)
    rng = np.random.default_rng(0)
    clocks = (time.perf_counter, time.process_time)
    for _ in range(reps):
        outs, tape, fwd = {INPUT: x}, {}, {}
        for nd in nodes:
            t0 = [c() for c in clocks]
            outs[nd.index], tape[nd.index] = nd.layer.forward(
                [outs[j] for j in nd.inputs], model.layer_params(nd), train=True, rng=rng
            )
            fwd[nd.index] = [c() - t for c, t in zip(clocks, t0, strict=True)]
        _, d = F.cross_entropy(outs[nodes[-1].index], labels)
        dys = {nodes[-1].index: d}
        for nd in reversed(nodes):
            t0 = [c() for c in clocks]
            dxs, _ = nd.layer.backward(dys.pop(nd.index), tape[nd.index], model.layer_params(nd))
            (wall, cpu), (fwall, fcpu) = (
                [c() - t for c, t in zip(clocks, t0, strict=True)],
                fwd[nd.index],
            )
            times[nd.index].append((fwall, wall, fcpu, cpu))
            for j, dx in zip(nd.inputs, dxs, strict=True):
                dys[j] = dx
    return [[nd.name, *np.median(times[nd.index], axis=0).tolist()] for nd in nodes]


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


def _timed(fn) -> tuple[float, float]:
    """(wall s, CPU s of all the process's threads) of one call."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def run(batch: int, reps: int, seed: int, profile_reps: int) -> dict:
    threads = worker_threads()
    wts = make_weights(seed)
    rng = np.random.default_rng(seed + 1)
    x = rng.random((batch, 3, SIZE_PX, SIZE_PX), dtype=np.float32)
    labels = rng.integers(0, CLASSES, batch)
    model = make_model(wts)
    opt = AdamW(model.params, lr=LR, weight_decay=WEIGHT_DECAY)
    ours = lambda: numpy_step(model, opt, x, labels)  # noqa: E731
    has_torch = torch_version() is not None
    result: dict = {
        "env": {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")},
        "blas": blas_info(),
        "threads": threads,
        "batch": batch,
        "torch": torch_version(),
    }
    if has_torch:
        theirs, t_loss, t_grads = torch_side(wts, x, labels, threads)
        result["max_rel_diff_vs_torch"] = check_same_net(model, wts, x, labels, t_loss, t_grads)
        theirs()
    ours()
    t_ours, t_torch = [], []  # (wall s, CPU s) per step
    for _ in range(reps):
        t_ours.append(_timed(ours))
        if has_torch:
            t_torch.append(_timed(theirs))
    t_ours, t_torch = np.array(t_ours), np.array(t_torch)
    result["numpy_img_s"] = batch / float(np.median(t_ours[:, 0]))
    result["numpy_cpu_ms"] = 1e3 * float(np.median(t_ours[:, 1]))
    if has_torch:
        result["torch_img_s"] = batch / float(np.median(t_torch[:, 0]))
        result["torch_cpu_ms"] = 1e3 * float(np.median(t_torch[:, 1]))
        result["ratio_median_of_pairs"] = float(np.median(t_torch[:, 0] / t_ours[:, 0]))
    result["layers"] = layer_times(model, x, labels, profile_reps)
    return result


def report(r: dict) -> None:
    print(f"env: {r['env']}")
    for b in r["blas"]:
        print(
            f"BLAS: {b['internal_api']} {b['version']}, kernel {b['architecture']}, "
            f"{b['num_threads']} threads"
        )
    print(f"threads: ours {r['threads']} (one Python thread per core, BLAS at 1 each)", end="")
    print(f", torch.set_num_threads({r['threads']})" if r["torch"] else "")
    print(f"training step, batch {r['batch']}, float32, AdamW:")
    print(f"  numpy  {r['numpy_img_s']:8.0f} images/s, {r['numpy_cpu_ms']:6.1f} ms CPU a step")
    if r["torch"] is None:
        print("  torch  skipped: torch is not installed (it is not a sensorlab dependency)")
    else:
        print(
            f"  torch  {r['torch_img_s']:8.0f} images/s, {r['torch_cpu_ms']:6.1f} ms CPU a step"
            f"  (torch {r['torch']})"
        )
        print(
            f"  ratio numpy / torch {r['ratio_median_of_pairs']:.2f}x "
            "(median over interleaved pairs of torch time / numpy time)"
        )
        print(f"  first step vs torch: max relative difference {r['max_rel_diff_vs_torch']:.1e}")
    print("per layer, ours (median ms): forward, backward wall; forward, backward CPU")
    rows = [*r["layers"], ["sum", *np.sum([row[1:] for row in r["layers"]], axis=0)]]
    for name, *ms in rows:
        print(f"  {name:14s} " + " ".join(f"{v * 1e3:7.2f}" for v in ms))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--reps", type=int, default=15, help="interleaved pairs")
    ap.add_argument("--profile-reps", type=int, default=5, help="steps of the per-layer profile")
    ap.add_argument("--threads", type=int, default=None, help="pin to this many cores first")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    ap.add_argument("--all-envs", action="store_true", help="OPENBLAS_* as is, unset, Haswell")
    args = ap.parse_args(argv)
    if args.threads is not None:
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.threads])
    if not args.all_envs:
        r = run(args.batch, args.reps, args.seed, args.profile_reps)
        print(json.dumps(r)) if args.json else report(r)
        return 0
    rows = []
    for name, (unset, extra) in ENVS.items():
        opts = ["--batch", str(args.batch), "--reps", str(args.reps), "--seed", str(args.seed)]
        opts += ["--profile-reps", str(args.profile_reps)]
        if args.threads is not None:
            opts += ["--threads", str(args.threads)]
        cmd = ["env", *unset, *[f"{k}={v}" for k, v in extra.items()], sys.executable]
        print(f"== {name}: {' '.join(cmd)} bench/train.py {' '.join(opts)}", flush=True)
        out = subprocess.run(
            [*cmd, __file__, "--json", *opts], check=True, capture_output=True, text=True
        ).stdout
        r = json.loads(out.strip().splitlines()[-1])
        report(r)
        rows.append((name, r))
    print("\nsummary (numpy / torch training step, median of interleaved pairs):")
    for name, r in rows:
        arch = ",".join(sorted({b["architecture"] for b in r["blas"]}))
        ratio = "torch skipped" if r["torch"] is None else f"{r['ratio_median_of_pairs']:.2f}x"
        torch_ips = "" if r["torch"] is None else f", torch {r['torch_img_s']:.0f} img/s"
        print(
            f"  {name:8s} kernel {arch:10s} {ratio}; numpy {r['numpy_img_s']:.0f} img/s{torch_ips}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

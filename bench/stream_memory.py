"""Memory check: streaming a dataset through the sensor chain keeps memory flat.

A lazy dataset makes its images on demand (so it holds nothing itself); the default
sensor chain (scene → optics → photodetector → adc → raw), built by the runner from a
config, streams it batch by batch with ``Chain.stream``. The peak of traced
allocations (``tracemalloc``, which sees NumPy's and OpenCV's array buffers) is measured
for a small and an 8× larger dataset; flat means the larger run's peak is no more than
10 % (+ 1 MiB) above the smaller one's.

Run from the repository root::

    /work/venv/bin/python -m bench.stream_memory            # 512 vs 4096 images of 64×64
    /work/venv/bin/python -m bench.stream_memory --quick    # 256 vs 2048 images of 32×32
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import load_config
from pipeline.datasets import Dataset
from pipeline.runner import build_chain

MIB = 2**20

SENSOR = [
    {"stage": "scene", "mean_photons": 1000},
    {"stage": "optics", "psf": "gaussian", "sigma_px": 0.7},
    {"stage": "photodetector", "cfa": "RGGB", "read_noise_e": 2.0},
    {"stage": "adc", "bits": 10},
    {"stage": "raw", "demosaic": "bilinear"},
]


class LazyDataset(Dataset):
    """``n`` uint8 sRGB images, each made from its index when read: holds no images."""

    def __init__(self, n: int, size: int) -> None:
        self.n = n
        self.image_shape = (size, size, 3)
        self.dtype = np.dtype(np.uint8)
        self.encoding = "srgb8"
        self.class_names = ("a", "b")

    def __len__(self) -> int:
        return self.n

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        images = np.stack(
            [
                np.random.default_rng(i).integers(0, 256, self.image_shape, dtype=np.uint8)
                for i in range(start, stop)
            ]
        )
        return images, np.arange(start, stop) % 2


def stream_peak(n: int, size: int, batch_size: int) -> tuple[float, float, float]:
    """(peak traced MiB, seconds, mean of the output) for streaming ``n`` images."""
    loaded = load_config(
        {"dataset": {"kind": "npz", "path": "unused.npz"}, "sensor": SENSOR, "seed": 0}
    )
    dataset = LazyDataset(n, size)
    chain = build_chain(loaded, dataset.info())
    tracemalloc.start()
    tracemalloc.reset_peak()
    start = time.perf_counter()
    total, count = 0.0, 0
    for x, _labels, _index in chain.stream(dataset, batch_size):
        total += float(x.sum(dtype=np.float64))  # use the output, then drop it
        count += x.size
    seconds = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / MIB, seconds, total / count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)
    # Several batches even in the small run: steady state holds two batches' arrays at once.
    size, small, large = (32, 256, 2048) if args.quick else (64, 512, 4096)
    peaks = {}
    for n in (small, large):
        peak, seconds, mean = stream_peak(n, size, args.batch_size)
        peaks[n] = peak
        print(
            f"{n:6d} images of {size}×{size}, batch {args.batch_size}: peak traced "
            f"{peak:7.1f} MiB, {n / seconds:7.0f} images/s, output mean {mean:.4f}"
        )
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print(f"process max RSS: {rss_mib:.0f} MiB")
    flat = peaks[large] <= 1.10 * peaks[small] + 1.0
    verdict = "flat" if flat else "NOT flat"
    growth = peaks[large] / peaks[small]
    print(f"memory {verdict}: {large // small}× the images, peak ×{growth:.2f}")
    return 0 if flat else 1


if __name__ == "__main__":
    sys.exit(main())

"""Memory benchmark: a run streams its dataset, so peak memory does not grow with its size.

Runs the real runner (``pipeline.run``: dataset, every configured stage, the classifier
when the config has one, the zarr store and samples.png) on the same config with a
small and a 10× larger procedural dataset, each in a fresh subprocess, and compares the
processes' peak resident memory (``ru_maxrss``, which includes the interpreter and
libraries: the honest figure a user sees). Target: large ≤ 1.2 × small.

Run from the repository root::

    python -m bench.stream_memory                              # 2,000 vs 20,000 images
    python -m bench.stream_memory --small 500 --large 5000     # quicker
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, resource, sys, time
import pipeline
config, n, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
t0 = time.perf_counter()
result = pipeline.run(config, set={"dataset.n": n, "dataset.split": "test", "run.out": out},
                      progress=False)
seconds = time.perf_counter() - t0
print(json.dumps({
    "images": result.manifest["dataset"]["images"],
    "seconds": seconds,
    "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "accuracy": (result.metrics or {}).get("accuracy"),
}))
"""


def measure(config: str, n: int, out: str) -> dict:
    """Run ``config`` on ``n`` test images in a fresh process; its peak RSS and time."""
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, config, str(n), out],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/default.yaml")
    parser.add_argument("--small", type=int, default=2000)
    parser.add_argument("--large", type=int, default=20000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as out:
        small = measure(args.config, args.small, out)
        large = measure(args.config, args.large, out)
    for r in (small, large):
        print(
            f"{r['images']:7d} images: peak RSS {r['max_rss_mib']:7.1f} MiB, "
            f"{r['images'] / r['seconds']:7.0f} images/s, accuracy {r['accuracy']}"
        )
    ratio = large["max_rss_mib"] / small["max_rss_mib"]
    ok = ratio <= 1.2
    print(
        f"{args.config}: {large['images'] / small['images']:.0f}× the images, peak RSS ×{ratio:.3f}"
        f" ({'within' if ok else 'OVER'} the 1.2× target)"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

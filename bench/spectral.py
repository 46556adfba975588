"""Benchmark: the spectral default run (configs/spectral.yaml) against the RGB one
(configs/default.yaml), whole runs through ``pipeline.run`` (dataset, sensor, CNN, metrics;
nothing written), in the same process, as interleaved pairs (bench/common.py: each
side's median and the median over the pairs of spectral time / RGB time), after
bench/common.py's header (BLAS, ``SENSORLAB_THREADS``, load; ``--blas-env``).

Issue 17 asks that the spectral run cost at most 3× the RGB run. colour-science's import
(~2 s, once per process) is done before timing and printed apart.

Run from the repository root::

    python -m bench.spectral             # 3 pairs of 1000-image runs
    python -m bench.spectral --pairs 1 --images 256
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import add_blas_env, apply_blas_env, interleaved, load_line, print_header  # noqa: E402
from pipeline import run  # noqa: E402

CONFIGS = {"rgb": ROOT / "configs/default.yaml", "spectral": ROOT / "configs/spectral.yaml"}


def timed_run(config: Path, images: int) -> float:
    """Wall time of one run, s."""
    start = time.perf_counter()
    run(config, set=[f"dataset.n={images}"], store=False, progress=False)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3, help="alternating RGB/spectral pairs")
    parser.add_argument("--images", type=int, default=1000, help="dataset.n of both runs")
    add_blas_env(parser)
    args = parser.parse_args(argv)
    apply_blas_env(args.blas_env)
    print_header()

    start = time.perf_counter()
    import colour  # noqa: F401  (the one-off import, outside the timings)

    print(f"colour-science import: {time.perf_counter() - start:.2f} s (once per process)")
    timed_run(CONFIGS["spectral"], 16)  # warm-up: imports, model load, caches
    timed_run(CONFIGS["rgb"], 16)
    timed = interleaved(
        lambda: timed_run(CONFIGS["rgb"], args.images),
        lambda: timed_run(CONFIGS["spectral"], args.images),
        args.pairs,
    )
    print(f"{args.images} images:")
    for line in timed.lines("rgb", "spectral"):
        print(line)
    print(f"  spectral / rgb = {timed.ratio:.2f} (issue 17: at most 3)")
    print(load_line())


if __name__ == "__main__":
    main()

"""Validation and performance figures of ``sensorlab calibrate`` (issue 15, items 4 and 5).

Prints:

1. the emva1288 package's camera simulator (``emva1288.camera.camera.Camera``, imported
   directly) → calibrate: K, temporal dark noise, DSNU, PRNU and saturation against the
   simulator's values, with the issue's tolerances (2 %, 5 %, 10 %, 10 %, 3 %);
2. the round trip over 60 random sensorlab sensors (the issue's 20, three times; 128²
   frames, 24 levels, 10 frames per level): the fraction whose dark and mid-level flat
   frames pass a two-sample KS test against the twin's (p > 0.05; target ≥ 90 %), and
   the 95 % intervals' coverage of the true parameters, pooled and per parameter with an
   exact binomial test (target 95 % within binomial error);
3. the DNG round trip (PiDNG → rawpy): the largest relative difference between the fit
   from DNG files and from the NumPy stacks;
4. with ``--performance``: wall time and peak memory of ``sensorlab calibrate`` (200
   bootstrap replicates, with its report) in a fresh process on 12 flat levels and a
   dark level of F frames of N² pixels, for F and 2F frames (memory flat in the number
   of frames), extrapolated linearly in frames × pixels to the issue's 50 frames of 1024²
   per level.

Run from the repository root::

    python -m bench.calibrate_validation                      # 1-3 (a few minutes)
    python -m bench.calibrate_validation --sensors 20         # quicker round trip
    python -m bench.calibrate_validation --performance-only --size 1024 --frames 8
    python -m bench.calibrate_validation --write-example frames   # example frames only

``--write-example DIR`` writes the frames of the test sensor (64² RGGB, darks at two
exposures, 15 flat levels; tests/calibrate/testsensor.py) and their manifest, for
trying ``sensorlab calibrate DIR/manifest.yaml --out twin``.
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
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.calibrate.testsensor import simulate_manifest  # noqa: E402
from tests.calibrate.validation import (  # noqa: E402
    EMVA1288_TOLERANCE,
    dng_round_trip,
    emva1288_camera,
    round_trip,
)

CHILD = """
import json, resource, sys, time
from pipeline.calibrate import calibrate
t0 = time.perf_counter()
calibrate(sys.argv[1], sys.argv[2], replicates=200)
print(json.dumps({"seconds": time.perf_counter() - t0,
                  "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _emva1288(size: int) -> None:
    print(f"1. emva1288 camera simulator, {size}x{size} mono, 24 levels x 10 frames, 20 darks")
    with tempfile.TemporaryDirectory() as tmp:
        figures = emva1288_camera(Path(tmp), size=size, levels=24, frames=10, darks=20)
    for name, f in figures.items():
        tol = EMVA1288_TOLERANCE[name]
        ok = "ok" if abs(f["rel_error"]) <= tol else "FAIL"
        print(
            f"   {name:24s} true {f['true']:10.5g}  fit {f['fit']:10.5g}  "
            f"error {100 * f['rel_error']:+6.2f} %  (tolerance {100 * tol:.0f} %) {ok}"
        )


def _round_trip(sensors: int) -> None:
    print(f"2. round trip, {sensors} random RGGB sensors, 128x128, 24 levels x 10 frames")
    result = round_trip(sensors)
    for s in result["sensors"]:
        missed = [k for k, c in s["covered"].items() if not c]
        print(
            f"   seed {s['seed']}: KS p dark {s['ks_p_dark']:.3f}, flat {s['ks_p_flat']:.3f}; "
            f"intervals missing the truth: {', '.join(missed) or 'none'}"
        )
    print(
        f"   KS pass fraction (both p > 0.05): {100 * result['ks_pass_fraction']:.0f} % "
        "(target >= 90 %)"
    )
    print(
        f"   95 % interval coverage: {100 * result['coverage']:.1f} % of "
        f"{result['coverage_checks']} checks "
        f"(binomial SE {100 * result['coverage_binomial_se']:.1f} %)"
    )
    print(
        "   per parameter: covered / sensors, exact binomial p against 95 %, "
        "mean and sd of z = (fit - true)/SE"
    )
    n = len(result["sensors"])
    for name, v in result["coverage_per_parameter"].items():
        p = result["coverage_binomial_p"][name]
        z_mean, z_sd = result["z_mean_sd"][name]
        print(
            f"     {name:24s} {round(v * n):3d}/{n}  {100 * v:5.1f} %  p = {p:.2f}  "
            f"z {z_mean:+.2f} ± {z_sd:.2f}"
        )


def _dng() -> None:
    print("3. DNG round trip (PiDNG writes, rawpy reads), 64x64 RGGB, 15 levels")
    with tempfile.TemporaryDirectory() as tmp:
        manifest = simulate_manifest(Path(tmp) / "frames")
        npy, dng = dng_round_trip(Path(tmp), manifest, black_level_dn=200, bits=12)
    worst = max(
        abs(dng["sensor"][k]["value"] - f["value"]) / max(abs(f["value"]), 1e-300)
        for k, f in npy["sensor"].items()
        if f["value"]
    )
    print(f"   largest relative difference of a sensor figure, DNG vs NumPy: {worst:.2e}")


def _frames(folder: Path, size: int, frames: int, levels: int = 12) -> Path:
    """Synthetic 12-bit frames (shot + read noise, a PRNU pattern) as .npy stacks."""
    rng = np.random.default_rng(0)
    gain = 1 + 0.01 * rng.standard_normal((size, size))
    rows = [{"file": "dark.npy", "kind": "dark", "exposure_s": 0.01}]
    levels_e = [0.0, *np.linspace(100, 9000, levels)]  # a dark level and 12 flat levels
    for i, e in enumerate(levels_e):
        stack = np.empty((frames, size, size), dtype=np.uint16)
        for f in range(frames):
            lam = e * gain
            x = lam + np.sqrt(lam + 9.0) * rng.standard_normal((size, size))
            stack[f] = np.clip(np.floor(0.4 * np.minimum(x, 8000) + 256.5), 0, 4095)
        name = "dark.npy" if i == 0 else f"flat_{i:02d}.npy"
        np.save(folder / name, stack)
        if i:
            rows.append(
                {"file": name, "kind": "flat", "exposure_s": 0.01, "photons": float(e / 0.5)}
            )
    path = folder / "manifest.yaml"
    path.write_text(yaml.safe_dump({"cfa": "RGGB", "bits": 12, "frames": rows}))
    return path


def _performance(size: int, frames: int) -> None:
    print(f"4. performance: 12 flat levels and a dark level of F frames of {size}x{size}")
    print(f"   load average before: {os.getloadavg()}")
    results = {}
    for f in (frames, 2 * frames):
        with tempfile.TemporaryDirectory() as tmp:
            manifest = _frames(Path(tmp), size, f)
            proc = subprocess.run(
                [sys.executable, "-c", CHILD, str(manifest), str(Path(tmp) / "out")],
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=True,
            )
            results[f] = json.loads(proc.stdout.strip().splitlines()[-1])
            print(
                f"   F = {f:3d}: {results[f]['seconds']:.1f} s, peak RSS "
                f"{results[f]['max_rss_mib']:.0f} MiB"
            )
    a, b = results[frames], results[2 * frames]
    per_frame = (b["seconds"] - a["seconds"]) / (13 * frames)
    fixed = a["seconds"] - per_frame * 13 * frames
    target = fixed + per_frame * 13 * 50 * (1024 * 1024) / (size * size)
    print(
        f"   per frame {per_frame:.3f} s, fixed {fixed:.1f} s; peak RSS ratio 2F/F "
        f"{b['max_rss_mib'] / a['max_rss_mib']:.2f}"
    )
    print(
        f"   extrapolated to 13 x 50 frames of 1024x1024: {target / 60:.1f} min "
        "(target 10 min on 2 cores)"
    )
    print(f"   load average after: {os.getloadavg()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sensors", type=int, default=60, help="round-trip sensors (60)")
    parser.add_argument("--emva-size", type=int, default=256, help="emva1288 frame size")
    parser.add_argument("--performance", action="store_true", help="also item 5")
    parser.add_argument("--performance-only", action="store_true", help="only item 5")
    parser.add_argument("--size", type=int, default=1024, help="performance frame size")
    parser.add_argument("--frames", type=int, default=8, help="performance frames F")
    parser.add_argument("--write-example", metavar="DIR", help="write example frames, exit")
    args = parser.parse_args()
    if args.write_example:
        print(f"wrote {simulate_manifest(Path(args.write_example))}")
        return
    t0 = time.perf_counter()
    if not args.performance_only:
        _emva1288(args.emva_size)
        _round_trip(args.sensors)
        _dng()
    if args.performance or args.performance_only:
        _performance(args.size, args.frames)
    print(f"({time.perf_counter() - t0:.0f} s in all; load average {os.getloadavg()})")


if __name__ == "__main__":
    main()

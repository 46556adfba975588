"""Benchmark: one exposure in Pyxel 3 and in sensorlab, side by side in the same process.

The exposure of issue 14: a 2048×2048 frame of photons (smooth random scene, mean ≈ 1000
photons per pixel) → 15×15 Gaussian PSF, σ = 1.5 px (sampled at pixel centres,
normalised) → Poisson shot noise → QE 0.8 → full well 10 000 e⁻ → read noise 3 e⁻ rms →
12-bit ADC whose top code is the full well. Pyxel runs it as an exposure
(``pyxel.run_mode`` with ``load_image``, ``load_psf``, ``shot_noise``,
``simple_conversion``, ``simple_collection``, ``simple_full_well``,
``simple_measurement``, ``output_node_noise``, ``simple_amplifier``, ``simple_adc``);
sensorlab runs its optics (``gaussian_point``, ``psf_radius_px: 7``), photodetector
(``mono``; no dark current, PRNU or DSNU) and ADC (12 bits, black level 0) stages.

Where the two models differ (so the outputs are compared by their statistics, not bit
for bit):

- Pyxel draws Poisson photons, then binomial photoelectrons (QE); sensorlab draws one
  Poisson count of mean QE·photons. Both are Poisson(QE·photons) in distribution.
- Pyxel's PSF fills beyond the border with the frame's mean; sensorlab reflects.
- Pyxel's ADC truncates ``e · 4095 / 10 000``; sensorlab puts the pedestal at the centre
  of code 0 (``floor(e · 4096 / full_scale + ½)``, full well at the centre of the top code).
- Both blur one plane: the frame goes in as one plane of all the light (what a scene
  with ``channels: gray`` gives) into the ``mono`` photodetector. ``--planes 3`` feeds it
  as three thirds (R, G, B) instead, which the mono sensor sums: the same mean electrons,
  three blurs.

Both run as interleaved pairs (bench/common.py); it prints each side's median, the median
of the pairs' ratios (target ≥ 20×), the median time of each sensorlab stage and of each
Pyxel model (the models called on the detector directly, outside ``run_mode``), after
bench/common.py's header (BLAS, ``SENSORLAB_THREADS``, load; ``--blas-env``).

Pyxel (``pip install pyxel-sim``, 3.0.2 here) is not a sensorlab dependency: without it
this prints that it skipped and exits 0. Pyxel installs many packages, so a separate
virtual environment that sees the project's packages is the easy way::

    python -m venv --system-site-packages /tmp/pyxelenv
    /tmp/pyxelenv/bin/pip install pyxel-sim==3.0.2
    /tmp/pyxelenv/bin/python -m bench.pyxel_compare            # from the repository root
    /tmp/pyxelenv/bin/python -m bench.pyxel_compare --size 512 --pairs 3   # a smoke run
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import add_blas_env, apply_blas_env, interleaved, load_line, print_header
from bench.sensor_chain import (
    EXPOSURE_S,
    Ceiling,
    format_times,
    opencv_line,
    run_chain,
    sampler_floor_s,
    scene,
    stage_times,
    verdict,
)
from pipeline.stage import SignalInfo, Stage, Unit
from sensors.adc import ADCStage
from sensors.optics import OpticsStage
from sensors.photodetector import PhotodetectorStage

SIGMA_PX = 1.5
RADIUS_PX = 7  # a 15×15 kernel
QE = 0.8
FULL_WELL_E = 10_000.0
READ_NOISE_E = 3.0
BITS = 12
VOLT_PER_E = 1e-6  # Pyxel's charge-to-volt conversion; any value, the ADC range follows
TARGET_RATIO = 20.0  # issue 14


def psf_kernel() -> np.ndarray:
    """The 15×15 Gaussian of σ = 1.5 px sampled at pixel centres, summing to 1."""
    x = np.arange(-RADIUS_PX, RADIUS_PX + 1)
    g = np.exp(-0.5 * (x / SIGMA_PX) ** 2)
    k = np.outer(g, g)
    return k / k.sum()


def pyxel_yaml(photons_path: Path, psf_path: Path, size: int) -> str:
    """The Pyxel exposure configuration (floats written as YAML 1.1 reads them: 1.0e-06)."""
    return f"""
exposure:
  readout: {{times: [1.0], non_destructive: false}}
cmos_detector:
  geometry: {{row: {size}, col: {size}, total_thickness: 40.0, pixel_vert_size: 10.0,
             pixel_horz_size: 10.0, pixel_scale: 1.0}}
  environment: {{temperature: 300}}
  characteristics:
    quantum_efficiency: {QE}
    charge_to_volt: {{value: {VOLT_PER_E:.6e}}}
    pre_amplification: 1.0
    adc_voltage_range: [0.0, {FULL_WELL_E * VOLT_PER_E:.6e}]
    adc_bit_resolution: {BITS}
    full_well_capacity: {FULL_WELL_E}
pipeline:
  photon_collection:
    - {{name: load_image, func: pyxel.models.photon_collection.load_image, enabled: true,
       arguments: {{image_file: {photons_path}}}}}
    - {{name: load_psf, func: pyxel.models.photon_collection.load_psf, enabled: true,
       arguments: {{filename: {psf_path}}}}}
    - {{name: shot_noise, func: pyxel.models.photon_collection.shot_noise, enabled: true,
       arguments: {{type: poisson, seed: 1}}}}
  charge_generation:
    - {{name: simple_conversion, func: pyxel.models.charge_generation.simple_conversion,
       enabled: true, arguments: {{quantum_efficiency: {QE}, seed: 2}}}}
  charge_collection:
    - {{name: simple_collection, func: pyxel.models.charge_collection.simple_collection,
       enabled: true}}
    - {{name: simple_full_well, func: pyxel.models.charge_collection.simple_full_well,
       enabled: true}}
  charge_measurement:
    - {{name: simple_measurement, func: pyxel.models.charge_measurement.simple_measurement,
       enabled: true}}
    - {{name: output_node_noise, func: pyxel.models.charge_measurement.output_node_noise,
       enabled: true, arguments: {{std_deviation: {READ_NOISE_E * VOLT_PER_E:.6e}, seed: 3}}}}
  readout_electronics:
    - {{name: simple_amplifier, func: pyxel.models.readout_electronics.simple_amplifier,
       enabled: true}}
    - {{name: simple_adc, func: pyxel.models.readout_electronics.simple_adc, enabled: true}}
"""


def build_chain(size: int, planes: int = 1) -> list[Stage]:
    """sensorlab's stages for the exposure, set up for ``planes`` (1 or 3) photon planes of
    (size, size)."""
    stages: list[Stage] = [
        OpticsStage(
            OpticsStage.Params(psf="gaussian_point", sigma_px=SIGMA_PX, psf_radius_px=RADIUS_PX),
            index=0,
        ),
        PhotodetectorStage(
            PhotodetectorStage.Params(
                cfa="mono",
                qe_w=QE,
                full_well_e=FULL_WELL_E,
                read_noise_e=READ_NOISE_E,
                dark_current_e_per_s=0.0,
                prnu_pct=0.0,
                dsnu_e=0.0,
            ),
            index=1,
        ),
        ADCStage(ADCStage.Params(bits=BITS, black_level_dn=0), index=2),
    ]
    info = SignalInfo(Unit.PHOTONS, (size, size, planes), np.float32, {"exposure_s": EXPOSURE_S})
    for stage in stages:
        info = stage.setup(info)
    return stages


def pyxel_model_times(config, repeats: int) -> dict[str, float]:
    """Median seconds of each Pyxel model, called on the detector in pipeline order."""
    detector = config.detector
    groups = [getattr(config.pipeline, name) for name in config.pipeline.model_group_names]
    models = [m for group in groups if group for m in group.models if m.enabled]
    times: dict[str, list[float]] = defaultdict(list)
    for _ in range(repeats):
        detector.empty()
        for model in models:
            start = time.perf_counter()
            model(detector)
            times[model.name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def describe(label: str, codes: np.ndarray) -> None:
    print(f"  {label}: mean {codes.mean(dtype=np.float64):.2f} DN, std {codes.std():.2f} DN")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=7, help="interleaved pairs")
    parser.add_argument("--size", type=int, default=2048, help="frame side, px")
    parser.add_argument(
        "--planes",
        type=int,
        choices=(1, 3),
        default=1,
        help="photon planes into the mono sensor: 1 (all the light) or 3 (R, G, B thirds)",
    )
    add_blas_env(parser)
    args = parser.parse_args(argv)
    apply_blas_env(args.blas_env)
    try:
        import pyxel
    except ImportError:
        print("pyxel is not importable (pip install pyxel-sim): skipped")
        return 0
    print_header([opencv_line(), f"pyxel {pyxel.__version__}"])
    size = args.size
    frame = scene(1, size, size)[0, ..., 1].astype(np.float64)  # one plane, mean ≈ 1000
    if args.planes == 1:
        planes = frame.astype(np.float32)[None, ..., None]
    else:
        planes = np.repeat((frame / 3.0).astype(np.float32)[None, ..., None], 3, axis=-1)
    stages = build_chain(size, args.planes)
    with tempfile.TemporaryDirectory() as tmp:
        photons_path, psf_path = Path(tmp) / "photons.npy", Path(tmp) / "psf.npy"
        np.save(photons_path, frame)
        np.save(psf_path, psf_kernel())
        config_path = Path(tmp) / "exposure.yaml"
        config_path.write_text(pyxel_yaml(photons_path, psf_path, size))
        config = pyxel.load(config_path)

        def run_pyxel():
            return pyxel.run_mode(
                mode=config.running_mode, detector=config.detector, pipeline=config.pipeline
            )

        tree = run_pyxel()  # warm-up, and the outputs compared below
        ours = run_chain(stages, planes)
        timed = interleaved(lambda: run_chain(stages, planes), run_pyxel, args.pairs)
        ratio = timed.ratio
        print(f"{size}×{size} exposure:")
        for line in timed.lines("sensorlab", "pyxel"):
            print(line)
        repeats = max(3, args.pairs // 2)
        print("  sensorlab per stage: " + format_times(stage_times(stages, planes, repeats)))
        models = pyxel_model_times(config, repeats)
        print("  pyxel per model:     " + format_times(models))
        ceiling = Ceiling.of(timed, sampler_floor_s(stages, planes, repeats))
        for line in ceiling.lines("pyxel", size * size):
            print(line)
        pyxel_codes = np.asarray(tree["bucket"]["image"]).reshape(size, size)
    inner = (slice(RADIUS_PX, -RADIUS_PX),) * 2  # the borders differ by design
    describe("pyxel     codes (inner)", pyxel_codes[inner])
    describe("sensorlab codes (inner)", ours[0][inner])
    print(f"ratio to pyxel: {ratio:.1f}× ({verdict([ratio], [ceiling.here], TARGET_RATIO)})")
    print(load_line())
    return 0


if __name__ == "__main__":
    sys.exit(main())

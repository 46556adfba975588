"""The calibration's validation (issue 15, item 4), shared by the tests and
``bench/calibrate_validation.py``.

- :func:`emva1288_camera`: frames from the independent ``emva1288`` package's camera
  simulator (``emva1288.camera.camera.Camera``, imported directly: the camera model
  needs nothing NumPy 2 lacks), calibrated; figures against the simulator's K, temporal
  dark noise, DSNU/PRNU patterns and saturation.
- :func:`round_trip`: random sensorlab sensors → frames → calibrate → the twin's frames;
  two-sample KS tests and the 95 % intervals' coverage of the true parameters.
- :func:`dng_round_trip`: the same frames as DNG files (PiDNG → rawpy) and as NumPy
  stacks give the same fit.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from scipy import stats

from pipeline.calibrate import calibrate

from .simulate import SimSensor, to_dng_manifest, write_manifest

EXPOSURE_S = 0.02
LONG_DARK_S = 0.2
KS_SAMPLES = 2000  # pixels per KS sample (random pixels of KS_FRAMES frames)
#: frames the KS pixels are drawn from: row and column temporal noise make a frame's
#: pixels share a draw per line, so pixels of one or two frames are not independent
#: samples of the distribution (the KS test's premise) and it rejects too often
KS_FRAMES = 20
NOMINAL = 0.95  # the intervals' nominal coverage


# -- the emva1288 package's camera ----------------------------------------------------
def emva1288_camera(
    folder: Path,
    *,
    size: int = 128,
    levels: int = 20,
    frames: int = 4,
    darks: int = 16,
    seed: int = 1,
    replicates: int = 50,
) -> dict[str, dict[str, float]]:
    """Calibrate frames of the emva1288 simulator; ``name → {true, fit, rel_error}``."""
    from emva1288.camera.camera import Camera

    rng = np.random.default_rng(seed)
    dsnu_e = rng.normal(0.0, 5.0, (size, size))
    prnu = 1.0 + rng.normal(0.0, 0.02, (size, size))
    cam = Camera(
        bit_depth=12,
        width=size,
        height=size,
        K=0.5,
        u_esat=6000.0,
        blackoffset=100,
        sigma2_dark_0=10.0,
        dsnu=dsnu_e,
        prnu=prnu,
        seed=seed,
    )
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    np.save(folder / "dark.npy", np.stack([cam.grab(0.0) for _ in range(darks)]))
    exposure = cam.exposure * 1e-9
    rows.append({"file": "dark.npy", "kind": "dark", "exposure_s": exposure})
    top = cam.get_radiance_for(mean=cam.K * cam._u_esat)  # the radiance that saturates
    for i, frac in enumerate(np.linspace(0, 1.3, levels + 1)[1:]):
        radiance = frac * top
        photons = float(cam.get_photons(radiance).sum(axis=2).mean())
        np.save(folder / f"flat_{i:02d}.npy", np.stack([cam.grab(radiance) for _ in range(frames)]))
        rows.append(
            {
                "file": f"flat_{i:02d}.npy",
                "kind": "flat",
                "exposure_s": exposure,
                "photons": photons,
            }
        )
    manifest = folder / "manifest.yaml"
    manifest.write_text(yaml.safe_dump({"cfa": "mono", "bits": 12, "frames": rows}))
    _, fit = calibrate(manifest, folder / "out", replicates=replicates, report=False)
    s = fit["sensor"]
    # the offset electrons (dark_signal_0) are clipped with the light but are part of the
    # black level to any measurement; the thermal ones are the dark current's D t
    offset_e = cam._dark_signal_0
    truth = {
        "system_gain_dn_per_e": (cam.K, s["system_gain_dn_per_e"]),
        "temporal_dark_noise_e": (
            math.sqrt(cam._sigma2_dark_0 + cam._u_therm()),
            s["temporal_dark_noise_e"],
        ),
        "dsnu_total_e": (float(dsnu_e.std()), s["dsnu_total_e"]),
        "prnu_total_pct": (100 * float(prnu.std()), s["prnu_total_pct"]),
        "full_well_e": (cam._u_esat - offset_e, s["full_well_e"]),
    }
    return {
        name: {"true": t, "fit": f["value"], "rel_error": f["value"] / t - 1}
        for name, (t, f) in truth.items()
    }


#: the issue's tolerances for the emva1288 camera
EMVA1288_TOLERANCE = {
    "system_gain_dn_per_e": 0.02,
    "temporal_dark_noise_e": 0.05,
    "dsnu_total_e": 0.10,
    "prnu_total_pct": 0.10,
    "full_well_e": 0.03,
}


# -- sensorlab round trip --------------------------------------------------------------
def random_sensor(rng: np.random.Generator) -> tuple[dict[str, Any], dict[str, Any]]:
    """Random photodetector and ADC parameters (12-bit RGGB, everything non-zero)."""
    k = float(rng.uniform(0.3, 1.2))
    black = int(rng.integers(64, 257))
    full_well = float(rng.uniform(0.5, 0.85) * (3800 - black) / k)
    pd = {
        "cfa": "RGGB",
        "qe": tuple(float(q) for q in rng.uniform(0.3, 0.8, 3)),
        "full_well_e": full_well,
        "read_noise_e": float(rng.uniform(1.5, 5.0)),
        "prnu_pct": float(rng.uniform(0.3, 2.0)),
        "dsnu_e": float(rng.uniform(0.5, 3.0)),
        "row_noise_e": float(rng.uniform(0.3, 1.5)),
        "col_noise_e": float(rng.uniform(0.3, 1.5)),
        "row_offset_fpn_e": float(rng.uniform(0.3, 2.0)),
        "col_offset_fpn_e": float(rng.uniform(0.3, 2.0)),
        "row_gain_fpn_pct": float(rng.uniform(0.2, 1.0)),
        "col_gain_fpn_pct": float(rng.uniform(0.2, 1.0)),
        "dark_current_e_per_s": float(rng.uniform(20.0, 200.0)),
        "exposure_s": EXPOSURE_S,
    }
    adc = {
        "bits": 12,
        "system_gain_dn_per_e": k,
        "black_level_dn": black,
        "offset_lsb": float(rng.uniform(-0.5, 0.5)),
    }
    return pd, adc


#: fit.json sensor figure → the true value from (pd, adc)
TRUE_VALUES = {
    "system_gain_dn_per_e": lambda pd, adc: adc["system_gain_dn_per_e"],
    "black_level_dn": lambda pd, adc: adc["black_level_dn"] + adc["offset_lsb"],
    "read_noise_e": lambda pd, adc: pd["read_noise_e"],
    "full_well_e": lambda pd, adc: pd["full_well_e"],
    "dark_current_e_per_s": lambda pd, adc: pd["dark_current_e_per_s"],
    "dsnu_e": lambda pd, adc: pd["dsnu_e"],
    "prnu_pct": lambda pd, adc: pd["prnu_pct"],
    "row_noise_e": lambda pd, adc: pd["row_noise_e"],
    "col_noise_e": lambda pd, adc: pd["col_noise_e"],
    "row_offset_fpn_e": lambda pd, adc: pd["row_offset_fpn_e"],
    "col_offset_fpn_e": lambda pd, adc: pd["col_offset_fpn_e"],
    "row_gain_fpn_pct": lambda pd, adc: pd["row_gain_fpn_pct"],
    "col_gain_fpn_pct": lambda pd, adc: pd["col_gain_fpn_pct"],
}


def _twin(folder: Path, shape: tuple[int, int], seed: int) -> SimSensor:
    """The twin from ``folder/sensor.yaml`` (a new draw of its patterns)."""
    rows = yaml.safe_load((folder / "sensor.yaml").read_text())["sensor"]
    by = {r["stage"]: {k: v for k, v in r.items() if k != "stage"} for r in rows}
    pd = {**by["photodetector"], "exposure_s": by["scene"]["exposure_s"]}
    return SimSensor(pd, by["adc"], shape, seed=seed, sensor_seed=seed + 1)


def _ks(a: np.ndarray, b: np.ndarray, rng: np.random.Generator) -> float:
    pick = lambda x: rng.choice(x.ravel(), KS_SAMPLES, replace=False)  # noqa: E731
    return float(stats.ks_2samp(pick(a), pick(b)).pvalue)


def round_trip_one(
    seed: int,
    *,
    size: int = 128,
    levels: int = 24,
    frames: int = 10,
    darks: int = 16,
    replicates: int = 100,
) -> dict[str, Any]:
    """One random sensor: KS p-values (dark, mid flat) and whether each interval covers."""
    rng = np.random.default_rng(seed)
    pd, adc = random_sensor(rng)
    shape = (size, size)
    sensor = SimSensor(pd, adc, shape, seed=seed, sensor_seed=seed)
    top_photons = 1.3 * pd["full_well_e"] / min(pd["qe"])
    with tempfile.TemporaryDirectory() as tmp:
        manifest = write_manifest(
            Path(tmp) / "frames",
            sensor,
            photon_levels=np.linspace(0, top_photons, levels + 1)[1:],
            frames_per_level=frames,
            dark_frames=darks,
            exposure_s=EXPOSURE_S,
            dark_exposures=(LONG_DARK_S,),
        )
        folder, fit = calibrate(manifest, Path(tmp) / "out", replicates=replicates, report=False)
        twin = _twin(folder, shape, seed + 10_000)
    # the calibrated sensor's new frames against the twin's (its own pattern draw: a
    # frame pools its rows' and columns' offsets, so small frames differ by their draws)
    mid = 0.5 * pd["full_well_e"] / max(pd["qe"])
    p_dark = _ks(sensor.frames(0.0, KS_FRAMES), twin.frames(0.0, KS_FRAMES), rng)
    p_flat = _ks(sensor.frames(mid, KS_FRAMES), twin.frames(mid, KS_FRAMES), rng)
    figures = {name: (fit["sensor"][name], true(pd, adc)) for name, true in TRUE_VALUES.items()}
    for letter, q in zip("RGB", pd["qe"], strict=True):
        figures[f"qe_{letter}"] = (fit["channels"][letter]["quantum_efficiency"], q)
    covered, z = {}, {}
    for name, (fig, true) in figures.items():
        low, high = fig["ci95"]
        covered[name] = bool(low <= true <= high)
        z[name] = (fig["value"] - true) / fig["stderr"]  # the studentized error
    return {"seed": seed, "ks_p_dark": p_dark, "ks_p_flat": p_flat, "covered": covered, "z": z}


def round_trip(n_sensors: int, *, first_seed: int = 100, **kw: Any) -> dict[str, Any]:
    """:func:`round_trip_one` for ``n_sensors`` sensors, and the summary figures."""
    results = [round_trip_one(first_seed + i, **kw) for i in range(n_sensors)]
    passes = [r["ks_p_dark"] > 0.05 and r["ks_p_flat"] > 0.05 for r in results]
    checks = [c for r in results for c in r["covered"].values()]
    n = len(checks)
    per = {name: [r["covered"][name] for r in results] for name in results[0]["covered"]}
    return {
        "sensors": results,
        "ks_pass_fraction": float(np.mean(passes)),
        "coverage": float(np.mean(checks)),
        "coverage_checks": n,
        # the binomial standard error of a 95 % coverage over n checks
        "coverage_binomial_se": math.sqrt(NOMINAL * (1 - NOMINAL) / n),
        "coverage_per_parameter": {name: float(np.mean(c)) for name, c in per.items()},
        # mean and sd of (fit − true)/SE: a bias and a too short (sd > 1) or long SE
        "z_mean_sd": {
            name: (float(np.mean(z)), float(np.std(z, ddof=1)))
            for name in per
            for z in [[r["z"][name] for r in results]]
        },
        # two-sided exact binomial test of each parameter's coverage against 95 %
        "coverage_binomial_p": {
            name: float(stats.binomtest(int(np.sum(c)), len(c), NOMINAL).pvalue)
            for name, c in per.items()
        },
    }


# -- DNG round trip --------------------------------------------------------------------
def dng_round_trip(
    folder: Path, manifest: Path, *, black_level_dn: int, bits: int, replicates: int = 30
) -> tuple[dict, dict]:
    """The fits of the same frames as NumPy stacks and as DNG files (sensor figures)."""
    dng = to_dng_manifest(manifest, folder / "dng", black_level_dn=black_level_dn, bits=bits)
    _, from_npy = calibrate(manifest, folder / "npy-out", replicates=replicates, report=False)
    _, from_dng = calibrate(dng, folder / "dng-out", replicates=replicates, report=False)
    return from_npy, from_dng

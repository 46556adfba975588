"""PSNR and SSIM of the raw stage against the ideal sensor: formulas, plumbing, columns."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from pipeline.quality import QualitySums
from pipeline.runner import run

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["dataset.n=12", "run.batch_size=5", "run.record.images=all", "run.record.stages=[raw]"]
IDEAL = [
    "sensor.photodetector.shot_noise=false",
    "sensor.photodetector.read_noise_e=0",
    "sensor.photodetector.prnu_pct=0",
    "sensor.photodetector.dsnu_e=0",
    "sensor.adc.bits=24",
    "sensor.adc.curve=linear",
]


def _psnr_db(out: np.ndarray, ref: np.ndarray) -> float:
    """10·log10(peak² / MSE) with peak 1, written out."""
    return 10 * math.log10(1.0 / np.mean((out - ref) ** 2))


def test_psnr_is_the_mse_formula_and_ssim_is_one_for_equal_images() -> None:
    rng = np.random.default_rng(0)
    ref = rng.uniform(0, 1, (3, 16, 16, 3))
    out = ref + 0.01  # a constant error: MSE = 1e-4, PSNR = 40 dB
    sums = QualitySums()
    sums.add(out, ref)
    assert sums.metrics["psnr_db"] == pytest.approx(40.0, rel=1e-9)
    assert sums.metrics["quality_images"] == 3
    same = QualitySums()
    same.add(ref, ref)
    assert same.metrics["psnr_db"] == math.inf and same.metrics["ssim"] == pytest.approx(1.0)
    assert QualitySums().metrics == {"psnr_db": None, "ssim": None, "quality_images": 0}


@pytest.mark.parametrize("bits", [3, 10])
def test_run_metrics_compare_the_raw_image_with_an_independent_ideal_run(bits: int) -> None:
    config = ROOT / "configs" / "default.yaml"
    cell = [*SMALL, f"sensor.adc.bits={bits}"]
    result = run(config, set=cell, store=False, progress=False)
    out = result.arrays["raw"].astype(np.float64)
    ref = run(config, set=[*cell, *IDEAL], store=False, progress=False).arrays["raw"]
    ref = ref.astype(np.float64)
    psnr = np.mean([_psnr_db(o, r) for o, r in zip(out, ref, strict=True)])
    ssim = np.mean(
        [
            structural_similarity(r, o, data_range=1.0, channel_axis=-1)
            for o, r in zip(out, ref, strict=True)
        ]
    )
    m = result.metrics
    assert m["quality_images"] == 12
    assert m["psnr_db"] == pytest.approx(psnr, rel=1e-9)
    assert m["ssim"] == pytest.approx(ssim, rel=1e-9)
    assert result.manifest["metrics"]["psnr_db"] == m["psnr_db"]


def test_no_metrics_without_a_photodetector() -> None:
    raw = {
        "dataset": {"kind": "procedural", "n": 4, "split": "test"},
        "sensor": [{"stage": "scene"}],
        "run": {"batch_size": 4},
    }
    result = run(raw, store=False, progress=False)
    assert "psnr_db" not in result.metrics


def test_reference_keeps_the_full_scale_of_an_adc_given_a_system_gain() -> None:
    from pipeline.reference import default_reference

    raw = {
        "sensor": [
            {"stage": "scene"},
            {"stage": "photodetector"},
            {"stage": "adc", "bits": 8, "system_gain_dn_per_e": 0.05, "curve": "table"},
        ]
    }
    ref = default_reference(raw)
    assert ref["sensor[2].bits"] == 24 and ref["sensor[2].curve"] == "linear"
    assert ref["sensor[2].thresholds"] is None
    # full scale 2^bits / K electrons at 8 bits equals 2^24 / K' at 24 bits
    assert 2**8 / 0.05 == pytest.approx(2**24 / ref["sensor[2].system_gain_dn_per_e"])

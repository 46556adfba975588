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


# --------------------------------------------------------------------------- comparisons
class _Pairs:
    """Keeps what a comparison hands it."""

    def __init__(self) -> None:
        self.out: list[np.ndarray] = []
        self.ref: list[np.ndarray] = []

    def add(self, out: np.ndarray, ref: np.ndarray) -> None:
        self.out.append(out.copy())
        self.ref.append(ref.copy())


def _loaded(overrides: list[str]):
    from pipeline.config import load_config

    return load_config(ROOT / "configs" / "default.yaml", overrides)


@pytest.mark.parametrize("images", [3, 7, "all"])
def test_a_comparison_gets_the_first_images_of_the_run_against_its_reference(images) -> None:
    """What a comparison receives equals the two chains run separately (compare_chains)."""
    from pipeline.runner import Comparison, build_chain, compare_chains, open_config_dataset

    cell = [*SMALL, "sensor.adc.bits=4", "model=null"]
    loaded, reference = _loaded(cell), _loaded([*cell, *IDEAL, "sensor.adc.bits=12"])
    pairs = _Pairs()
    run(loaded, store=False, progress=False, compare=[Comparison(reference, pairs, None, images)])
    dataset = open_config_dataset(loaded)
    chain = build_chain(loaded, dataset.info(), with_model=False)
    ref_chain = build_chain(reference, dataset.info(), with_model=False)
    expected = list(compare_chains(chain, ref_chain, dataset, 5, images=images))
    for got, want in zip((pairs.out, pairs.ref), zip(*expected, strict=True), strict=True):
        np.testing.assert_array_equal(np.concatenate(got), np.concatenate(want))
    assert len(np.concatenate(pairs.out)) == (12 if images == "all" else images)


def test_a_comparison_with_the_quality_reference_shares_its_reference_pass(monkeypatch) -> None:
    import pipeline.runner as runner

    calls: list[int] = []
    original = runner._reference_output

    def counted(reference, dataset, images, index, upto, file):
        calls.append(len(images))
        return original(reference, dataset, images, index, upto, file)

    monkeypatch.setattr(runner, "_reference_output", counted)
    cell = [*SMALL, "sensor.adc.bits=4", "model=null"]
    same = _loaded([*cell, *IDEAL])  # default_reference's switches: the quality probe's
    other = _loaded([*cell, *IDEAL, "sensor.photodetector.dark_current_e_per_s=0"])
    for reference, passes in ((same, 1), (other, 2)):
        calls.clear()
        a, b = _Pairs(), _Pairs()
        result = run(
            _loaded(cell),
            store=False,
            progress=False,
            compare=[runner.Comparison(reference, a, None, 12), runner.Comparison(reference, b)],
        )
        assert sum(calls) == passes * 12  # one reference pass per distinct reference
        np.testing.assert_array_equal(np.concatenate(a.ref), np.concatenate(b.ref))
        assert result.metrics["quality_images"] == 12

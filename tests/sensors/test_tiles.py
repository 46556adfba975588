"""Noise drawn per tile over threads: the same arrays for any batch size and thread count.

Large frames are cut into row bands (pipeline.stage.tile_rows), each with its own
generator; an image of at most TILE_ELEMENTS elements is one tile drawing from the image's
own generator, so it gets exactly what the per-image algorithm gave. Here TILE_ELEMENTS is
made small, so small frames have many tiles and the tests stay fast.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

import pipeline.stage
from pipeline.stage import THREADS_ENV, Batch, SignalInfo, Unit
from sensors.adc import ADCStage
from sensors.curves import quantize
from sensors.optics import OpticsStage
from sensors.photodetector import PhotodetectorStage, expected_electrons
from sensors.raw import RawStage

H, W = 24, 20
NOISY = {
    "read_noise_e": 2.5,
    "row_noise_e": 1.5,
    "col_noise_e": 1.2,
    "prnu_pct": 1.0,
    "dsnu_e": 0.7,
}


def _chain(cfa="RGGB", pd=None, adc=None, seed=3):
    pd_stage = PhotodetectorStage(PhotodetectorStage.Params(cfa=cfa, **(pd or NOISY)), seed=seed)
    adc_stage = ADCStage(
        ADCStage.Params(bits=12, **(adc or {"noise_lsb": 0.7})), seed=seed, index=1
    )
    info = pd_stage.setup(SignalInfo(Unit.PHOTONS, (H, W, 3), np.float32, {"exposure_s": 0.01}))
    return pd_stage, adc_stage, adc_stage.setup(info)


def _run(stages, photons, index, batch_size):
    pd_stage, adc_stage, _ = stages
    parts = []
    for start in range(0, len(photons), batch_size):
        batch = Batch(index[start : start + batch_size])
        e = pd_stage.process(photons[start : start + batch_size], batch)
        parts.append((e, adc_stage.process(e, batch)))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _photons(n, seed=0):
    return np.random.default_rng(seed).uniform(0, 6000, (n, H, W, 3)).astype(np.float32)


@pytest.mark.parametrize("cfa", ["RGGB", "stacked"])
@pytest.mark.parametrize("tile_elements", [96, 1 << 18])  # many tiles per image; one
def test_same_arrays_for_batch_sizes_1_7_64_and_threads_1_2(monkeypatch, cfa, tile_elements):
    monkeypatch.setattr(pipeline.stage, "TILE_ELEMENTS", tile_elements)
    photons = _photons(64)
    index = np.arange(100, 164)
    stages = _chain(cfa)
    runs = []
    for threads in ("1", "2"):
        monkeypatch.setenv(THREADS_ENV, threads)
        runs += [_run(stages, photons, index, size) for size in (1, 7, 64)]
    for electrons, codes in runs[1:]:
        assert np.array_equal(electrons, runs[0][0])
        assert np.array_equal(codes, runs[0][1])


def test_a_single_tile_image_draws_exactly_the_per_image_stream(monkeypatch):
    """With tiles as large as the image, every draw is the per-image algorithm's, in its
    order: Poisson, read noise, row noise (photodetector); comparator noise (ADC)."""
    monkeypatch.setenv(THREADS_ENV, "2")
    pd = {"read_noise_e": 2.5, "row_noise_e": 1.5, "prnu_pct": 0.0, "dsnu_e": 0.0}
    pd |= {"dark_current_e_per_s": 0.0}
    stages = _chain(pd=pd)
    pd_stage, adc_stage, info = stages
    photons = _photons(5)
    index = np.array([4, 9, 1, 30, 2])
    electrons, codes = _run(stages, photons, index, 5)
    lam = expected_electrons(photons, "RGGB", qe=0.6, qe_w=0.6)
    transfer = info.attr("adc_transfer")
    for i, key in enumerate(index):
        (rng,) = pd_stage.image_rngs([key])
        e = rng.poisson(lam[i]).astype(np.float64)
        e = np.minimum(e, 10_000.0)
        e += 2.5 * rng.standard_normal((H, W))
        e += 1.5 * rng.standard_normal((H, 1))
        assert np.array_equal(electrons[i], e.astype(np.float32))
        (rng,) = adc_stage.image_rngs([key])
        offset = 0.7 * rng.standard_normal((H, W))
        assert np.array_equal(codes[i], quantize(electrons[i], **transfer, offset_lsb=offset))


def test_tiles_draw_independent_poisson_counts(monkeypatch):
    """A flat field of 40 images cut into 12 tiles each: the counts are Poisson(λ)
    (chi-square against scipy.stats.poisson) and no tile repeats another's draws."""
    monkeypatch.setattr(pipeline.stage, "TILE_ELEMENTS", 2 * W * 3)  # 2 rows of (W, 3)
    pd = {"read_noise_e": 0.0, "prnu_pct": 0.0, "dsnu_e": 0.0, "dark_current_e_per_s": 0.0}
    pd_stage, _, _ = _chain("stacked", pd=pd)
    lam = 0.6 * 20.0
    photons = np.full((40, H, W, 3), 20.0, np.float32)
    counts = pd_stage.process(photons, Batch(np.arange(40))).astype(np.int64)
    bands = counts.reshape(40, H // 2, 2 * W * 3)
    flat = bands.reshape(-1, bands.shape[-1])
    assert len({row.tobytes() for row in flat}) == len(flat)  # 480 tiles, all different
    n = counts.size
    pmf = scipy.stats.poisson.pmf(np.arange(60), lam)
    lo, hi = np.flatnonzero(pmf * n >= 50)[[0, -1]]  # cells k <= lo, each k between, k >= hi
    observed = np.bincount(counts.ravel(), minlength=60)
    obs = [observed[: lo + 1].sum(), *observed[lo + 1 : hi], observed[hi:].sum()]
    cells = [
        scipy.stats.poisson.cdf(lo, lam),
        *pmf[lo + 1 : hi],
        scipy.stats.poisson.sf(hi - 1, lam),
    ]
    exp = n * np.asarray(cells)
    _, p_value = scipy.stats.chisquare(obs, exp)
    assert p_value > 1e-4, p_value


@pytest.mark.parametrize("psf", ["gaussian", "defocus"])  # separable, and a 2-D kernel
def test_optics_gives_the_same_planes_on_one_thread_and_two(monkeypatch, psf):
    photons = _photons(9)
    stage = OpticsStage(OpticsStage.Params(psf=psf, sigma_px=1.2, defocus_radius_px=2.5))
    stage.setup(SignalInfo(Unit.PHOTONS, (H, W, 3), np.float32))
    runs = []
    for threads in ("1", "2"):
        monkeypatch.setenv(THREADS_ENV, threads)
        runs.append(stage.process(photons, Batch(np.arange(9))))
    assert np.array_equal(runs[0], runs[1])
    # and each image is blurred on its own: the same as a batch of one
    np.testing.assert_array_equal(stage.process(photons[4:5], Batch(np.arange(1))), runs[0][4:5])


def test_column_noise_is_the_same_in_every_tile_of_an_image(monkeypatch):
    """Column noise alone, 12 tiles per image: every row of a frame is the same line (one
    value per column, shared by the tiles), another line per image, for any thread count."""
    monkeypatch.setattr(pipeline.stage, "TILE_ELEMENTS", 2 * W)  # 2 rows of (W,)
    pd = {"read_noise_e": 0.0, "prnu_pct": 0.0, "dsnu_e": 0.0, "dark_current_e_per_s": 0.0}
    pd |= {"shot_noise": False, "col_noise_e": 1.2}
    photons = np.zeros((3, H, W, 3), np.float32)
    runs = []
    for threads in ("1", "2"):
        monkeypatch.setenv(THREADS_ENV, threads)
        pd_stage, _, _ = _chain(pd=pd)
        runs.append(pd_stage.process(photons, Batch(np.array([5, 6, 7]))))
    assert np.array_equal(runs[0], runs[1])
    e = runs[0]
    assert np.array_equal(e, np.broadcast_to(e[:, :1], e.shape))  # constant down columns
    assert not np.array_equal(e[0, 0], e[1, 0])


@pytest.mark.parametrize("raw", [{"demosaic": "bilinear"}, {"white_balance": "gray_world"}])
def test_raw_gives_the_same_rgb_for_batch_sizes_and_threads(monkeypatch, raw):
    """The raw stage runs groups of whole images on the threads (several groups per batch
    here): per-image steps (demosaic, auto gain, gray-world gains) see one image at a time."""
    monkeypatch.setattr(pipeline.stage, "TILE_ELEMENTS", 3 * H * W * 3)
    pd_stage, adc_stage, info = _chain()
    raw_stage = RawStage(RawStage.Params(auto_gain=True, **raw), index=2)
    raw_stage.setup(info)
    photons, index = _photons(20), np.arange(20)
    _, codes = _run((pd_stage, adc_stage, info), photons, index, 20)
    runs = []
    for threads in ("1", "2"):
        monkeypatch.setenv(THREADS_ENV, threads)
        for size in (1, 7, 20):
            parts = [
                raw_stage.process(codes[lo : lo + size], Batch(index[lo : lo + size]))
                for lo in range(0, 20, size)
            ]
            runs.append(np.concatenate(parts))
    for rgb in runs[1:]:
        assert np.array_equal(rgb, runs[0])

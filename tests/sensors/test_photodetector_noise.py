"""The photodetector's row/column fixed patterns, row noise, read-noise distributions and
dark-current non-uniformity, each against its equation (sensors/photodetector.py).

Variances are tested with the exact sampling law of a Gaussian sample variance:
``(n - 1) s² / σ² ~ χ²(n - 1)``, two-sided at probability 1e-4 (every seed fixed, so a
test cannot flake; a wrong σ² by 10 % at these n falls far outside). Distributions are
tested with scipy's Kolmogorov-Smirnov test against scipy.stats' own distributions.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

import pipeline.stage
from pipeline.stage import Batch, SignalInfo, StageError, Unit
from sensors import noise
from sensors.photodetector import PhotodetectorStage, shot_noise

ALPHA = 1e-4
QUIET = {
    "read_noise_e": 0.0,
    "dark_current_e_per_s": 0.0,
    "prnu_pct": 0.0,
    "dsnu_e": 0.0,
    "shot_noise": False,
    "output_dtype": "float64",
    "cfa": "mono",
    "qe_w": 1.0,
    "full_well_e": 1e9,
}


def _stage(h, w, seed=0, sensor_seed=None, cfa="mono", **params):
    stage = PhotodetectorStage(
        PhotodetectorStage.Params(**{**QUIET, "cfa": cfa, **params}),
        seed=seed,
        sensor_seed=sensor_seed,
    )
    stage.setup(SignalInfo(Unit.PHOTONS, (h, w, 3), np.float64, {}))
    return stage


def _frames(stage, count, photons_per_pixel=0.0, first=0):
    h, w = stage._out_shape[:2]
    photons = np.full((count, h, w, 3), photons_per_pixel / 3.0)
    return stage.process(photons, Batch(np.arange(first, first + count)))


def _assert_variance(sample_var, dof, expected_var):
    """``dof · s² / σ²`` lies inside the central 1 − ALPHA of χ²(dof)."""
    lo, hi = stats.chi2.ppf([ALPHA / 2, 1 - ALPHA / 2], dof) / dof
    ratio = sample_var / expected_var
    assert lo < ratio < hi, (sample_var, expected_var, lo, hi)


# -- read-noise distributions ------------------------------------------------------------
@pytest.mark.parametrize("lam", [-0.3, -1e-8, 0.0, 0.14, 1.0, 5.0])
def test_tukey_lambda_variance_formula_matches_scipy(lam):
    assert noise.variance("tukey_lambda", lam) == pytest.approx(
        stats.tukeylambda(lam).var(), rel=1e-9
    )


@pytest.mark.parametrize("nu", [2.5, 4.0, 30.0])
def test_student_t_variance_formula_matches_scipy(nu):
    assert noise.variance("student_t", nu) == pytest.approx(stats.t(nu).var(), rel=1e-12)


@pytest.mark.parametrize(
    ("dist", "shape", "reference"),
    [
        ("tukey_lambda", -0.2, stats.tukeylambda(-0.2)),
        ("tukey_lambda", 1e-9, stats.logistic()),
        ("tukey_lambda", 0.0, stats.logistic()),
        ("student_t", 4.0, stats.t(4.0)),
        ("gaussian", None, stats.norm()),
    ],
)
def test_read_noise_follows_the_distribution_scaled_to_read_noise_e(dist, shape, reference):
    read_e = 3.0
    stage = _stage(128, 128, read_noise_e=read_e, read_noise_dist=dist, read_noise_shape=shape)
    values = _frames(stage, 2).ravel()  # n = 32768 dark pixels: only read noise
    scale = read_e / math.sqrt(reference.var())
    assert stats.kstest(values / scale, reference.cdf).pvalue > ALPHA
    # the rms is read_noise_e: var(s²) = σ⁴ (2/(n-1) + excess kurtosis / n)
    n = values.size
    kurt = float(reference.stats(moments="k"))
    rel_sd = math.sqrt(2 / (n - 1) + kurt / n)
    assert np.var(values) == pytest.approx(read_e**2, rel=5 * rel_sd)
    if dist != "gaussian":  # the heavy tails are visible: a Gaussian of the same rms fails
        assert stats.kstest(values / read_e, stats.norm.cdf).pvalue < ALPHA


@pytest.mark.parametrize(
    ("dist", "shape"), [("gaussian", None), ("tukey_lambda", -0.2), ("student_t", 5.0)]
)
def test_a_draw_into_out_is_the_same_draw(dist, shape):
    """``out=`` only saves a copy: the same values, and the generator left in the same state."""
    a, b = np.random.default_rng(4), np.random.default_rng(4)
    out = np.empty((3, 5))
    got = noise.standard_draw(dist, shape, (3, 5), a, out)
    assert got is out
    np.testing.assert_array_equal(out, noise.standard_draw(dist, shape, (3, 5), b))
    assert a.random() == b.random()


@pytest.mark.parametrize("above", [None, 50.0])  # Poisson only; Poisson and N(λ, λ)
def test_shot_noise_into_out_is_the_same_draw(above):
    lam = np.linspace(0.0, 100.0, 24).reshape(4, 6)
    a, b = np.random.default_rng(8), np.random.default_rng(8)
    out = np.empty(lam.shape)
    assert shot_noise(lam, a, poisson_gaussian_above=above, out=out) is out
    np.testing.assert_array_equal(out, shot_noise(lam, b, poisson_gaussian_above=above))
    assert a.random() == b.random()


@pytest.mark.parametrize(
    ("dist", "shape", "fragment"),
    [
        ("student_t", 2.0, "ν > 2"),
        ("tukey_lambda", -0.5, "λ > -0.5"),
        ("tukey_lambda", None, "needs read_noise_shape"),
        ("gaussian", 3.0, "applies only to"),
    ],
)
def test_read_noise_shapes_without_finite_variance_are_refused(dist, shape, fragment):
    with pytest.raises(StageError, match=fragment) as err:
        _stage(8, 8, read_noise_e=1.0, read_noise_dist=dist, read_noise_shape=shape)
    assert err.value.key == "read_noise_shape"


def test_infinite_variance_read_noise_is_a_one_line_cli_error(tmp_path):
    from conftest import sensorlab

    config = Path(__file__).parents[2] / "configs" / "default.yaml"
    proc = sensorlab(
        "run",
        config,
        "--set",
        "sensor.photodetector.read_noise_dist=student_t",
        "--set",
        "sensor.photodetector.read_noise_shape=1.5",
        "--out",
        tmp_path / "runs",
        cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert "default.yaml: sensor[2].photodetector.read_noise_shape: student_t needs ν > 2" in line
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


# -- row and column fixed patterns ---------------------------------------------------------
def test_row_and_column_offsets_match_the_averaged_frames_row_and_column_means():
    # averaged dark frame ⟨y⟩ over L frames: row means vary by O_row² + σ_r²/(L·W)
    # (the column pattern averages to one constant over each row), column means by
    # O_col² + σ_r²/(L·H).
    h, w, frames, read_e = 512, 384, 8, 2.0
    row_e, col_e = 1.5, 0.8
    stage = _stage(h, w, read_noise_e=read_e, row_offset_fpn_e=row_e, col_offset_fpn_e=col_e)
    mean_frame = _frames(stage, frames).mean(axis=0)
    _assert_variance(np.var(mean_frame.mean(1), ddof=1), h - 1, row_e**2 + read_e**2 / (frames * w))
    _assert_variance(np.var(mean_frame.mean(0), ddof=1), w - 1, col_e**2 + read_e**2 / (frames * h))
    # a fixed pattern: the same on every image, for any run seed, per sensor seed
    other_run = _stage(h, w, seed=9, sensor_seed=0, row_offset_fpn_e=row_e, col_offset_fpn_e=col_e)
    assert np.array_equal(_frames(other_run, 1), _frames(other_run, 1, first=5))


def test_row_and_column_gains_match_a_flat_fields_row_and_column_means():
    # a flat field of S e⁻ (no temporal noise): row means S·(1 + G_row·r(y)), so their
    # variance is (S·G_row)²; the same for columns.
    h, w, signal = 400, 300, 1000.0
    for key, axis, n in (("row_gain_fpn_pct", 1, h), ("col_gain_fpn_pct", 0, w)):
        stage = _stage(h, w, **{key: 2.0})
        flat = _frames(stage, 1, signal)[0]
        _assert_variance(np.var(flat.mean(axis), ddof=1), n - 1, (signal * 0.02) ** 2)
        assert np.ptp(flat.mean(1 - axis)) < 1e-9  # nothing along the other axis


def test_patterns_are_independent_of_each_other():
    # each pattern has its own tag: turning on the column offset leaves the rows' pattern
    a = _frames(_stage(64, 48, row_offset_fpn_e=2.0), 1)[0]
    b = _frames(_stage(64, 48, row_offset_fpn_e=2.0, col_offset_fpn_e=1.0), 1)[0]
    assert np.allclose((b - a).std(axis=0), 0.0)  # b − a is a pure column pattern
    assert (b - a).std() > 0.5


def test_stacked_layers_have_their_own_row_pattern():
    out = _frames(_stage(64, 64, cfa="stacked", qe=1.0, row_offset_fpn_e=2.0), 1)[0]
    rows = out.mean(axis=1)  # (H, 3)
    assert np.allclose(out, rows[:, None, :])  # constant along each row, per layer
    assert abs(np.corrcoef(rows.T)[0, 1]) < 0.5


# -- row temporal noise -----------------------------------------------------------------------
def test_row_noise_variance_from_per_frame_row_means():
    # per-frame row means minus their average over frames: the fixed patterns cancel and
    # the temporal variance of a row mean is σ_row² + σ_r²/W, with H·(L − 1) dof.
    h, w, frames, read_e, row_e = 256, 256, 12, 2.0, 0.7
    stage = _stage(h, w, read_noise_e=read_e, row_noise_e=row_e, row_offset_fpn_e=3.0)
    row_means = _frames(stage, frames).mean(axis=2)  # (L, H)
    var = np.var(row_means, axis=0, ddof=1).mean()
    _assert_variance(var, h * (frames - 1), row_e**2 + read_e**2 / w)


def test_column_noise_variance_from_a_frames_column_means(monkeypatch):
    # one dark frame cut into many row bands (tiles): its column means over H rows vary by
    # σ_col² + σ_r²/H (W − 1 dof); per-frame column means minus their average over frames
    # by the same, with W·(L − 1) dof, while the column offset FPN cancels.
    h, w, frames, read_e, col_e = 256, 256, 12, 2.0, 0.7
    monkeypatch.setattr(pipeline.stage, "TILE_ELEMENTS", 16 * w)  # 16 tiles per frame
    params = {"read_noise_e": read_e, "col_noise_e": col_e, "col_offset_fpn_e": 3.0}
    y = _frames(_stage(h, w, **params), frames)
    expected = col_e**2 + read_e**2 / h
    one = _frames(_stage(h, w, read_noise_e=read_e, col_noise_e=col_e), 1)[0]
    _assert_variance(np.var(one.mean(axis=0), ddof=1), w - 1, expected)
    _assert_variance(np.var(y.mean(axis=1), axis=0, ddof=1).mean(), w * (frames - 1), expected)


def test_row_noise_is_per_image_and_batch_independent():
    stage = _stage(
        32,
        16,
        seed=3,
        read_noise_e=1.0,
        row_noise_e=2.0,
        read_noise_dist="student_t",
        read_noise_shape=5.0,
        row_gain_fpn_pct=1.0,
        dark_current_e_per_s=100.0,
        dark_current_nonuniformity_pct=30.0,
        shot_noise=True,
    )
    photons = np.full((4, 32, 16, 3), 300.0)
    whole = stage.process(photons, Batch(np.arange(4)))
    single = np.concatenate([stage.process(photons[i : i + 1], Batch([i])) for i in range(4)])
    assert np.array_equal(whole, single)
    assert not np.array_equal(whole[0], whole[1])


# -- dark-current non-uniformity --------------------------------------------------------------
def test_dark_current_nonuniformity_variance_grows_with_exposure_squared():
    # averaged dark frame over L frames: spatial variance (D·t·DCNU)² + D·t/L (shot noise),
    # so the pattern's variance scales as t², while the DSNU offset does not change with t.
    h = w = 96
    frames, dark, dcnu = 16, 2000.0, 0.2
    s2 = []
    for t in (0.01, 0.04):
        stage = _stage(
            h,
            w,
            dark_current_e_per_s=dark,
            dark_current_nonuniformity_pct=100 * dcnu,
            shot_noise=True,
            exposure_s=t,
        )
        y = _frames(stage, frames)
        mean_frame = y.mean(axis=0)
        temporal = np.var(y, axis=0, ddof=1).mean()
        assert temporal == pytest.approx(dark * t, rel=0.05)  # Poisson: variance = mean
        s2.append(np.var(mean_frame, ddof=1) - temporal / frames)
        _assert_variance(s2[-1], h * w - 1, (dark * t * dcnu) ** 2)
        assert mean_frame.mean() == pytest.approx(dark * t, rel=5 * dcnu / h)
    # the same pattern at both exposures: the ratio is 16 up to the temporal residue
    assert s2[1] / s2[0] == pytest.approx(16.0, rel=0.02)
    offsets = [np.var(_frames(_stage(h, w, dsnu_e=3.0, exposure_s=t), 1)[0]) for t in (0.01, 0.04)]
    assert offsets[0] == offsets[1]

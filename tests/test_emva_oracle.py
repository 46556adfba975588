"""Our EMVA 1288 analysis against the reference implementation (``emva1288`` on PyPI).

The same simulated frames (a mono sensor with row/column fixed patterns, through the
photodetector and ADC stages) go through :mod:`pipeline.emva` and through emva1288's
``Data1288`` / ``Results1288`` (the EMVA 1288 R4.0 equations as the standard's authors
implemented them). Where both use the same defining equation (σ_d, DSNU, PRNU and
their row/column parts, given K) the figures agree to rounding. K is a fit (ours:
through the origin over 0–70 % of saturation; emva1288: its own fit range), so it
may differ within the fit's uncertainty; on these frames both fits take the same
levels and agree to 0.1 %.

emva1288 1.0.2 imports under NumPy 2 but its line fit calls ``np.asfarray``, removed in
NumPy 2.0; the fixture lends it the exact NumPy 1 definition (``asarray`` with a float
dtype) while the reference figures are computed, and takes it back.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from emva1288.process import Data1288, Results1288
from emva1288.process.routines import get_int_imgs

from pipeline import emva
from pipeline.stage import Batch, SignalInfo, Unit
from sensors.adc import ADCStage
from sensors.photodetector import PhotodetectorStage

SIZE, SPATIAL_FRAMES, TEXP = 128, 16, 0.01


class _Sensor:
    def __init__(self) -> None:
        params = PhotodetectorStage.Params(
            cfa="mono",
            qe_w=0.6,
            full_well_e=10_000.0,
            read_noise_e=3.0,
            prnu_pct=1.0,
            dsnu_e=2.0,
            row_offset_fpn_e=2.0,
            col_offset_fpn_e=1.5,
            row_gain_fpn_pct=0.8,
            col_gain_fpn_pct=0.6,
        )
        self.pd = PhotodetectorStage(params, seed=11, index=0)
        self.adc = ADCStage(ADCStage.Params(bits=14), seed=11, index=1)
        self.adc.setup(self.pd.setup(SignalInfo(Unit.PHOTONS, (SIZE, SIZE, 3), np.float64)))
        self.next = 0

    def frames(self, photons: float, count: int) -> np.ndarray:
        """``count`` flat fields of ``photons`` per mono pixel (a third in each band)."""
        x = np.full((count, SIZE, SIZE, 3), photons / 3.0)
        batch = Batch(np.arange(self.next, self.next + count))
        self.next += count
        return self.adc.process(self.pd.process(x, batch), batch)


def _asfarray(a, dtype=np.float64):
    """NumPy 1's ``np.asfarray``: an array of a float dtype (float64 for anything else)."""
    dtype = np.dtype(dtype)
    return np.asarray(a, dtype=dtype if np.issubdtype(dtype, np.inexact) else np.float64)


@pytest.fixture(scope="module")
def measured():
    sensor = _Sensor()
    levels = np.linspace(0.0, 1.3 * 10_000 / 0.6, 30)
    pairs = {float(p): sensor.frames(p, 2) for p in levels}
    dark_spatial = sensor.frames(0.0, SPATIAL_FRAMES)
    bright_p = 0.5 * 10_000 / 0.6
    bright_spatial = sensor.frames(bright_p, SPATIAL_FRAMES)

    # the reference implementation, fed as its image loader would feed it
    def temporal(imgs):
        d = get_int_imgs(list(imgs))
        return {"sum": np.sum(d["sum"]), "pvar": np.sum(d["pvar"]), "dmean": d["dmean"]}

    data = {
        "width": SIZE,
        "height": SIZE,
        "temporal": {TEXP: {p: temporal(f) for p, f in pairs.items()}},
        "spatial": {
            TEXP: {
                0.0: get_int_imgs(list(dark_spatial)),
                bright_p: get_int_imgs(list(bright_spatial)),
            }
        },
    }
    results = Results1288(Data1288(data).data, loglevel=40)
    names = ["K", "QE", "sigma_d", "DSNU1288", "PRNU1288", "PRNU1288_row", "PRNU1288_col"]
    names += ["DSNU1288_row", "DSNU1288_col", "s_2_y_row_dark", "s_2_y_col_dark"]
    names += ["s_2_y_pixel_dark"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(np, "asfarray", _asfarray, raising=False)
        reference = SimpleNamespace(**{name: float(getattr(results, name)) for name in names})

    # ours, on the same frames
    stats = np.array([emva.pair_statistics(*pairs[float(p)]) for p in levels])
    dark_mu, dark_var = stats[0]
    ours = emva.photon_transfer(levels[1:], stats[1:, 0], stats[1:, 1], dark_mu, dark_var)
    k = ours.system_gain_dn_per_e
    dsnu_e, prnu_pct = emva.nonuniformity(dark_spatial, bright_spatial, k)
    dark = emva.spatial_decomposition(dark_spatial)
    bright = emva.spatial_decomposition(bright_spatial)
    return reference, ours, dsnu_e, prnu_pct, dark, bright


def test_system_gain_and_dark_noise_match_the_reference(measured):
    reference, ours, *_ = measured
    k = ours.system_gain_dn_per_e
    assert k == pytest.approx(reference.K, rel=1e-3)
    assert ours.quantum_efficiency * 100 == pytest.approx(reference.QE, rel=1e-3)
    # σ_d = sqrt(σ²_y.dark − 1/12) / K: identical given K
    assert ours.sigma_d_e * k == pytest.approx(reference.sigma_d * reference.K, rel=1e-9)


def test_dsnu_and_prnu_match_the_reference(measured):
    reference, ours, dsnu_e, prnu_pct, _, _ = measured
    k = ours.system_gain_dn_per_e
    assert dsnu_e * k == pytest.approx(reference.DSNU1288 * reference.K, rel=1e-9)
    assert prnu_pct == pytest.approx(reference.PRNU1288, rel=1e-9)


def test_row_column_decomposition_matches_the_reference(measured):
    # the reference has no row temporal noise term; without row noise ours estimates it
    # near 0, and the parts agree within that estimate's share (σ²_row.t / L)
    reference, ours, _, _, dark, bright = measured
    slack = 5 * dark.temporal_dn2 / (SIZE * SPATIAL_FRAMES) * np.sqrt(2 / SIZE)
    assert dark.row_dn2 == pytest.approx(reference.s_2_y_row_dark, abs=slack)
    assert dark.col_dn2 == pytest.approx(reference.s_2_y_col_dark, abs=slack)
    assert dark.pixel_dn2 == pytest.approx(reference.s_2_y_pixel_dark, rel=0.01)
    lines = emva.line_nonuniformity(dark, bright, ours.system_gain_dn_per_e)
    assert lines["row_gain_fpn_pct"] == pytest.approx(reference.PRNU1288_row, rel=0.02)
    assert lines["col_gain_fpn_pct"] == pytest.approx(reference.PRNU1288_col, rel=0.02)
    k_ratio = reference.K / ours.system_gain_dn_per_e
    assert lines["row_offset_fpn_e"] == pytest.approx(reference.DSNU1288_row * k_ratio, rel=0.02)
    assert lines["col_offset_fpn_e"] == pytest.approx(reference.DSNU1288_col * k_ratio, rel=0.02)
    # and both recover the configured sensor (one pattern: 128 rows, ±6 % per rms)
    assert lines["row_offset_fpn_e"] == pytest.approx(2.0, rel=0.2)
    assert lines["col_gain_fpn_pct"] == pytest.approx(0.6, rel=0.2)

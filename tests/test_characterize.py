"""``sensorlab characterize``: the EMVA 1288 datasheet recovers the configured sensor.

The recovery test compares the datasheet with the configured parameters and, for the
saturation capacity, with what the EMVA definition (the maximum of the temporal
variance) gives for this sensor by the equations: the variance of a Gaussian signal
censored at the full well, averaged over the PRNU and DSNU distributions. That point
lies a few shot-noise sigmas below the full well, not at it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import ToScene, sensorlab
from numpy.polynomial.hermite_e import hermegauss
from scipy.stats import norm

from pipeline.characterize import (
    DATASHEET_JSON,
    PHOTON_TRANSFER_PNG,
    SNR_PNG,
    characterize_config,
    characterize_stages,
)
from pipeline.cli import main
from pipeline.cli.characterize import summary
from pipeline.errors import UserError
from pipeline.registry import Registry
from sensors.adc import ADCStage
from sensors.photodetector import PhotodetectorStage

QE, FW, READ, DARK, T, PRNU, DSNU, K = 0.6, 20_000.0, 5.0, 50.0, 0.02, 0.5, 1.5, 0.18
SIZE = 128  # 16384 pixels per frame


def _stages(cfa="mono", seed=3, **pd_changes):
    pd = {
        "cfa": cfa,
        "qe": (0.45, 0.6, 0.5),
        "qe_w": QE,
        "full_well_e": FW,
        "read_noise_e": READ,
        "dark_current_e_per_s": DARK,
        "exposure_s": T,
        "prnu_pct": PRNU,
        "dsnu_e": DSNU,
    } | pd_changes
    photodetector = PhotodetectorStage(PhotodetectorStage.Params(**pd), seed=seed, index=0)
    adc = ADCStage(ADCStage.Params(bits=12, system_gain_dn_per_e=K), seed=seed, index=1)
    return photodetector, adc


def _emva_saturation_e() -> float:
    """η μ_p at the maximum of the model's mean temporal variance (e⁻).

    A pixel's charge before the full-well clip is Gaussian N(λ + o, λ) with
    λ = η μ_p g + dark·t (shot noise of mean λ ≥ 1e4: Gaussian to 1 %), g = 1 + PRNU z₁,
    o = DSNU z₂; the variance of min(X, FW) is the censored-normal variance, averaged
    over z₁, z₂ by Gauss–Hermite quadrature. Read noise is added after the clip and
    does not move the maximum.
    """

    def censored_var(m, s, c):
        a = (c - m) / s
        cdf, pdf = norm.cdf(a), norm.pdf(a)
        mean = m * cdf - s * pdf + c * (1 - cdf)
        mean_sq = m**2 * cdf - 2 * m * s * pdf + s**2 * (cdf - a * pdf) + c**2 * (1 - cdf)
        return mean_sq - mean**2

    z, w = hermegauss(40)
    w = w / w.sum()
    weights = w[:, None] * w[None, :]
    gain = 1 + PRNU / 100 * z[:, None]
    offset = DSNU * z[None, :]

    def mean_var(mu_p):
        lam = QE * mu_p * gain + DARK * T
        return float(np.sum(weights * censored_var(lam + offset, np.sqrt(lam), FW)))

    mu_p = np.linspace(0.9 * FW / QE, 1.02 * FW / QE, 2401)
    return QE * mu_p[np.argmax([mean_var(m) for m in mu_p])]


def test_datasheet_recovers_the_configured_sensor():
    sheet = characterize_stages(*_stages(), size=SIZE, levels=30)
    ch = sheet["channels"]["W"]
    assert list(sheet["channels"]) == ["W"] and ch["pixels"] == SIZE * SIZE
    sigma_d = math.sqrt(READ**2 + DARK * T)  # read noise and dark-current shot noise
    assert ch["system_gain_dn_per_e"] == pytest.approx(K, rel=0.02)
    assert ch["temporal_dark_noise_e"] == pytest.approx(sigma_d, rel=0.02)
    assert not ch["temporal_dark_noise_is_upper_bound"] and ch["notes"] == []
    assert ch["quantum_efficiency_pct"] == pytest.approx(100 * QE, rel=0.02)
    # saturation: within 5 % of the full well, and within 2 % of the EMVA point (the
    # variance maximum) that the model equations put 2.5 % below it
    emva_sat = _emva_saturation_e()
    assert emva_sat == pytest.approx(0.975 * FW, rel=0.005)
    assert ch["saturation_capacity_e"] == pytest.approx(FW, rel=0.05)
    assert ch["saturation_capacity_e"] == pytest.approx(emva_sat, rel=0.02)
    # dark signal: dark current × exposure; 5 sigma from the mean of 8 dark frames of n
    # pixels (temporal σ_d and the DSNU pattern's sample mean)
    n = SIZE * SIZE
    tol = 5 * math.sqrt(sigma_d**2 / (8 * n) + DSNU**2 / n) + 0.02 * DARK * T
    assert ch["dark_signal_e"] == pytest.approx(DARK * T, abs=tol)
    # DSNU and PRNU: spatial std of 16 averaged frames; relative std of the estimate
    # ≈ sqrt(2/n)·(s² + 2σ²/L) / (2 s²), at most 2 % here; 5 sigma = 10 %
    assert ch["dsnu_e"] == pytest.approx(DSNU, rel=0.1)
    assert ch["prnu_pct"] == pytest.approx(PRNU, rel=0.1)
    # derived figures follow their EMVA definitions from the measured values
    k, s_d = ch["system_gain_dn_per_e"], ch["temporal_dark_noise_e"]
    mu_e_min = math.sqrt(s_d**2 + 1 / 12 / k**2 + 0.25) + 0.5
    assert ch["absolute_sensitivity_threshold_e"] == pytest.approx(mu_e_min)
    assert ch["dynamic_range"] == pytest.approx(ch["saturation_capacity_e"] / mu_e_min)
    assert ch["snr_max"] == pytest.approx(math.sqrt(ch["saturation_capacity_e"]), rel=0.01)
    assert ch["snr_max_db"] == pytest.approx(20 * math.log10(ch["snr_max"]))
    # the measured SNR curve follows the EMVA SNR formula with the configured values
    c = ch["curves"]
    mu_p, snr = np.array(c["mu_p_photons"]), np.array(c["snr"])
    below = (mu_p > 0) & (mu_p < 0.7 * FW / QE)
    model = QE * mu_p / np.sqrt(sigma_d**2 + 1 / 12 / K**2 + QE * mu_p)
    # relative std of a measured SNR ≈ half that of the variance, sqrt(2/(n-1))/2
    assert snr[below] == pytest.approx(model[below], rel=5 * math.sqrt(2 / (n - 1)) / 2 + 0.01)
    assert below.sum() >= 10 and len(mu_p) >= 30  # ≥ 10 levels below saturation


@pytest.mark.parametrize("cfa", ["RGGB", "RGBW"])
def test_colour_channels_recover_their_quantum_efficiency(cfa):
    sheet = characterize_stages(*_stages(cfa), size=SIZE)
    emva_sat = _emva_saturation_e()
    qe = {"R": 0.45, "G": 0.6, "B": 0.5, "W": QE}
    assert set(sheet["channels"]) == ({"R", "G", "B", "W"} if cfa == "RGBW" else {"R", "G", "B"})
    for colour, ch in sheet["channels"].items():
        # 4096 pixels (R, B of RGGB) to 8192 (W): 3 % is at least 4 sigma of the K fit
        assert ch["system_gain_dn_per_e"] == pytest.approx(K, rel=0.03), colour
        assert ch["quantum_efficiency_pct"] / 100 == pytest.approx(qe[colour], rel=0.03), colour
        # the EMVA saturation point in e- does not depend on η (a W pixel reaches it at a
        # third of the photons per band); the argmax over noisier 4096-pixel variances
        # wanders more than in the mono test: within 5 % of the model point
        assert ch["saturation_capacity_e"] == pytest.approx(emva_sat, rel=0.05), colour
    assert sheet["sensor"]["cfa"] == cfa and sheet["method"]["frame_size"] == [SIZE, SIZE]


def test_quantisation_limited_dark_noise_is_noted():
    # K = 0.05 DN/e-: 2 e- of read noise is 0.1 DN, far below one code
    pd, _ = _stages(read_noise_e=2.0, dark_current_e_per_s=0.0, dsnu_e=0.0)
    adc = ADCStage(ADCStage.Params(bits=10, system_gain_dn_per_e=0.05), index=1)
    ch = characterize_stages(pd, adc, size=32, levels=12)["channels"]["W"]
    # a zero signal sits on the floor ADC's code edge (mean code b - 1/2): the codes flip
    # between b - 1 and b, a variance near 1/4 DN² that is not the 1/12 DN² model's
    assert "temporal_dark_noise_e is unreliable" in ch["notes"][0]
    assert ch["temporal_dark_noise_e"] > 3 * 2.0  # what the note warns about
    # every dark figure is then below the quantisation floor too, and says so
    (floor,) = [note for note in ch["notes"] if "below the quantisation noise" in note]
    for key in ("dsnu_e", "row_offset_fpn_e", "col_offset_fpn_e", "row_temporal_noise_e"):
        assert f"{key} (" in floor, key


@pytest.mark.parametrize("bits", [10, 14])
def test_dsnu_below_the_quantisation_floor_carries_a_note(bits):
    # the default sensor (read noise 2 e-, DSNU 0.5 e-) with the full well at the top code:
    # at 10 bits one code is ~9 e-, so DSNU is 0.05 DN and read noise does not dither the
    # quantiser; at 14 bits both are resolved and the figure is right
    pd = PhotodetectorStage(PhotodetectorStage.Params(cfa="mono"), seed=1, index=0)
    adc = ADCStage(ADCStage.Params(bits=bits), seed=1, index=1)
    ch = characterize_stages(pd, adc, size=64, levels=12)["channels"]["W"]
    dsnu_notes = [note for note in ch["notes"] if "dsnu_e (" in note]
    if bits == 10:
        assert len(dsnu_notes) == 1 and "below the quantisation noise" in dsnu_notes[0]
    else:
        assert ch["notes"] == []
        # 4096 pixels, 16 averaged frames: relative std of the DSNU estimate ≈ 4 %
        assert ch["dsnu_e"] == pytest.approx(0.5, rel=0.2)


FPN = {
    "row_offset_fpn_e": 1.0,
    "col_offset_fpn_e": 0.8,
    "row_gain_fpn_pct": 0.5,
    "col_gain_fpn_pct": 0.4,
    "row_noise_e": 0.7,
}


def _fpn_sheet(cfa, size):
    pd = PhotodetectorStage(PhotodetectorStage.Params(cfa=cfa, **FPN), seed=2, index=0)
    adc = ADCStage(ADCStage.Params(bits=14), seed=2, index=1)
    return characterize_stages(pd, adc, size=size, levels=12)


def _assert_fpn_recovered(ch, colour):
    # within 10 %: one sensor's pattern of M rows has an rms that scatters by
    # sqrt(1/(2(M-1))) around the configured one, 4.4 % at M = 256 (2.3 sigma)
    for key, configured in FPN.items():
        measured = ch["row_temporal_noise_e" if key == "row_noise_e" else key]
        assert measured == pytest.approx(configured, rel=0.1), (colour, key)
    assert ch["dsnu_pixel_e"] == pytest.approx(0.5, rel=0.1)  # the default DSNU
    assert ch["prnu_pixel_pct"] == pytest.approx(0.5, rel=0.1)  # the default PRNU


def test_row_and_column_fpn_and_row_noise_are_recovered():
    sheet = _fpn_sheet("mono", 256)
    ch = sheet["channels"]["W"]
    _assert_fpn_recovered(ch, "W")
    # the total DSNU holds the row and column parts too: DSNU² = row² + col² + pixel²
    parts = ch["row_offset_fpn_e"] ** 2 + ch["col_offset_fpn_e"] ** 2 + ch["dsnu_pixel_e"] ** 2
    assert ch["dsnu_e"] ** 2 == pytest.approx(parts, rel=0.02)
    text = summary(sheet, Path("sheet"))
    assert f"row {ch['row_offset_fpn_e']:.3g}, col {ch['col_offset_fpn_e']:.3g}" in text
    assert f"row noise {ch['row_temporal_noise_e']:.3g} e-" in text


@pytest.mark.slow
def test_row_and_column_fpn_are_recovered_per_bayer_colour():
    # per colour, from its CFA phases: 256 rows each at 512×512
    for colour, ch in _fpn_sheet("RGGB", 512)["channels"].items():
        _assert_fpn_recovered(ch, colour)


def test_companding_adc_is_refused():
    pd, _ = _stages()
    adc = ADCStage(ADCStage.Params(bits=12, curve="sqrt"))
    with pytest.raises(UserError, match="linear ADC curve") as err:
        characterize_stages(pd, adc, size=32)
    assert err.value.key == "adc.curve"
    with pytest.raises(UserError, match="levels"):
        characterize_stages(*_stages(), size=32, levels=5)


# -- from a config: Python API and the command line ------------------------------------
def _config(dataset, out, **adc):
    return {
        "seed": 5,
        "dataset": {"kind": "npz", "path": str(dataset)},
        "sensor": [
            {"stage": "toy_scene"},
            {
                "stage": "photodetector",
                "cfa": "mono",
                "read_noise_e": 4.0,
                "full_well_e": 8000,
                "exposure_s": 0.01,
            },
            {"stage": "adc", "bits": 12, **adc},
        ],
        "run": {"out": str(out)},
    }


@pytest.fixture
def registry():
    return Registry([ToScene, PhotodetectorStage, ADCStage], entry_points=False)


def test_characterize_config_writes_a_datasheet_folder_atomically(registry, npz_dataset, tmp_path):
    folder, sheet = characterize_config(
        _config(npz_dataset, tmp_path / "runs"), size=32, levels=12, registry=registry
    )
    assert folder == tmp_path / "runs" / "characterize-sensor"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [DATASHEET_JSON, PHOTON_TRANSFER_PNG, SNR_PNG]
    )
    on_disk = json.loads((folder / DATASHEET_JSON).read_text())
    assert (
        on_disk["channels"]["W"]["system_gain_dn_per_e"]
        == sheet["channels"]["W"]["system_gain_dn_per_e"]
    )
    assert on_disk["config"]["seed"] == 5 and on_disk["sensor"]["sensor_seed"] == 5
    fpn_keys = ("row_offset_fpn_e", "col_offset_fpn_e", "row_gain_fpn_pct", "col_gain_fpn_pct")
    for key in (*fpn_keys, "row_temporal_noise_e", "dsnu_pixel_e", "prnu_pixel_pct"):
        assert on_disk["channels"]["W"][key] == sheet["channels"]["W"][key] >= 0, key
    assert (folder / SNR_PNG).stat().st_size > 5000
    # the default gain maps the full well to the top code: K = (4095 - 256) / 8000; at
    # 32×32 pixels and 12 levels one level's variance has a relative std of 4.4 %, so
    # the fit is good to a few % only (precision is the recovery test's job)
    assert on_disk["channels"]["W"]["system_gain_dn_per_e"] == pytest.approx(3839 / 8000, rel=0.1)
    # a second run replaces the datasheet; no temporary folder is left behind
    characterize_config(
        _config(npz_dataset, tmp_path / "runs"), size=32, levels=12, registry=registry
    )
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["characterize-sensor"]


def test_characterize_config_errors_name_file_and_key(registry, npz_dataset, tmp_path):
    with pytest.raises(UserError) as err:
        characterize_config(_config(npz_dataset, tmp_path, curve="log"), size=32, registry=registry)
    assert err.value.key == "sensor[2].adc.curve" and err.value.file == "<dict>"
    cfg = _config(npz_dataset, tmp_path)
    cfg["sensor"] = cfg["sensor"][:2]
    with pytest.raises(UserError, match="adc stage"):
        characterize_config(cfg, size=32, registry=registry)
    (tmp_path / "keep").mkdir()
    with pytest.raises(UserError, match="not a datasheet folder"):
        characterize_config(
            _config(npz_dataset, tmp_path), out=tmp_path / "keep", size=32, registry=registry
        )
    assert list((tmp_path / "keep").iterdir()) == []
    assert not list(tmp_path.glob(".*partial*"))


def test_cli_characterize(plugin_dir, npz_dataset, tmp_path, capsys):
    cfg = _config(npz_dataset, tmp_path / "runs")
    cfg["sensor"][0] = {"stage": "plug_photons"}  # IMAGE → PHOTONS, from the plugin
    path = tmp_path / "sensor.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "sheet"
    args = ("characterize", path, "--out", out, "--size", 32, "--levels", 12)
    done = sensorlab(*args, cwd=tmp_path, plugin=plugin_dir)
    assert done.returncode == 0, done.stderr
    assert "K " in done.stdout and str(out) in done.stdout
    assert (out / DATASHEET_JSON).is_file() and (out / PHOTON_TRANSFER_PNG).is_file()
    # a bad input is one line and exit status 2 (in-process: no second interpreter)
    status = main(["characterize", str(tmp_path / "missing.yaml"), "--size", "32"])
    assert status == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "missing.yaml: file not found" in err

"""Energy per conversion from the Walden and Schreier figures of merit."""

from __future__ import annotations

import math

import pytest

from pipeline.design.energy import (
    BOLTZMANN_J_PER_K,
    pixel_energy_pj,
    schreier_energy_j,
    thermal_limit_energy_j,
    walden_energy_j,
)
from pipeline.design.spec import EnergyOptions


def test_walden_energy_is_the_fom_times_the_conversion_steps():
    # 10 fJ/step at 10 bits: 1024 steps, 10.24 pJ
    assert walden_energy_j(10, 10e-15) == pytest.approx(10.24e-12)
    assert walden_energy_j(5, 1.0) / walden_energy_j(4, 1.0) == 2.0


def test_schreier_energy_inverts_the_fom_definition():
    # FOM_S = SNDR + 10 log10(f_s / (2 P)), E = P / f_s
    e = schreier_energy_j(10, 175.0)
    sndr = 6.02 * 10 + 1.76
    assert sndr + 10 * math.log10(1 / (2 * e)) == pytest.approx(175.0)
    assert schreier_energy_j(9, 175.0) / schreier_energy_j(8, 175.0) == pytest.approx(
        10**0.602
    )  # four times per bit


def test_the_thermal_limit_is_the_schreier_fom_of_minus_ten_log_16kt():
    fom = -10 * math.log10(16 * BOLTZMANN_J_PER_K * 300.0)
    assert fom == pytest.approx(191.8, abs=0.05)
    for enob in (4, 8, 12):
        assert schreier_energy_j(enob, fom) == pytest.approx(thermal_limit_energy_j(enob))


def test_pixel_energy_adds_the_readout_per_bit_and_uses_the_enob():
    opts = EnergyOptions(
        fom="walden", walden_fj_per_step=50, readout_pj_per_bit=0.5, enob_loss_bits=1
    )
    adc, readout = pixel_energy_pj(6, opts)
    assert adc == pytest.approx(50e-3 * 2**5)
    assert readout == pytest.approx(3.0)
    adc_s, _ = pixel_energy_pj(6, EnergyOptions(fom="schreier", schreier_db=170))
    assert adc_s == pytest.approx(schreier_energy_j(6, 170) * 1e12)

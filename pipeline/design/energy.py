"""Energy per pixel of an N-bit readout: the ADC's conversion plus moving the bits out.

The conversion energy ``E = P / f_s`` (joules per conversion) follows from an ADC figure
of merit, as ADC surveys tabulate it (B. Murmann, "ADC Performance Survey 1997–2024",
https://github.com/bmurmann/ADC-survey):

- Walden (R. H. Walden, IEEE J. Sel. Areas Commun. 17 (1999) 539), in J per conversion
  step, ``FOM_W = P / (2**ENOB · f_s)``, so ::

      E = FOM_W · 2**ENOB

- Schreier (R. Schreier, G. C. Temes, "Understanding Delta-Sigma Data Converters",
  Wiley 2005), in dB, ``FOM_S = SNDR + 10 log10(f_s / (2 P))`` (bandwidth ``f_s / 2``,
  a Nyquist converter), so ::

      E = 10**((SNDR − FOM_S) / 10) / 2,     SNDR = 6.02 · ENOB + 1.76 dB

  i.e. ``E = 0.75 · 2**(2 ENOB) · 10**(−FOM_S / 10)`` J: the energy quadruples per bit,
  as a thermal-noise-limited converter's does. At the thermal limit ``E = 8 kT · SNR``
  (B. Murmann, "Energy limits in A/D converters", IEEE Faible Tension Faible
  Consommation, 2013) the Schreier FOM is ``−10 log10(16 kT)`` ≈ 191.8 dB at 300 K.

ENOB is the nominal resolution ``N`` less ``enob_loss_bits``; a table ADC uses all
``2**N`` codes, so its effective resolution is taken as ``N`` too. The readout adds
``readout_pj_per_bit · N`` per pixel (column bus, serialiser, I/O).
"""

from __future__ import annotations

from pipeline.design.spec import EnergyOptions

__all__ = [
    "BOLTZMANN_J_PER_K",
    "pixel_energy_pj",
    "schreier_energy_j",
    "thermal_limit_energy_j",
    "walden_energy_j",
]

BOLTZMANN_J_PER_K = 1.380649e-23  # exact (SI 2019)


def walden_energy_j(enob_bits: float, fom_j_per_step: float) -> float:
    """Conversion energy from the Walden FOM: ``FOM_W · 2**ENOB``, joules."""
    return float(fom_j_per_step) * 2.0 ** float(enob_bits)


def schreier_energy_j(enob_bits: float, fom_db: float) -> float:
    """Conversion energy from the Schreier FOM: ``10**((SNDR − FOM_S)/10) / 2``, joules,
    with ``SNDR = 6.02 · ENOB + 1.76`` dB."""
    sndr_db = 6.02 * float(enob_bits) + 1.76
    return 10.0 ** ((sndr_db - float(fom_db)) / 10.0) / 2.0


def thermal_limit_energy_j(enob_bits: float, temperature_k: float = 300.0) -> float:
    """The thermal-noise bound ``8 kT · SNR`` (Murmann 2013), joules, with the ideal
    quantiser's ``SNR = 10**((6.02 · ENOB + 1.76) / 10)``."""
    snr = 10.0 ** ((6.02 * float(enob_bits) + 1.76) / 10.0)
    return 8.0 * BOLTZMANN_J_PER_K * float(temperature_k) * snr


def pixel_energy_pj(bits: int, options: EnergyOptions) -> tuple[float, float]:
    """``(adc_pj, readout_pj)``: one pixel's conversion and readout energy, picojoules.

    Parameters
    ----------
    bits : the ADC's nominal resolution ``N``.
    options : the figure of merit (Walden fJ/step or Schreier dB), ENOB loss and readout
        energy per bit.
    """
    enob = max(float(bits) - options.enob_loss_bits, 0.0)
    if options.fom == "walden":
        adc_j = walden_energy_j(enob, options.walden_fj_per_step * 1e-15)
    else:
        adc_j = schreier_energy_j(enob, options.schreier_db)
    return adc_j * 1e12, options.readout_pj_per_bit * bits

"""Colour correction matrix (CCM) fitted on the ColorChecker, and its colour error ΔE2000.

A sensor's R, G, B responses to the 24 ColorChecker patches under an illuminant are
(patch reflectance × illuminant photons) integrated with its QE curves
(:func:`sensors.spectral.integrate_bands`). The CCM M is the 3×3 matrix whose
``xyz ≈ M @ rgb`` is closest, by least squares over the patches, to the patches' CIE
XYZ under the same illuminant (colour-science's ``sd_to_XYZ``, CIE 1931 2° observer,
ASTM E308; white Y = 1). The colour error is CIE ΔE2000 between the corrected and the
true colours in CIELAB relative to the illuminant's white (colour's ``XYZ_to_Lab`` and
``delta_E``). A sensor that meets the Luther condition (QE curves a linear combination
of the colour-matching functions) gets ΔE ≈ 0; real filters do not.

The white balance is inside M (a general 3×3 matrix); M's rows map camera RGB to XYZ,
so linear sRGB is ``XYZ_to_sRGB @ M`` (a later step of the raw stage).

References
----------
ISO 17321-1:2012, Graphic technology and photography — Colour characterisation of
digital still cameras (DSCs), section 5 (the least-squares matrix on a target).
G. Sharma, W. Wu, E. N. Dalal, "The CIEDE2000 color-difference formula", Color Res.
Appl. 30(1), 2005.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from sensors import spectra
from sensors.spectral import integrate_bands

__all__ = ["ChartFit", "chart_camera_rgb", "chart_xyz", "delta_e2000", "fit_ccm", "fit_chart"]

CMFS = "CIE 1931 2 Degree Standard Observer"


def chart_camera_rgb(
    qe_curves: np.ndarray, light_photons: np.ndarray, reflectances: np.ndarray
) -> np.ndarray:
    """Mean electrons of R, G, B photosites for each patch, up to one overall scale.

    Parameters
    ----------
    qe_curves : (3, B) QE of R, G, B at the band centres, e⁻/photon.
    light_photons : (B,) the illuminant's photons per band.
    reflectances : (P, B) the patches' reflectances.

    Returns
    -------
    (P, 3) float64.
    """
    return integrate_bands(reflectances * light_photons, qe_curves)


def chart_xyz(illuminant: str, chart: str = "BabelColor Average") -> tuple[np.ndarray, np.ndarray]:
    """CIE XYZ of the chart's patches under the illuminant (white Y = 1), and the white's.

    colour's ``sd_to_XYZ`` (ASTM E308, CIE 1931 2°) on the patches' full measured range.

    Returns
    -------
    ((24, 3) XYZ of the patches, (3,) XYZ of the perfect white reflector), new arrays.
    """
    xyz, white = _chart_xyz(illuminant, chart)
    return xyz.copy(), white.copy()


@functools.lru_cache(maxsize=32)
def _chart_xyz(illuminant: str, chart: str) -> tuple[np.ndarray, np.ndarray]:
    import colour

    light = colour.SDS_ILLUMINANTS[illuminant]
    cmfs = colour.MSDS_CMFS[CMFS]
    patches = list(colour.SDS_COLOURCHECKERS[chart].values())
    white = colour.sd_ones(patches[0].shape)  # the perfect white, on the patches' range
    # colour reports each alignment of illuminant and CMFs to the data's range as a warning
    with colour.utilities.suppress_warnings(colour_runtime_warnings=True):
        xyz = np.stack([colour.sd_to_XYZ(sd, cmfs, light) for sd in patches]) / 100.0
        white_xyz = colour.sd_to_XYZ(white, cmfs, light) / 100.0
    return xyz, white_xyz


def fit_ccm(camera_rgb: np.ndarray, target_xyz: np.ndarray) -> np.ndarray:
    """The 3×3 M minimising Σ_patches |M·rgb − xyz|² (ordinary least squares).

    Parameters
    ----------
    camera_rgb : (P, 3) camera responses, P ≥ 3.
    target_xyz : (P, 3) the colours they should become.

    Returns
    -------
    (3, 3) M, applied as ``xyz = M @ rgb`` (``camera_rgb @ M.T`` for rows).
    """
    solution, *_ = np.linalg.lstsq(np.asarray(camera_rgb), np.asarray(target_xyz), rcond=None)
    return solution.T


def delta_e2000(xyz: np.ndarray, reference_xyz: np.ndarray, white_xyz: np.ndarray) -> np.ndarray:
    """CIEDE2000 between two sets of XYZ colours, in CIELAB relative to ``white_xyz``.

    colour's ``XYZ_to_Lab`` (white given as its xy chromaticity and Y scale 1) and
    ``delta_E(method="CIE 2000")``.

    Returns
    -------
    (P,) ΔE2000 per colour.
    """
    import colour

    white_xy = colour.XYZ_to_xy(np.asarray(white_xyz) / white_xyz[1])
    lab = colour.XYZ_to_Lab(np.asarray(xyz) / white_xyz[1], white_xy)
    lab_ref = colour.XYZ_to_Lab(np.asarray(reference_xyz) / white_xyz[1], white_xy)
    return np.asarray(colour.delta_E(lab, lab_ref, method="CIE 2000"))


@dataclasses.dataclass(frozen=True)
class ChartFit:
    """A CCM fitted on the ColorChecker and its colour error.

    Attributes
    ----------
    ccm : (3, 3) camera RGB → XYZ (white Y = 1).
    delta_e : (24,) ΔE2000 of each patch after the CCM.
    patches : the patch names, in order.
    """

    ccm: np.ndarray
    delta_e: np.ndarray
    patches: tuple[str, ...]

    @property
    def mean_delta_e(self) -> float:
        """Mean ΔE2000 over the 24 patches."""
        return float(self.delta_e.mean())

    @property
    def max_delta_e(self) -> float:
        """Largest ΔE2000 of a patch."""
        return float(self.delta_e.max())


def fit_chart(
    qe_curves: np.ndarray,
    bands_nm: np.ndarray,
    *,
    illuminant: str = "D65",
    chart: str = "BabelColor Average",
) -> ChartFit:
    """Fit the CCM of a sensor on the ColorChecker under an illuminant, without noise.

    Parameters
    ----------
    qe_curves : (3, B) R, G, B QE curves on ``bands_nm`` (e.g. rows 0–2 of
        :func:`sensors.spectral.qe_curves`).
    bands_nm : band centres, nm.
    illuminant : a colour.SDS_ILLUMINANTS name.
    chart : a colour.SDS_COLOURCHECKERS name.

    Returns
    -------
    :class:`ChartFit`: the CCM and each patch's ΔE2000 after it.
    """
    reflectances, names = spectra.colourchecker_reflectances(chart, bands_nm)
    light = spectra.illuminant_photons(illuminant, bands_nm)
    rgb = chart_camera_rgb(np.asarray(qe_curves)[:3], light, reflectances)
    target, white = chart_xyz(illuminant, chart)
    ccm = fit_ccm(rgb, target)
    return ChartFit(ccm, delta_e2000(rgb @ ccm.T, target, white), names)

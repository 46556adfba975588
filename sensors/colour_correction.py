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

__all__ = [
    "ChartFit",
    "ccm_noise_gain",
    "chart_camera_rgb",
    "chart_xyz",
    "delta_e2000",
    "fit_ccm",
    "fit_chart",
    "srgb_ccm",
    "vora_trussell_mu",
    "xyz_to_linear_srgb",
]

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


def xyz_to_linear_srgb(xyz: np.ndarray, white_xyz: np.ndarray) -> np.ndarray:
    """XYZ seen under the white ``white_xyz`` → linear sRGB (D65), white → (1, 1, 1)·Y_w.

    A Bradford chromatic adaptation from ``white_xyz`` to sRGB's D65 white (colour's
    ``chromatic_adaptation_VonKries``, ``transform="Bradford"``), then sRGB's XYZ → RGB
    matrix (IEC 61966-2-1). No transfer curve, no clipping.

    Returns
    -------
    (..., 3) float64.
    """
    import colour

    srgb = colour.RGB_COLOURSPACES["sRGB"]
    d65 = colour.xy_to_XYZ(srgb.whitepoint) * white_xyz[1]
    adapted = colour.adaptation.chromatic_adaptation_VonKries(
        np.asarray(xyz), white_xyz, d65, transform="Bradford"
    )
    return adapted @ np.asarray(srgb.matrix_XYZ_to_RGB).T


def srgb_ccm(
    qe_curves: np.ndarray,
    bands_nm: np.ndarray,
    *,
    illuminant: str,
    wb_gains: np.ndarray,
    chart: str = "BabelColor Average",
) -> np.ndarray:
    """The CCM the raw stage applies: white-balanced camera RGB → linear sRGB (D65).

    Least squares (:func:`fit_ccm`) over the chart's patches under ``illuminant``, from
    the camera's responses times ``wb_gains``, scaled so the perfect white's G is 1
    (the raw stage's normalised units: a white of G = v comes out with Y ≈ v), to the
    patches' colours adapted to D65 (:func:`xyz_to_linear_srgb`). By linearity of least
    squares this is ``XYZ_to_sRGB · Bradford · M · diag(1/g)`` of :func:`fit_chart`'s M.

    Parameters
    ----------
    qe_curves : (3, B) R, G, B QE curves on ``bands_nm``, e⁻/photon.
    bands_nm : band centres, nm.
    illuminant : a colour.SDS_ILLUMINANTS name.
    wb_gains : (3,) the white-balance gains applied before the CCM.
    chart : a colour.SDS_COLOURCHECKERS name.

    Returns
    -------
    (3, 3) M, ``srgb = M @ rgb``.
    """
    qe = np.asarray(qe_curves, dtype=np.float64)[:3]
    reflectances, _ = spectra.colourchecker_reflectances(chart, bands_nm)
    light = spectra.illuminant_photons(illuminant, bands_nm)
    gains = np.asarray(wb_gains, dtype=np.float64)
    white_rgb = integrate_bands(light, qe) * gains
    rgb = chart_camera_rgb(qe, light, reflectances) * gains / white_rgb[1]
    xyz, white = chart_xyz(illuminant, chart)
    return fit_ccm(rgb, xyz_to_linear_srgb(xyz, white))


def ccm_noise_gain(ccm: np.ndarray) -> np.ndarray:
    """SNR loss of each output channel of a CCM, for a neutral input with independent,
    equal noise in the input channels: ``√(Σ_j M_ij²) / |Σ_j M_ij|``.

    A grey input ``(s, s, s)`` with noise σ per channel gives output i the signal
    ``s·Σ_j M_ij`` and the noise ``σ·√(Σ_j M_ij²)`` (variances of independent terms add),
    so its SNR falls by this factor; 1 for the identity (and any row with one non-zero
    entry), > 1 when a row mixes channels with negative weights.

    Returns
    -------
    (3,) float64, one per output channel.

    References
    ----------
    P. M. Hubel, J. Holm, G. D. Finlayson, M. S. Drew, "Matrix calculations for digital
    photography", Proc. IS&T/SID 5th Color Imaging Conference, 1997 (noise of a CCM).
    """
    m = np.asarray(ccm, dtype=np.float64)
    return np.sqrt((m**2).sum(axis=1)) / np.abs(m.sum(axis=1))


def vora_trussell_mu(
    qe_curves: np.ndarray, cmfs: np.ndarray, light_photons: np.ndarray | None = None
) -> float:
    """Vora–Trussell μ-factor: how well the sensor's QE curves span the observer's.

    ``μ = trace(P_A · P_S) / 3`` with P_A, P_S the orthogonal projectors onto the spans
    of the colour-matching functions and of the sensor's curves (both weighted by the
    light when given). μ = 1 exactly when the curves are a linear combination of the
    CMFs (the Luther condition: no sensor metamerism); μ → 0 when they see nothing the
    observer sees. Equal to the mean of cos² of the principal angles between the spans.

    Parameters
    ----------
    qe_curves : (3, B) R, G, B QE curves at the band centres.
    cmfs : (3, B) x̄, ȳ, z̄ at the same bands, in the QE curves' domain: per photon
        (x̄/λ, ... from :func:`sensors.spectra.colour_matching_functions`) for QE curves.
    light_photons : optional (B,) illuminant weighting.

    References
    ----------
    P. L. Vora, H. J. Trussell, "Measure of goodness of a set of color-scanning
    filters", JOSA A 10(7), 1993, eq. (9).
    """
    s = np.asarray(qe_curves, dtype=np.float64)[:3].T
    a = np.asarray(cmfs, dtype=np.float64).T
    if light_photons is not None:
        weight = np.asarray(light_photons, dtype=np.float64)[:, None]
        s, a = s * weight, a * weight
    qa, _ = np.linalg.qr(a)
    qs, _ = np.linalg.qr(s)
    return float(np.sum((qa.T @ qs) ** 2) / 3.0)

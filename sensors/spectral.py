"""Spectral maths of a spectral signal: band grids, QE curves, integration over bands.

A spectral signal is (N, H, W, B) photons per pixel per exposure *per band*: band b
holds the photons whose wavelength falls in the band centred on ``λ_b`` (the signal's
``wavelength_nm`` attr). A photosite of spectral quantum efficiency QE(λ) collects

    e = Σ_b QE(λ_b) · p_b      (electrons)

the rectangle rule of ∫ QE(λ) · φ(λ) dλ with p_b = φ(λ_b)·Δλ_b photons per band. Each
band's width is already inside its photon count, so integration needs no widths.

Plain NumPy; the spectral data (illuminants, reflectances, camera curves) come from
colour-science through :mod:`sensors.spectra`.

References
----------
EMVA Standard 1288, Release 4.0 (2021), section 2.1 (μe = η(λ) μp for monochromatic
light; for broadband light, the sum over wavelengths).
B. A. Wandell, J. E. Farrell, ISETCam: sensor spectral QE × irradiance, integrated
over wavelength (Farrell et al., Proc. SPIE 5017, 2003).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "CURVE_CHANNELS",
    "DEFAULT_BAND_RANGE_NM",
    "MAX_BANDS",
    "MAX_QE_CSV_BYTES",
    "band_grid",
    "check_bands",
    "gaussian_filters",
    "integrate_bands",
    "ir_cut_transmission",
    "qe_curves",
    "read_qe_csv",
]

#: The most bands a grid may have (1 nm steps over 300–1300 nm).
MAX_BANDS = 1000

#: The default band grid: start, stop (inclusive), step, nm.
DEFAULT_BAND_RANGE_NM = (400.0, 700.0, 10.0)


def band_grid(start_nm: float, stop_nm: float, step_nm: float) -> np.ndarray:
    """Band centres from ``start_nm`` to ``stop_nm`` inclusive, ``step_nm`` apart, nm.

    Raises ValueError unless 0 < start ≤ stop and step > 0 give 1 to :data:`MAX_BANDS` bands.
    """
    if not (0 < start_nm <= stop_nm and step_nm > 0):
        raise ValueError(f"need 0 < start <= stop and step > 0, got {start_nm, stop_nm, step_nm}")
    count = math.floor((stop_nm - start_nm) / step_nm + 1e-9) + 1
    if count > MAX_BANDS:
        raise ValueError(f"{count} bands, more than {MAX_BANDS}")
    return start_nm + step_nm * np.arange(count, dtype=np.float64)


def check_bands(bands_nm: ArrayLike) -> np.ndarray:
    """``bands_nm`` as float64 if finite, positive, strictly increasing and at most
    :data:`MAX_BANDS` of them, else ValueError."""
    bands = np.asarray(bands_nm, dtype=np.float64)
    if bands.ndim != 1 or not 0 < bands.size <= MAX_BANDS:
        raise ValueError(f"need 1 to {MAX_BANDS} wavelengths, got shape {bands.shape}")
    if not np.isfinite(bands).all() or (bands <= 0).any():
        raise ValueError("wavelengths must be finite and positive")
    if (np.diff(bands) <= 0).any():
        raise ValueError("wavelengths must be strictly increasing")
    return bands


def gaussian_filters(
    centre_nm: ArrayLike, fwhm_nm: ArrayLike, peak_qe: ArrayLike, bands_nm: ArrayLike
) -> np.ndarray:
    """Parametric colour filters: Gaussian QE curves sampled at the band centres.

    QE_k(λ) = q_k · exp(−(λ − c_k)² / (2 σ_k²)), σ_k = FWHM_k / (2·sqrt(2 ln 2)).

    Parameters
    ----------
    centre_nm : c_k, one per channel, nm.
    fwhm_nm : full width at half maximum, one per channel, nm (> 0).
    peak_qe : q_k, the QE at the centre, e⁻/photon (one value or one per channel).
    bands_nm : band centres, nm.

    Returns
    -------
    (K, B) float64 QE curves.
    """
    centre = np.atleast_1d(np.asarray(centre_nm, dtype=np.float64))
    fwhm = np.broadcast_to(np.asarray(fwhm_nm, dtype=np.float64), centre.shape)
    if (fwhm <= 0).any():
        raise ValueError("filter widths must be > 0")
    peak = np.broadcast_to(np.asarray(peak_qe, dtype=np.float64), centre.shape)
    sigma = fwhm / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    offset = np.asarray(bands_nm, dtype=np.float64)[None, :] - centre[:, None]
    return peak[:, None] * np.exp(-0.5 * (offset / sigma[:, None]) ** 2)


def ir_cut_transmission(bands_nm: ArrayLike, cut_nm: float, edge_nm: float) -> np.ndarray:
    """Transmission of an IR-cut (short-pass) filter at the band centres.

    A logistic edge: T(λ) = 1 / (1 + exp((λ − cut) / s)), 50 % at ``cut_nm``, falling
    from 90 % to 10 % over ``edge_nm`` (s = edge / (2 ln 9)). ``edge_nm = 0`` is an
    ideal step (T = 1 below the cut, ½ at it, 0 above).
    """
    bands = np.asarray(bands_nm, dtype=np.float64)
    if edge_nm == 0:
        return np.where(bands < cut_nm, 1.0, np.where(bands == cut_nm, 0.5, 0.0))
    scale = edge_nm / (2.0 * math.log(9.0))
    return 0.5 * (1.0 - np.tanh((bands - cut_nm) / (2.0 * scale)))  # logistic, overflow-free


def integrate_bands(photons: np.ndarray, qe_curves: np.ndarray) -> np.ndarray:
    """Electrons per channel: Σ_b QE_k(λ_b) · p_b at every pixel.

    Parameters
    ----------
    photons : (N, H, W, B) photons per band.
    qe_curves : (K, B) QE of each channel at each band, e⁻/photon.

    Returns
    -------
    (N, H, W, K) float64 mean electrons per channel (before any noise): the bands are
    gone before anything per pixel is drawn. Computed by ``np.einsum``, not a BLAS
    matrix product: each pixel's sum then runs in the same order whatever the batch's
    size (a GEMM's rounding depends on its shape and thread split), and it does not
    compete for cores with the CNN's threads.
    """
    x = np.asarray(photons)
    curves = np.asarray(qe_curves, dtype=np.float64)
    if x.shape[-1] != curves.shape[-1]:
        raise ValueError(f"{x.shape[-1]} bands in the signal, {curves.shape[-1]} in the curves")
    return np.einsum("...b,kb->...k", x, curves, dtype=np.float64)


#: Rows of :func:`qe_curves`: the colour channels and the panchromatic W.
CURVE_CHANNELS = ("R", "G", "B", "W")

#: The largest QE CSV file read, bytes.
MAX_QE_CSV_BYTES = 10 << 20


def read_qe_csv(path: str | Path, bands_nm: ArrayLike) -> np.ndarray:
    """QE curves from a CSV file, interpolated linearly at the band centres.

    The file has a header ``wavelength_nm,R,G,B`` (``W`` optional, columns in any
    order) and one row per wavelength, strictly increasing, QE in e⁻/photon in [0, 1].
    The bands must lie within the file's wavelengths.

    Returns
    -------
    (4, B) float64 rows R, G, B, W (W is NaN when the file has none).

    Raises
    ------
    ValueError naming the file, the line or column, and the problem.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"QE curve file {path}: not found")
    if path.stat().st_size > MAX_QE_CSV_BYTES:
        raise ValueError(f"QE curve file {path}: larger than {MAX_QE_CSV_BYTES >> 20} MiB")
    try:
        lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"QE curve file {path}: cannot read it as text: {err}") from None
    if not lines:
        raise ValueError(f"QE curve file {path}: empty")
    header = [h.strip() for h in lines[0].split(",")]
    missing = [c for c in ("wavelength_nm", "R", "G", "B") if c not in header]
    unknown = [c for c in header if c not in ("wavelength_nm", *CURVE_CHANNELS)]
    if missing or unknown or len(set(header)) != len(header):
        raise ValueError(
            f"QE curve file {path}: line 1: header must name wavelength_nm, R, G, B "
            f"(and optionally W) once each, got {header}"
        )
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        cells = line.split(",")
        try:
            if len(cells) != len(header):
                raise ValueError(f"{len(cells)} values for {len(header)} columns")
            rows.append([float(c) for c in cells])
        except ValueError as err:
            raise ValueError(f"QE curve file {path}: line {number}: {err}") from None
    table = np.asarray(rows, dtype=np.float64).reshape(-1, len(header))
    column = {name: table[:, i] for i, name in enumerate(header)}
    try:
        wavelengths = check_bands(column["wavelength_nm"])
    except ValueError as err:
        raise ValueError(f"QE curve file {path}: column wavelength_nm: {err}") from None
    for name in header[1:]:
        values = column[name]
        if not (np.isfinite(values).all() and (values >= 0).all() and (values <= 1).all()):
            raise ValueError(f"QE curve file {path}: column {name}: QE must be in [0, 1]")
    bands = np.asarray(bands_nm, dtype=np.float64)
    if bands[0] < wavelengths[0] or bands[-1] > wavelengths[-1]:
        raise ValueError(
            f"QE curve file {path}: covers {wavelengths[0]:g}–{wavelengths[-1]:g} nm; the "
            f"bands span {bands[0]:g}–{bands[-1]:g} nm"
        )
    absent = np.full(bands.shape, np.nan)
    at = {c: np.interp(bands, wavelengths, v) for c, v in column.items()}
    return np.stack([at.get(c, absent) for c in CURVE_CHANNELS])


def qe_curves(
    source: str,
    bands_nm: ArrayLike,
    *,
    qe: ArrayLike,
    qe_w: float,
    camera: str = "",
    csv_path: str | Path | None = None,
    centre_nm: ArrayLike = (610.0, 550.0, 465.0),
    fwhm_nm: ArrayLike = (100.0, 100.0, 100.0),
    ir_cut_nm: float | None = None,
    ir_cut_edge_nm: float = 20.0,
) -> np.ndarray:
    """Spectral QE of the R, G, B and W photosites at the band centres, e⁻/photon.

    Parameters
    ----------
    source : ``gaussian`` (:func:`gaussian_filters` of peak ``qe``), ``camera``
        (colour-science's measured sensitivities S_c of ``camera``, scaled to
        QE_c = qe_c · S_c / max S: the measured ratios between channels kept) or ``csv``
        (:func:`read_qe_csv`: absolute QE as the file gives it; ``qe`` unused).
    bands_nm : band centres, nm.
    qe : peak QE (gaussian) or scale (camera) of R, G, B: one value or three.
    qe_w : QE of the panchromatic W pixel, flat over the bands (unless the CSV has W).
    ir_cut_nm, ir_cut_edge_nm : an optional IR-cut filter over every photosite
        (:func:`ir_cut_transmission`).

    Returns
    -------
    (4, B) float64 rows R, G, B, W (:data:`CURVE_CHANNELS`).
    """
    bands = np.asarray(bands_nm, dtype=np.float64)
    qe_rgb = np.broadcast_to(np.asarray(qe, dtype=np.float64), (3,))
    if source == "gaussian":
        rgb = gaussian_filters(centre_nm, fwhm_nm, qe_rgb, bands)
    elif source == "camera":
        from sensors.spectra import camera_sensitivities

        relative = camera_sensitivities(camera, bands)
        rgb = qe_rgb[:, None] * relative / relative.max()
    elif source == "csv":
        if csv_path is None:
            raise ValueError("a csv QE source needs a file")
        curves = read_qe_csv(csv_path, bands)
        rgb, w = curves[:3], curves[3]
        if not np.isnan(w).any():
            qe_w = w  # type: ignore[assignment]
    else:
        raise ValueError(f"unknown QE source {source!r}; use gaussian, camera or csv")
    out = np.vstack([rgb, np.broadcast_to(qe_w, bands.shape)])
    if ir_cut_nm is not None:
        out = out * ir_cut_transmission(bands, ir_cut_nm, ir_cut_edge_nm)
    return out

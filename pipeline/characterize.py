"""``sensorlab characterize``: an EMVA 1288 datasheet of the configured sensor.

The photon-transfer method (EMVA 1288 Release 4.0 Linear) run on the simulated
sensor: flat fields at ``levels`` exposure levels from dark to beyond saturation, two
frames per level, dark frames, through the config's photodetector and ADC stages;
then :mod:`pipeline.emva` fits the system gain K, the quantum efficiency η, the
temporal dark noise σ_d, the saturation capacity, SNR_max, the dynamic range, DSNU
and PRNU, and splits the non-uniformity into row, column and pixel parts (row/column
offset and gain FPN) with the row temporal noise. Every noise or non-uniformity figure
whose size in DN is below the quantisation noise 1/√12 DN carries a note: quantisation
biases it (a finer ADC, or analog gain, resolves it). A colour sensor is analysed per
pixel colour (R, G, B, W pixels of the mosaic, or the three layers of a stacked sensor),
as the standard asks.

Illumination: every frame is a flat field with the same number of photons μ_p in each
of the R, G and B bands. ``μ_p`` in the datasheet counts the photons that reach one
pixel of that colour: ``μ_p`` for an R, G or B pixel, ``3 μ_p`` for a panchromatic W
pixel (which collects all three bands). A spectral chain (the scene's ``spectral``
attr) gets flat spectra instead: μ_p photons per pixel spread equally over the bands
(a flat photon spectrum), so every pixel's μ_p is its total photons and η its QE
averaged over the bands.

Colour (spectral chains with a colour sensor): the figures of the photodetector's QE
curves under the scene's illuminant (or ``colour_illuminant``),
:func:`sensors.colour_accuracy.colour_accuracy`: ΔE2000 of the 24 ColorChecker patches
after the least-squares CCM (mean, max, each), the CCM, the sRGB CCM the raw stage
applies and its noise amplification, and the Vora–Trussell μ-factor against the CIE
observer. A mono sensor gets ``luminance`` instead
(:func:`sensors.colour_accuracy.luminance_accuracy`): the ΔL* of its one channel scaled
to luminance, and the ΔE2000 of the grey image it delivers.

Python API: :func:`characterize_stages` (stage objects → datasheet dict),
:func:`write_datasheet` (dict → folder, atomically), :func:`characterize_config`
(config → folder). The command line: :mod:`pipeline.cli.characterize`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import emva, limits
from pipeline.errors import UserError
from pipeline.stage import Batch, SignalInfo, Stage, StageError, Unit

__all__ = [
    "characterize_config",
    "characterize_stages",
    "plot_datasheet",
    "write_datasheet",
]

DEFAULT_LEVELS = 30
MIN_LEVELS = 10
DEFAULT_SIZE = 256
MIN_SIZE = 16
DEFAULT_REFINE = 8  # extra levels between the neighbours of the variance maximum
LOW_LEVELS = 6  # extra geometric levels from the SNR = 1 threshold to the first level
DEFAULT_DARK_PAIRS = 4
DEFAULT_SPATIAL_FRAMES = 16  # frames averaged for DSNU and PRNU
BEYOND_SATURATION = 1.3  # the top level, relative to the estimated saturation
PROBE_FRACTION = 0.3  # probe light: at most this fraction of saturation for η ≤ 1
# Below this dark noise (DN, quantisation removed) floor quantisation does not dither and
# the σ²_q = 1/12 DN² model fails: the datasheet notes it.
QUANTISATION_LIMITED_DN = 0.5

DATASHEET_JSON = "datasheet.json"
PHOTON_TRANSFER_PNG = "photon_transfer.png"
SNR_PNG = "snr.png"

_COLOURS = {"R": "tab:red", "G": "tab:green", "B": "tab:blue", "W": "0.35"}


# --------------------------------------------------------------------------- measuring
class _Bench:
    """The optical bench: flat fields through the two stages, a fresh image index per frame."""

    def __init__(
        self, photodetector: Stage, adc: Stage, shape: tuple[int, int], bands: int = 0
    ) -> None:
        """``bands``: the spectral bands of a spectral chain (0: the R, G, B bands)."""
        self.photodetector = photodetector
        self.adc = adc
        self.shape = shape
        self.bands = bands
        self.next_index = 0

    def frames(self, photons_per_band: float, count: int) -> np.ndarray:
        """ADC codes of flat fields: ``photons_per_band`` in each of R, G, B, or for a
        spectral chain spread equally over its bands (``photons_per_band`` per pixel)."""
        h, w = self.shape
        if self.bands:
            shape, level = (count, h, w, self.bands), photons_per_band / self.bands
        else:
            shape, level = (count, h, w, 3), photons_per_band
        photons = np.full(shape, level, dtype=np.float64)
        batch = Batch(np.arange(self.next_index, self.next_index + count))
        self.next_index += count
        electrons = self.photodetector.process(photons, batch)
        return self.adc.process(electrons, batch).astype(np.float64)


Selector = Callable[[np.ndarray], np.ndarray]
#: frames (L, H, W[, 3]) → the (L, M, N) sub-grids of one colour: one per CFA tile phase
Grids = Callable[[np.ndarray], list[np.ndarray]]


def _pixel_classes(
    info: SignalInfo, spectral: bool = False
) -> dict[str, tuple[Selector, int, Grids]]:
    """Per pixel colour: its pixels from frames (flat), the bands it sees, and its grids
    (``spectral``: every pixel sees the one flat spectrum, counted once).

    The grids keep rows and columns for the row/column decomposition: a stacked layer
    whole, and for a mosaic every tile phase of that colour (``f[:, i::th, j::tw]``).
    """
    if len(info.shape) == 3:  # stacked: one layer per colour
        return {
            c: (lambda f, i=i: f[..., i], 1, lambda f, i=i: [f[..., i]])
            for i, c in enumerate("RGB")
        }
    tile = info.attr("cfa_tile")
    if tile is None:
        raise UserError("the photodetector's output has no cfa_tile attr to tell pixel colours")
    tile = np.array(tile)
    th, tw = tile.shape
    h, w = info.shape
    reps = (-(-h // th), -(-w // tw))
    letters = np.tile(tile, reps)[:h, :w]
    classes = {}
    for letter in ("R", "G", "B", "W"):
        mask = letters == letter
        if mask.any():
            phases = [tuple(ij) for ij in np.argwhere(tile == letter)]
            classes[letter] = (
                lambda f, m=mask: f[..., m],
                3 if letter == "W" and not spectral else 1,
                lambda f, ph=phases: [f[:, i::th, j::tw] for i, j in ph],
            )
    return classes


def characterize_stages(
    photodetector: Stage,
    adc: Stage,
    *,
    levels: int = DEFAULT_LEVELS,
    size: int | tuple[int, int] = DEFAULT_SIZE,
    refine: int = DEFAULT_REFINE,
    dark_pairs: int = DEFAULT_DARK_PAIRS,
    spatial_frames: int = DEFAULT_SPATIAL_FRAMES,
    input_attrs: Mapping[str, Any] | None = None,
    keys: tuple[str, str] = ("photodetector", "adc"),
    colour_illuminant: str | None = None,
) -> dict[str, Any]:
    """Measure a photodetector + ADC pair by the EMVA 1288 photon-transfer method.

    Parameters
    ----------
    photodetector, adc : the stage objects (seeds as configured); they are set up again
        here for frames of ``size``.
    levels : equally spaced exposure levels from dark to 1.3× the estimated saturation
        (at least 10; EMVA recommends 50 for a full datasheet).
    size : flat-field frame size in pixels, ``n`` or ``(H, W)``.
    refine : extra levels between the two neighbours of the variance maximum, to place
        the saturation point finely.
    dark_pairs : dark frame pairs averaged for μ_y.dark and σ²_y.dark.
    spatial_frames : frames averaged for DSNU (dark) and PRNU (50 % of saturation).
    input_attrs : attrs of the photodetector's input (e.g. the scene's ``exposure_s``; a
        spectral scene's ``spectral``, ``wavelength_nm`` and ``illuminant``).
    keys : key paths of the two stages, used in error messages.
    colour_illuminant : the light of the colour figures (default: the scene's).

    Returns
    -------
    The datasheet: ``{"standard", "sensor", "method", "channels": {colour: {...}}}``,
    plus ``"colour"`` for a spectral colour sensor; JSON-ready, values in EMVA 1288 units
    (see :func:`write_datasheet`).

    Raises
    ------
    UserError : stages that cannot be characterised (a non-linear ADC curve, no system
        gain, no response to light, no saturation within the levels).
    """
    if levels < MIN_LEVELS:
        raise UserError(f"at least {MIN_LEVELS} exposure levels, got {levels}", key="levels")
    h, w = (size, size) if isinstance(size, int) else size
    if min(h, w) < MIN_SIZE:
        raise UserError(f"frames need at least {MIN_SIZE}×{MIN_SIZE} pixels", key="size")
    limits.check("levels", levels, what="--levels", key="levels")
    limits.check("image_pixels", h * w, what=f"a {h}×{w} px frame", key="size")
    attrs = dict(input_attrs or {})
    bands = len(attrs.get("wavelength_nm") or ()) if attrs.get("spectral") else 0
    pd_input = SignalInfo(Unit.PHOTONS, (h, w, bands or 3), np.float64, attrs)
    pd_info = _setup(photodetector, pd_input, keys[0])
    adc_info = _setup(adc, pd_info, keys[1])
    curve = adc_info.attr("curve", "linear")
    if curve != "linear":
        raise UserError(
            f"the EMVA 1288 linear method needs a linear ADC curve, got {curve!r}",
            key=f"{keys[1]}.curve",
        )
    gain = adc_info.attr("system_gain_dn_per_e")
    bits = adc_info.attr("bits")
    if gain is None or bits is None:
        raise UserError("the ADC gives no system_gain_dn_per_e and bits attrs", key=keys[1])
    top = (1 << int(bits)) - 1
    black = int(adc_info.attr("black_level_dn", 0))
    e_sat = min(float(pd_info.attr("full_well_e", np.inf)), (top - black) / gain)

    bench = _Bench(photodetector, adc, (h, w), bands)
    dark = np.concatenate([bench.frames(0.0, 2) for _ in range(dark_pairs)])
    dark_spatial = bench.frames(0.0, spatial_frames)
    channels = {}
    for colour, (select, seen, grids) in _pixel_classes(pd_info, bool(bands)).items():
        channels[colour] = _measure_channel(
            bench,
            select,
            seen,
            grids,
            dark=dark,
            dark_spatial=dark_spatial,
            nominal_gain=gain,
            e_sat=e_sat,
            levels=levels,
            refine=refine,
            spatial_frames=spatial_frames,
            zero_code=_zero_code(adc_info),
        )
    illumination = (
        f"flat photon spectrum over {bands} bands; mu_p counts the photons reaching one pixel"
        if bands
        else "flat field, equal photons in the R, G and B bands; mu_p counts the photons "
        "reaching one pixel (all three bands for a W pixel)"
    )
    sheet = {
        "standard": "EMVA 1288 Release 4.0 Linear, photon-transfer method (simulated sensor)",
        "sensor": {
            "photodetector": photodetector.name,
            "adc": adc.name,
            "cfa": pd_info.attr("cfa"),
            "bits": int(bits),
            "black_level_dn": black,
            "white_level_dn": adc_info.attr("white_level_dn"),
            "exposure_s": pd_info.attr("exposure_s"),
            "seed": photodetector.seed,
            "sensor_seed": photodetector.sensor_seed,
        },
        "method": {
            "frame_size": [h, w],
            "levels": levels,
            "refine_levels": refine,
            "dark_pairs": dark_pairs,
            "spatial_frames": spatial_frames,
            "fit_range": f"0 to {emva.FIT_FRACTION:.0%} of the saturation signal",
            "illumination": illumination,
        },
        "channels": channels,
    }
    qe = pd_info.attr("spectral_qe")
    if qe is not None:
        mono = pd_info.attr("cfa") == "mono"
        key = "luminance" if mono else "colour"
        light = colour_illuminant or attrs.get("illuminant")
        sheet[key] = _colour(qe, pd_info, light, mono=mono)
    return sheet


def _colour(qe: Any, pd_info: SignalInfo, illuminant: str | None, *, mono: bool) -> dict[str, Any]:
    """The colour figures of the photodetector's QE curves (UserError for a bad light):
    a colour sensor's (R, G, B rows), or a mono sensor's grey output (its W row)."""
    from sensors.colour_accuracy import colour_accuracy, luminance_accuracy

    curves = np.asarray(qe)
    bands = np.asarray(pd_info.attr("spectral_qe_nm"))
    try:
        if mono:
            return luminance_accuracy(curves, bands, illuminant=illuminant or "D65")
        return colour_accuracy(curves, bands, illuminant=illuminant or "D65")
    except (ValueError, KeyError) as err:
        raise UserError(f"colour figures: {err}", key="colour_illuminant") from None


def _setup(stage: Stage, info: SignalInfo, key: str) -> SignalInfo:
    try:
        return stage.setup(info)
    except StageError as exc:
        raise UserError(str(exc), key=f"{key}.{exc.key}" if exc.key else key) from None


def _zero_code(adc_info: SignalInfo) -> float | None:
    """The mean code of a zero signal: the black level (the ADC centres it in its code)."""
    black = adc_info.attr("black_level_dn")
    if not adc_info.attr("adc_transfer") or black is None:
        return None
    return float(black)


def _pair(select: Selector, frames: np.ndarray) -> tuple[float, float]:
    picked = select(frames)
    return emva.pair_statistics(picked[0], picked[1])


def _measure_channel(
    bench: _Bench,
    select: Selector,
    bands: int,
    grids: Grids,
    *,
    dark: np.ndarray,
    dark_spatial: np.ndarray,
    nominal_gain: float,
    e_sat: float,
    levels: int,
    refine: int,
    spatial_frames: int,
    zero_code: float | None,
) -> dict[str, Any]:
    dark_stats = [_pair(select, dark[i : i + 2]) for i in range(0, len(dark), 2)]
    mu_dark = float(np.mean([m for m, _ in dark_stats]))
    var_dark = float(np.mean([v for _, v in dark_stats]))

    # probe: estimate η from one mid-range level, to place the levels around saturation
    photons = PROBE_FRACTION * e_sat / bands
    for _ in range(6):
        mu, _ = _pair(select, bench.frames(photons, 2))
        signal_e = (mu - mu_dark) / nominal_gain
        if signal_e >= 0.05 * e_sat:
            break
        photons *= min(100.0, PROBE_FRACTION * e_sat / max(signal_e, 1e-3 * e_sat))
    else:
        raise UserError("the sensor gives no signal in flat fields: nothing to characterise")
    sat_per_band = e_sat / (signal_e / photons)

    grid = np.linspace(0.0, BEYOND_SATURATION * sat_per_band, levels)
    stats = {float(p): _pair(select, bench.frames(p, 2)) for p in grid}
    top = int(np.argmax([stats[float(p)][1] for p in grid]))
    # low light, below the first level: geometric levels from about the SNR = 1 threshold,
    # so that the measured SNR curve also covers the dark-noise-limited regime
    sigma_d_est = np.sqrt(max(var_dark - emva.SIGMA_Q2_DN2, 0.0)) / nominal_gain
    threshold = emva.sensitivity_threshold_e(sigma_d_est, nominal_gain) / (signal_e / photons)
    if threshold < grid[1]:
        for p in np.geomspace(threshold, grid[1], LOW_LEVELS + 1)[:-1]:
            stats[float(p)] = _pair(select, bench.frames(p, 2))
    if top == levels - 1:
        raise UserError(
            f"no saturation up to {BEYOND_SATURATION}× the expected saturation capacity"
        )
    lo, hi = grid[max(top - 1, 0)], grid[top + 1]
    for p in np.linspace(lo, hi, refine + 2)[1:-1]:
        if not np.isclose(p, grid[top]):
            stats[float(p)] = _pair(select, bench.frames(p, 2))
    per_band = np.array(sorted(stats))
    mu_y = np.array([stats[p][0] for p in per_band])
    var_y = np.array([stats[p][1] for p in per_band])
    try:
        r = emva.photon_transfer(per_band * bands, mu_y, var_y, mu_dark, var_dark)
    except ValueError as exc:
        raise UserError(f"photon transfer analysis failed: {exc}") from None

    flat = bench.frames(0.5 * r.mu_p_sat / bands, spatial_frames)
    dsnu_e, prnu_pct = emva.nonuniformity(
        select(dark_spatial), select(flat), r.system_gain_dn_per_e
    )
    k = r.system_gain_dn_per_e
    dark_parts, flat_parts = _decomposition(grids, dark_spatial), _decomposition(grids, flat)
    lines = emva.line_nonuniformity(dark_parts, flat_parts, k)
    notes = []
    if r.sigma_d_is_upper_bound:
        notes.append(
            "dark variance below 0.24 DN²: quantisation hides the dark noise; "
            "temporal_dark_noise_e is the EMVA upper bound 0.40/K"
        )
    elif var_dark - emva.SIGMA_Q2_DN2 < QUANTISATION_LIMITED_DN**2:
        notes.append(
            f"dark noise below {QUANTISATION_LIMITED_DN} DN before quantisation: the "
            "1/12 DN² quantisation model does not hold there, temporal_dark_noise_e is "
            "unreliable (a finer ADC, or analog gain, resolves it)"
        )
    return {
        "pixels": int(select(dark[:1]).size),
        "system_gain_dn_per_e": k,
        "inverse_system_gain_e_per_dn": 1.0 / k,
        "quantum_efficiency_pct": 100.0 * r.quantum_efficiency,
        "responsivity_dn_per_photon": r.responsivity_dn_per_photon,
        "temporal_dark_noise_e": r.sigma_d_e,
        "temporal_dark_noise_dn": r.sigma_y_dark_dn,
        "temporal_dark_noise_is_upper_bound": r.sigma_d_is_upper_bound,
        "dark_signal_dn": r.mu_y_dark_dn,
        "dark_signal_e": None if zero_code is None else (r.mu_y_dark_dn - zero_code) / k,
        "saturation_capacity_photons": r.mu_p_sat,
        "saturation_capacity_e": r.mu_e_sat,
        "saturation_signal_dn": r.mu_y_sat_dn,
        "absolute_sensitivity_threshold_photons": r.mu_p_min,
        "absolute_sensitivity_threshold_e": r.mu_e_min,
        "snr_max": r.snr_max,
        "snr_max_db": emva.ratio_db(r.snr_max),
        "snr_max_bits": emva.ratio_bits(r.snr_max),
        "dynamic_range": r.dynamic_range,
        "dynamic_range_db": emva.ratio_db(r.dynamic_range),
        "dynamic_range_bits": emva.ratio_bits(r.dynamic_range),
        "dsnu_e": dsnu_e,
        "prnu_pct": prnu_pct,
        **lines,
        "notes": notes + _floor_notes(dsnu_e, prnu_pct, lines, k, dark_parts, flat_parts),
        "curves": {
            "mu_p_photons": r.mu_p.tolist(),
            "mu_y_dn": r.mu_y.tolist(),
            "var_y_dn2": r.var_y.tolist(),
            "snr": r.snr.tolist(),
            "in_fit": r.fit_mask.tolist(),
            "var_y_dark_dn2": var_dark,
        },
    }


def _decomposition(grids: Grids, frames: np.ndarray) -> emva.SpatialDecomposition:
    """Row/column/pixel decomposition of one colour: the mean over its CFA phases."""
    return emva.mean_decomposition([emva.spatial_decomposition(g) for g in grids(frames)])


def _floor_notes(
    dsnu_e: float,
    prnu_pct: float,
    lines: Mapping[str, float],
    k: float,
    dark: emva.SpatialDecomposition,
    flat: emva.SpatialDecomposition,
) -> list[str]:
    """Quantisation-floor notes of the non-uniformity figures, each converted to DN.

    Offsets and noise (e⁻) by K; gains (%) at the PRNU flat field's signal.
    """
    signal_dn = flat.mean_dn - dark.mean_dn

    def temporal(parts: emva.SpatialDecomposition) -> float:
        return float(np.sqrt(max(parts.temporal_dn2 - emva.SIGMA_Q2_DN2, 0.0)))

    dark_dn = {
        "dsnu_e": dsnu_e * k,
        "row_offset_fpn_e": lines["row_offset_fpn_e"] * k,
        "col_offset_fpn_e": lines["col_offset_fpn_e"] * k,
        "row_temporal_noise_e": lines["row_temporal_noise_e"] * k,
    }
    flat_dn = {
        key: lines[key] / 100 * signal_dn if key in lines else prnu_pct / 100 * signal_dn
        for key in ("prnu_pct", "row_gain_fpn_pct", "col_gain_fpn_pct")
    }
    return _quantisation_notes(dark_dn, temporal(dark), frames="dark") + _quantisation_notes(
        flat_dn, temporal(flat), frames="flat-field"
    )


def _quantisation_notes(
    figures_dn: Mapping[str, float], temporal_dn: float, *, frames: str
) -> list[str]:
    """One note naming every figure below the quantisation floor (or none).

    A pattern or noise smaller than the quantiser's own noise ``σ_q = 1/√12 DN`` is
    distorted by the rounding (it moves whole codes or none), unless the temporal noise
    of the frames dithers the quantiser: below ``QUANTISATION_LIMITED_DN`` of temporal
    noise (before quantisation) it does not, and the figure is below the floor.

    Parameters
    ----------
    figures_dn : datasheet key → the figure's size in DN.
    temporal_dn : temporal noise of the frames the figures come from, quantisation
        removed (DN).
    frames : which frames, for the note (``"dark"``, ``"flat-field"``).
    """
    sigma_q = float(np.sqrt(emva.SIGMA_Q2_DN2))
    below = [f"{name} ({value:.2g} DN)" for name, value in figures_dn.items() if value < sigma_q]
    if temporal_dn >= QUANTISATION_LIMITED_DN or not below:
        return []
    return [
        f"{', '.join(below)} below the quantisation noise 1/√12 DN = {sigma_q:.2f} DN, in "
        f"{frames} frames whose temporal noise ({temporal_dn:.2g} DN) does not dither the "
        "quantiser: unreliable (a finer ADC, or analog gain, resolves it)"
    ]


# --------------------------------------------------------------------------- writing
def plot_datasheet(sheet: Mapping[str, Any], folder: str | Path) -> list[Path]:
    """Draw the photon-transfer curve and the SNR curve of a datasheet into ``folder``.

    Returns the two PNG paths. Uses matplotlib's Agg canvas directly (no pyplot state).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    folder = Path(folder)
    ptc = Figure(figsize=(6.4, 4.6), dpi=110)
    FigureCanvasAgg(ptc)
    ax = ptc.add_subplot()
    snr_fig = Figure(figsize=(6.4, 4.6), dpi=110)
    FigureCanvasAgg(snr_fig)
    bx = snr_fig.add_subplot()
    for colour, ch in sheet["channels"].items():
        c = ch["curves"]
        tint = _COLOURS.get(colour, "k")
        mu_y, var_y = np.array(c["mu_y_dn"]), np.array(c["var_y_dn2"])
        fit = np.array(c["in_fit"])
        signal = mu_y - ch["dark_signal_dn"]
        noise = var_y - c["var_y_dark_dn2"]
        k = ch["system_gain_dn_per_e"]
        ax.plot(signal[~fit], noise[~fit], "o", mfc="none", color=tint, ms=4)
        ax.plot(
            signal[fit], noise[fit], "o", color=tint, ms=4, label=f"{colour}: K = {k:.4g} DN/e⁻"
        )
        x_fit = np.array([0.0, signal[fit].max()])
        ax.plot(x_fit, k * x_fit, "-", color=tint, lw=1)
        mu_p, snr = np.array(c["mu_p_photons"]), np.array(c["snr"])
        ok = (mu_p > 0) & (snr > 0) & (mu_p <= ch["saturation_capacity_photons"])
        bx.loglog(mu_p[ok], snr[ok], "o", color=tint, ms=4, label=f"{colour} measured")
        eta = ch["quantum_efficiency_pct"] / 100
        model_p = np.geomspace(
            0.5 * ch["absolute_sensitivity_threshold_photons"],
            ch["saturation_capacity_photons"],
            200,
        )
        model = emva.snr_model(
            model_p, qe=eta, sigma_d_e=ch["temporal_dark_noise_e"], system_gain_dn_per_e=k
        )
        bx.loglog(model_p, model, "-", color=tint, lw=1, label=f"{colour} EMVA model")
    ax.set_xlabel("μ_y − μ_y.dark  [DN]")
    ax.set_ylabel("σ²_y − σ²_y.dark  [DN²]")
    ax.set_title("Photon transfer (filled: fit range, 0–70 % of saturation)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    lim = bx.get_xlim()
    ideal = np.geomspace(*lim, 50)
    bx.loglog(ideal, np.sqrt(ideal), "k--", lw=0.8, label="ideal: sqrt(μ_p)")
    bx.set_xlim(lim)
    bx.set_xlabel("μ_p  [photons per pixel]")
    bx.set_ylabel("SNR")
    bx.set_title("Signal-to-noise ratio")
    bx.grid(alpha=0.3, which="both")
    bx.legend(fontsize=7)
    paths = [folder / PHOTON_TRANSFER_PNG, folder / SNR_PNG]
    ptc.tight_layout()
    ptc.savefig(paths[0])
    snr_fig.tight_layout()
    snr_fig.savefig(paths[1])
    return paths


def write_datasheet(sheet: Mapping[str, Any], folder: str | Path) -> Path:
    """Write ``datasheet.json`` and the two plots into ``folder``, atomically.

    Everything is written into a hidden temporary folder beside ``folder`` and renamed
    into place; an existing datasheet folder is replaced, any other existing folder is
    left alone (UserError).
    """
    from pipeline.files import written_folder
    from pipeline.store import write_json_atomic

    folder = Path(folder)
    if folder.exists() and not (folder / DATASHEET_JSON).is_file():
        raise UserError(f"{folder} exists and is not a datasheet folder", key="--out")
    with written_folder(folder) as tmp:
        write_json_atomic(tmp / DATASHEET_JSON, sheet)
        plot_datasheet(sheet, tmp)
    return folder


def characterize_config(
    config: Any,
    overrides: Mapping[str, Any] | Sequence[str] | None = None,
    *,
    out: str | Path | None = None,
    levels: int = DEFAULT_LEVELS,
    size: int = DEFAULT_SIZE,
    registry: Any = None,
    colour_illuminant: str | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Characterise a config's sensor and write its datasheet folder.

    Parameters
    ----------
    config : a YAML path, a dict or a Config (as :func:`pipeline.config.load_config`).
    overrides : dotted-key overrides.
    out : the datasheet folder (default ``<run.out>/characterize-<config stem>``).
    levels, size : see :func:`characterize_stages`.
    registry : the stage registry (default: installed stages and plugins).
    colour_illuminant : the light of a spectral sensor's colour figures (default: the
        scene's illuminant).

    Returns
    -------
    (folder, datasheet)
    """
    from pipeline.config import load_config
    from pipeline.runner import build_chain, open_config_dataset

    loaded = load_config(config, overrides, registry=registry)
    chain = build_chain(
        loaded, open_config_dataset(loaded).info(), registry=registry, with_model=False
    )
    kinds = [s.kind for s in chain.stages]
    if "photodetector" not in kinds:
        raise loaded.error("characterize needs a photodetector stage in the chain", "sensor")
    i = kinds.index("photodetector")
    if i + 1 >= len(kinds) or kinds[i + 1] != "adc":
        raise loaded.error(
            "characterize needs an adc stage right after the photodetector", f"sensor[{i + 1}]"
        )
    pd, adc = chain.stages[i], chain.stages[i + 1]
    keys = (f"{chain.keys[i]}.{pd.name}", f"{chain.keys[i + 1]}.{adc.name}")
    try:
        sheet = characterize_stages(
            pd,
            adc,
            levels=levels,
            size=size,
            input_attrs=chain.infos[i].attrs,
            keys=keys,
            colour_illuminant=colour_illuminant,
        )
    except UserError as exc:
        raise exc.located(file=loaded.file) from None
    sheet["config"] = {"file": loaded.file, "seed": loaded.config.seed}
    if out is None:
        stem = Path(loaded.file).stem if loaded.file.endswith((".yaml", ".yml")) else "sensor"
        out = Path(loaded.config.run.out) / f"characterize-{stem}"
    return write_datasheet(sheet, out), sheet

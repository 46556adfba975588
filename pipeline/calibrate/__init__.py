"""``sensorlab calibrate``: a sensor's digital twin from its own dark and flat frames.

Frames in (a manifest naming dark and flat frame files, :mod:`.manifest`; readers for
DNG/camera raw, TIFF, PNG and NumPy stacks, :mod:`.frames`), streamed into per-level
statistics with memory flat in the number of frames (:mod:`.stream`, :mod:`.measure`),
fitted per CFA channel by the EMVA 1288 photon-transfer method with a row/column
variance decomposition (:mod:`.fit`, :mod:`pipeline.emva`), the dark noise's
distribution by likelihood (:mod:`.noise_dist`), uncertainties by bootstrap over frames
(:mod:`.bootstrap`, :mod:`.analyse`); out: ``DIR/sensor.yaml`` (:mod:`.twin`),
``DIR/fit.json`` and ``DIR/report.html`` (:mod:`.writeout`).

Python API: :func:`calibrate`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.calibrate.analyse import analyse
from pipeline.calibrate.manifest import read_manifest
from pipeline.calibrate.measure import measure, noise_samples
from pipeline.calibrate.twin import sensor_rows
from pipeline.calibrate.writeout import FIT_JSON, SENSOR_YAML, write_folder

__all__ = ["FIT_JSON", "SENSOR_YAML", "calibrate"]

STANDARD = "EMVA 1288 Release 4.0 Linear, with a row/column decomposition"


def calibrate(
    manifest: str | Path,
    out: str | Path,
    *,
    replicates: int = 200,
    seed: int = 0,
    maps: bool = False,
    report: bool = True,
) -> tuple[Path, dict[str, Any]]:
    """Calibrate the sensor that took the manifest's frames; write the folder ``out``.

    Parameters
    ----------
    manifest : the YAML or CSV manifest (:mod:`pipeline.calibrate.manifest`).
    out : the output folder (replaced if it holds an earlier calibration).
    replicates : bootstrap replicates over frame pairs.
    seed : the bootstrap's and the noise sampling's seed.
    maps : also write ``dsnu_map.npy`` (averaged dark frame minus its mean, DN) and
        ``prnu_map.npy`` (the flat level near 50 % of saturation, dark removed, over its
        mean: relative gain).
    report : write ``report.html`` (False: skip it, e.g. in validation loops).

    Returns
    -------
    (folder, fit) : the folder and the contents of its ``fit.json``.
    """
    spec = read_manifest(manifest)
    measured = measure(spec)
    tile = (len(spec.tile), len(spec.tile[0]))
    t_ref = float(np.mean([lv.exposure_s for lv in measured.flats]))
    dark = min(measured.darks, key=lambda lv: abs(lv.exposure_s - t_ref))
    noise = noise_samples(
        measured.dark_entries[dark.exposure_s],
        dark.stats.mean_frame,
        dark.stats.n_frames,
        tile,
        seed=seed,
    )
    fit = analyse(
        measured,
        spec.tile,
        replicates=replicates,
        seed=seed,
        noise_dn=noise,
        nominal_black_dn=spec.black_level_dn,
    )
    mid = _mid_flat(measured, fit)
    rows, notes = sensor_rows(
        fit,
        cfa=spec.cfa,
        bits=measured.bits,
        black_level_dn=spec.black_level_dn,
        exposure_s=t_ref,
        mean_photons=mid.photons,
    )
    fit = {
        "standard": STANDARD,
        "folder": Path(out).name,
        "manifest": str(spec.file),
        "cfa": spec.cfa,
        "bits": measured.bits,
        "gain": spec.gain,
        "frame_shape": list(measured.shape),
        "levels": [
            {
                "kind": lv.kind,
                "exposure_s": lv.exposure_s,
                "photons": lv.photons,
                "frames": lv.stats.n_frames,
            }
            for lv in (*measured.darks, *measured.flats)
        ],
        **fit,
        "notes": notes,
        "sensor_yaml": {"sensor": rows},
    }
    arrays = None
    if maps:
        mean_dark = dark.stats.mean_frame
        flat = mid.stats.mean_frame - mean_dark
        arrays = {"dsnu_map": mean_dark - mean_dark.mean(), "prnu_map": flat / flat.mean()}
    folder = write_folder(out, fit, rows, notes, source=str(spec.file), maps=arrays, report=report)
    return folder, fit


def _mid_flat(measured, fit):
    """The flat level nearest half of saturation (of the first channel)."""
    ch = next(iter(fit["channels"].values()))["curves"]
    signal = np.asarray(ch["mu_y_dn"]) - ch["mu_y_dark_dn"]
    target = 0.5 * signal[ch["saturation_index"]]
    return measured.flats[int(np.argmin(np.abs(signal - target)))]

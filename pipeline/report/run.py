"""What the page of a run folder shows: summary, samples, confusion, DN histograms."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.report.figures import file_uri
from pipeline.report.histograms import dn_histogram_uri

__all__ = ["context", "dn_histograms", "run_summary"]

HISTOGRAM_IMAGES = 64  # the first recorded images enter the DN histograms


def context(folder: Path) -> dict[str, Any]:
    """Template values for ``run.html``."""
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    return {
        "title": f"run {folder.name}",
        "summary": run_summary(manifest),
        "stages": manifest.get("stages", []),
        "metrics": manifest.get("metrics") or {},
        "config_yaml": _yaml(manifest.get("config", {})),
        "samples": file_uri(folder / "samples.png"),
        "confusion": file_uri(folder / "confusion.png"),
        "histograms": dn_histograms(folder / "arrays.zarr"),
    }


def run_summary(manifest: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, value) rows: config file, time, images, speed, seeds, accuracy, versions."""
    ds = manifest.get("dataset", {})
    rows = [
        ("config", str(manifest.get("config_file"))),
        ("created (UTC)", str(manifest.get("created_utc"))),
        ("images", f"{ds.get('images')} of shape {ds.get('image_shape')} ({ds.get('encoding')})"),
        ("wall time", f"{manifest.get('wall_seconds', 0):.2f} s"),
        ("seed / sensor seed", f"{manifest.get('seed')} / {manifest.get('sensor_seed')}"),
    ]
    met = manifest.get("metrics") or {}
    if met.get("accuracy") is not None:
        lo, hi = met["accuracy_ci95"]
        rows.append(("accuracy", f"{met['accuracy']:.4f} (Wilson 95 % {lo:.4f}–{hi:.4f})"))
    if met.get("psnr_db") is not None:
        rows.append(
            (
                "raw image vs ideal sensor",
                f"PSNR {float(met['psnr_db']):.2f} dB, SSIM {float(met['ssim']):.4f} "
                f"(first {met.get('quality_images')} images; no noise, 24-bit linear ADC)",
            )
        )
    versions = manifest.get("versions", {})
    rows.append(("versions", ", ".join(f"{k} {v}" for k, v in versions.items())))
    return rows


def dn_histograms(store: Path) -> list[dict[str, str]]:
    """One histogram figure per recorded DN array: ``[{"stage", "uri"}]``."""
    if not store.is_dir():
        return []
    import zarr

    group = zarr.open_group(str(store), mode="r")
    out = []
    for name in sorted(group.array_keys(), key=lambda k: group[k].attrs.get("index", 0)):
        arr = group[name]
        if arr.attrs.get("unit") != "DN" or arr.shape[0] == 0:
            continue
        values = np.asarray(arr[:HISTOGRAM_IMAGES])
        attrs = dict(arr.attrs.get("signal_attrs") or {})
        title = f"{name}: first {len(values)} recorded images"
        out.append({"stage": name, "uri": dn_histogram_uri(values, attrs, title)})
    return out


def _yaml(config: Any) -> str:
    import yaml

    return yaml.safe_dump(config, sort_keys=False, allow_unicode=True)

"""What the page of a characterisation folder shows: EMVA 1288 figures and curves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.report.figures import file_uri

__all__ = ["HEADLINE", "context"]

# (datasheet key, label, unit) of the figures shown per channel.
HEADLINE = (
    ("system_gain_dn_per_e", "system gain K", "DN/e⁻"),
    ("quantum_efficiency_pct", "quantum efficiency", "%"),
    ("temporal_dark_noise_e", "temporal dark noise", "e⁻"),
    ("saturation_capacity_e", "saturation capacity", "e⁻"),
    ("snr_max_db", "SNR max", "dB"),
    ("dynamic_range_db", "dynamic range", "dB"),
)


def context(folder: Path) -> dict[str, Any]:
    """Template values for ``characterize.html``."""
    sheet = json.loads((folder / "datasheet.json").read_text(encoding="utf-8"))
    channels = sheet.get("channels", {})
    return {
        "title": f"characterisation {folder.name}",
        "summary": [
            ("standard", str(sheet.get("standard"))),
            ("config", str((sheet.get("config") or {}).get("file"))),
            *((f"sensor: {k}", str(v)) for k, v in (sheet.get("sensor") or {}).items()),
            *((f"method: {k}", str(v)) for k, v in (sheet.get("method") or {}).items()),
        ],
        "channel_names": list(channels),
        "headline": [
            (f"{label} [{unit}]", [_fmt(ch.get(key)) for ch in channels.values()])
            for key, label, unit in HEADLINE
        ],
        "notes": [f"{c}: {n}" for c, ch in channels.items() for n in ch.get("notes", [])],
        "photon_transfer": file_uri(folder / "photon_transfer.png"),
        "snr": file_uri(folder / "snr.png"),
    }


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, int | float) else str(value)

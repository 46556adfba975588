"""What the page of a training folder shows: summary, loss/accuracy curves, confusion."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

from pipeline.report.figures import file_uri

__all__ = ["context"]


def context(folder: Path) -> dict[str, Any]:
    """Template values for ``train.html``."""
    manifest = _json(folder / "manifest.json")
    metrics = _json(folder / "metrics.json") or manifest.get("metrics") or {}
    model = manifest.get("model") or {}
    summary = [
        ("config", str(manifest.get("config_file"))),
        ("created (UTC)", str(manifest.get("created_utc"))),
        ("model", f"{model.get('name')} ({model.get('parameters')} parameters)"),
        ("classes", ", ".join(model.get("classes", []))),
        ("seed / sensor seed", f"{manifest.get('seed')} / {manifest.get('sensor_seed')}"),
    ]
    if metrics.get("accuracy") is not None:
        lo, hi = metrics["accuracy_ci95"]
        summary.append(
            (
                "validation accuracy",
                f"{metrics['accuracy']:.4f} (Wilson 95 % {lo:.4f}–{hi:.4f}), "
                f"n = {metrics.get('n')}",
            )
        )
    config = folder / "config.yaml"
    return {
        "title": f"training {folder.name}",
        "summary": summary,
        "train_options": manifest.get("train") or {},
        "curves": file_uri(folder / "curves.png"),
        "confusion": _confusion_uri(metrics),
        "config_yaml": config.read_text(encoding="utf-8") if config.is_file() else "",
    }


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _confusion_uri(metrics: dict[str, Any]) -> str | None:
    if not metrics.get("confusion_matrix"):
        return None
    from pipeline.samples import confusion_figure

    buf = io.BytesIO()
    confusion_figure(metrics, buf)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")

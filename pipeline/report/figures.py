"""Figures as ``data:`` URIs (PNG, base64) for a self-contained page."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

__all__ = ["figure", "figure_uri", "file_uri"]

DPI = 96


def figure(width_in: float, height_in: float, **subplots: Any) -> tuple[Any, Any]:
    """A matplotlib Figure on the Agg canvas (no pyplot state) and its subplots."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(**subplots)


def figure_uri(fig: Any) -> str:
    """The figure as a ``data:image/png;base64,...`` URI."""
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=DPI)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def file_uri(path: Path) -> str | None:
    """A PNG file of the folder as a ``data:`` URI; None when the file does not exist."""
    if not path.is_file():
        return None
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")

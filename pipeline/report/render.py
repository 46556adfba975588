"""HTML from the package's Jinja2 templates (autoescaped)."""

from __future__ import annotations

from functools import cache
from typing import Any

import jinja2

__all__ = ["render", "table_text"]


@cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("pipeline.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["cell"] = table_text
    return env


def table_text(text: str) -> str:
    """A table cell's text for reading: decimals to 4 significant digits, the rest as is."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        return text
    if "." not in text and "e" not in text.lower():
        return text  # a whole number, or inf / nan spelt out
    return f"{value:.4g}"


def render(kind: str, context: dict[str, Any]) -> str:
    """The page for a folder of ``kind`` (``templates/<kind>.html``) with ``context``."""
    return _environment().get_template(f"{kind}.html").render(kind=kind, **context)

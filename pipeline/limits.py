"""Limits on what an input may ask for, each checked before anything is allocated.

A file or a number from a config, a sweep file, a model YAML, an ONNX file or the
command line can ask for any amount of memory or work. Every such request is checked
here, against a limit, before the array is allocated or the file is decoded, and
refused in one line (a :class:`~pipeline.errors.UserError`, exit status 2) that names
the input and says how to raise the limit.

Overriding: each limit is read from the environment variable
``SENSORLAB_MAX_<NAME>`` (``NAME`` in upper case, e.g.
``SENSORLAB_MAX_IMAGE_PIXELS=100000000 sensorlab run big.yaml``) when it is set, else
the default below. One mechanism for all of them, so a limit can be raised for one
command without editing a config.

=====================  ===============  ==================================================
name                   default          bounds
=====================  ===============  ==================================================
``image_pixels``       16,777,216       pixels (H·W) of one image anywhere in the chain
``decoded_pixels``     67,108,864       pixels of an image file, read from its header
``dataset_images``     10,000,000       images in one dataset file or split
``batch_bytes``        4 GiB            one batch of one stage's output (``run.batch_size``)
``array_bytes``        1 GiB            one array read from a file (.npy, .npz member)
``zip_ratio``          200              a zip member's size / its compressed size (> 16 MiB)
``layer_params``       100,000,000      parameters of one CNN layer
``model_params``       200,000,000      parameters of a whole CNN
``activation_values``  50,000,000       values of one layer's output, per image
``sweep_cells``        100,000          cells of one sweep
``workers``            256              ``--workers`` processes
``levels``             10,000           ``characterize --levels``
``name_chars``         200              characters of a run, model or sweep folder name
``yaml_bytes``         10,000,000       bytes of one YAML file or ``--set`` value
``yaml_depth``         100              nesting depth of YAML and of ``--set`` key paths
=====================  ===============  ==================================================

Two bounds live in ``sensors`` (which imports nothing from ``pipeline`` but the stage
contract): the PSF kernel half-width, ``sensors.psf.MAX_KERNEL_RADIUS_PX`` (512 px,
raised by the same kind of variable, ``SENSORLAB_MAX_KERNEL_RADIUS_PX``), and the scene's
``MAX_PHOTONS_PER_PX`` (1e12, a physical bound, not overridable).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from pipeline.errors import UserError

__all__ = ["LIMITS", "Limit", "check", "limit"]

ENV_PREFIX = "SENSORLAB_MAX_"


@dataclass(frozen=True)
class Limit:
    """One limit: its name, default and what it counts (for the error message)."""

    name: str
    default: int
    counts: str

    @property
    def env(self) -> str:
        """The environment variable that overrides it."""
        return ENV_PREFIX + self.name.upper()


LIMITS: dict[str, Limit] = {
    lim.name: lim
    for lim in (
        Limit("image_pixels", 1 << 24, "pixels per image"),
        Limit("decoded_pixels", 1 << 26, "pixels in an image file"),
        Limit("dataset_images", 10_000_000, "images"),
        Limit("batch_bytes", 4 << 30, "bytes in one stage's output"),
        Limit("array_bytes", 1 << 30, "bytes in one array"),
        Limit("zip_ratio", 200, "times its compressed size"),
        Limit("layer_params", 100_000_000, "parameters in one layer"),
        Limit("model_params", 200_000_000, "parameters in a model"),
        Limit("activation_values", 50_000_000, "values in one layer output per image"),
        Limit("sweep_cells", 100_000, "cells"),
        Limit("workers", 256, "workers"),
        Limit("levels", 10_000, "levels"),
        Limit("name_chars", 200, "characters"),
        Limit("yaml_bytes", 10_000_000, "bytes"),
        Limit("yaml_depth", 100, "levels of nesting"),
    )
}


def limit(name: str) -> int:
    """The current value of limit ``name``: ``SENSORLAB_MAX_<NAME>`` if set, else its default.

    Raises
    ------
    UserError : the environment variable is not a positive integer.
    """
    lim = LIMITS[name]
    text = os.environ.get(lim.env)
    if text is None or not text.strip():
        return lim.default
    try:
        value = int(text.strip().replace("_", ""))
    except ValueError:
        value = 0
    if value < 1:
        raise UserError(f"{lim.env} must be a positive integer, got {text[:40]!r}")
    return value


def check(
    name: str,
    value: float,
    *,
    what: str,
    file: str | os.PathLike | None = None,
    key: str | None = None,
) -> None:
    """Refuse ``value`` above limit ``name`` in one line naming ``what`` and the override.

    Parameters
    ----------
    name : a key of :data:`LIMITS`.
    value : the requested amount (a float is allowed: ``1e300`` must be refused, not cast).
    what : what asked for it, e.g. ``"x in data.npz"``.
    file, key : where it came from, for the error line.
    """
    bound = limit(name)
    if value != value or value > bound:  # NaN is refused too
        lim = LIMITS[name]
        shown = f"{value:,}" if isinstance(value, int) else f"{value:.3g}"
        raise UserError(
            f"{what} asks for {shown} {lim.counts}, more than the limit of {bound:,} "
            f"(set {lim.env} to allow more)",
            file=file,
            key=key,
        )

"""The sRGB transfer functions (IEC 61966-2-1), the one implementation in the project.

Both are sign-symmetric (``f(-v) = -f(v)``, as scRGB extends sRGB), so noise below
black keeps its sign instead of becoming NaN, and neither clips: values above 1 follow
the same power law. A caller that needs [0, 1] clips explicitly.

References
----------
IEC 61966-2-1:1999, Multimedia systems and equipment — Colour measurement and
management — Part 2-1: Default RGB colour space — sRGB, sections 5.2 (decoding) and
5.3 (encoding).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["linear_to_srgb", "srgb_to_linear"]

# IEC 61966-2-1 sRGB transfer constants.
_SRGB_KNEE_ENCODED = 0.04045
_SRGB_KNEE_LINEAR = 0.0031308
_SRGB_SLOPE = 12.92
_SRGB_OFFSET = 0.055
_SRGB_GAMMA = 2.4


def _as_float(values: ArrayLike) -> np.ndarray:
    v = np.asarray(values)
    return v if np.issubdtype(v.dtype, np.floating) else v.astype(np.float64)


def srgb_to_linear(encoded: ArrayLike) -> np.ndarray:
    """Inverse sRGB transfer function: encoded values → linear light.

    ``L = V / 12.92`` for ``|V| <= 0.04045``, else ``((|V| + 0.055) / 1.055) ** 2.4``,
    with the sign of ``V``.

    Parameters
    ----------
    encoded : sRGB-encoded values, nominally in [0, 1]; any shape.

    Returns
    -------
    Linear values, same shape; float input keeps its dtype, other input becomes float64.

    References
    ----------
    IEC 61966-2-1:1999, section 5.2.
    """
    v = _as_float(encoded)
    a = np.abs(v)
    lin = np.where(
        a <= _SRGB_KNEE_ENCODED,
        a / _SRGB_SLOPE,
        ((a + _SRGB_OFFSET) / (1.0 + _SRGB_OFFSET)) ** _SRGB_GAMMA,
    )
    return np.copysign(lin, v).astype(v.dtype, copy=False)


def linear_to_srgb(linear: ArrayLike) -> np.ndarray:
    """sRGB transfer function: linear light → encoded values.

    ``V = 12.92 L`` for ``|L| <= 0.0031308``, else ``1.055 |L| ** (1 / 2.4) - 0.055``,
    with the sign of ``L``.

    Parameters
    ----------
    linear : linear values, nominally in [0, 1]; any shape.

    Returns
    -------
    Encoded values, same shape; float input keeps its dtype, other input becomes float64.

    References
    ----------
    IEC 61966-2-1:1999, section 5.3.
    """
    v = _as_float(linear)
    a = np.abs(v)
    enc = np.where(
        a <= _SRGB_KNEE_LINEAR,
        a * _SRGB_SLOPE,
        (1.0 + _SRGB_OFFSET) * a ** (1.0 / _SRGB_GAMMA) - _SRGB_OFFSET,
    )
    return np.copysign(enc, v).astype(v.dtype, copy=False)

"""``procedural``: a seeded, generated RGB dataset where both shape and colour decide the class.

Ten classes, ``<colour>_<shape>`` for colour in (red, blue) and shape in (disk, square,
triangle, cross, ring): every shape comes in both colours and every colour in all five
shapes, so neither alone tells the class. A classifier must see the shape's outline
(resolution, blur, noise, demosaicing artefacts hurt) and its hue (a monochrome sensor,
or colour noise, loses the red/blue distinction). The two colour families, red (hue
345..15°) and azure blue (hue 195..225°), have about the same peak-to-luminance ratio,
so brightness hardly gives the colour away.

Each image is rendered in linear light:

- background: a low-saturation colour of random hue with a smooth random texture and
  fine grain, crossed by up to three thin lines of random colour (clutter);
- the shape: random position, scale, rotation, a striped texture, and a luminance
  ``exp(±0.2..1.2)`` times the background's (so contrast is sometimes small);
- illumination: the scene is scaled so its brightest value is ``10**-u`` with ``u``
  uniform in ``[0, illumination_decades]`` (default 1.5 decades), times a linear
  gradient (down to 0.6) and a slight illuminant tint.

So dark, low-contrast images are common enough that quantisation to a few bits hurts.
Image ``i`` of a split is drawn from ``default_rng([seed, split_id, i])`` (split_id 0,
1, 2 for train, val, test), so images are the same whatever the batch size, never
stored, and the splits never share an image. Labels are balanced: every block of ten
consecutive images holds each class once, in a seeded order.

Encodings: ``srgb8`` (default, like ordinary image files), or ``linear16`` / ``float``,
the recommended choice for bit-depth studies. 8-bit sRGB has 256 levels per channel; in
linear light its steps are 0.03 % of full scale in deep shadows but 0.36 % at mid-grey and
0.9 % near white, where a 12-bit ADC resolves 0.024 %. A sensor simulated on 8-bit sRGB
input therefore cannot show more than the source's own quantisation above about 8 bits.
linear16 (steps of 1/65535) and float keep the rendered linear light without that cap.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, field_validator

from pipeline.datasets.base import Dataset
from pipeline.datasets.splits import SPLIT_IDS, SPLITS, CommonFields
from sensors.colour import linear_to_srgb, srgb_to_linear

__all__ = ["CLASS_NAMES", "COLOURS", "SHAPES", "ProceduralConfig", "ProceduralDataset", "render"]

SHAPES = ("disk", "square", "triangle", "cross", "ring")
COLOURS = ("red", "blue")
CLASS_NAMES = tuple(f"{c}_{s}" for c in COLOURS for s in SHAPES)  # label = colour*5 + shape
_N_CLASSES = len(CLASS_NAMES)

_HUE_CENTRE_DEG = {"red": 0.0, "blue": 210.0}
_HUE_JITTER_DEG = 15.0
_FG_SATURATION = (0.35, 0.85)
_BG_SATURATION_MAX = 0.3
_LOG_CONTRAST = (0.2, 1.2)  # |ln(shape luminance / background luminance)|
_SCALE = (0.2, 0.34)  # shape size r as a fraction of min(H, W)
_SHIFT = 0.15  # centre offset, fraction of min(H, W)
_MAX_LINES = 3
_BG_TEXTURE_CELLS = 6  # the smooth background texture is drawn on a 6x6 grid, upsampled
_LUMA = np.array([0.2126, 0.7152, 0.0722], np.float32)  # Rec. 709 / sRGB luminance weights
_ENCODING_DTYPE = {"srgb8": np.uint8, "linear16": np.uint16, "float": np.float32}
_LABEL_TAG = 0x1AB  # fourth key element of the label generators (image keys have three)

# Layout of each image's uniform draws.
_U_FIELDS = (
    "cx cy scale angle fg_hue fg_sat bg_hue bg_sat log_contrast contrast_sign illum "
    "grad_angle grad_depth fg_tex_amp fg_tex_freq fg_tex_angle fg_tex_phase bg_tex_amp "
    "grain_amp n_lines tint_r tint_b"
).split()
_U = {name: i for i, name in enumerate(_U_FIELDS)}
_U_LINES = len(_U_FIELDS)  # then per line: x0 y0 x1 y1 hue sat log_luminance
_N_UNIFORM = _U_LINES + 7 * _MAX_LINES

_MIN_SIZE, _MAX_SIZE = 8, 4096
Size = Annotated[int, Field(ge=_MIN_SIZE, le=_MAX_SIZE)]


class ProceduralConfig(CommonFields):
    """A generated dataset: 10 classes (red/blue × disk/square/triangle/cross/ring)."""

    kind: Literal["procedural"] = Field(description="Generated shapes.")
    n: int = Field(
        2000,
        ge=1,
        le=10**9,
        description="Images per split (train, val and test have n each; all has 3n).",
    )
    size: tuple[Size, Size] = Field(
        (32, 32), description="Image size in px: one number for square images, or [H, W]."
    )
    encoding: Literal["srgb8", "linear16", "float"] = Field(
        "srgb8",
        description="How images are stored: srgb8 (8-bit sRGB), linear16 (16-bit linear) or "
        "float (linear); use linear16 or float for bit-depth studies: 8-bit sRGB steps "
        "(up to 0.9 % of full scale) cap what a 10-14-bit sensor could show.",
    )
    illumination_decades: float = Field(
        1.5,
        ge=0.0,
        le=4.0,
        description="Range of scene brightness in decades of linear light: each image's "
        "peak is 10**-u of full scale, u uniform in [0, this].",
    )

    @field_validator("size", mode="before")
    @classmethod
    def _square_or_pair(cls, value: Any) -> Any:
        """One number means a square image; check the range here for a one-key message."""
        pair = [value, value] if isinstance(value, (int, float, str)) else value
        ok = isinstance(pair, (list, tuple)) and len(pair) == 2
        ok = ok and all(isinstance(v, int) and not isinstance(v, bool) for v in pair)
        if not ok or not all(_MIN_SIZE <= v <= _MAX_SIZE for v in pair):
            raise ValueError(
                f"must be a whole number of px from {_MIN_SIZE} to {_MAX_SIZE}, or [H, W] "
                f"of them, got {value!r}"
            )
        return tuple(pair)


class ProceduralDataset(Dataset):
    """The generated dataset described in the module docstring.

    Parameters
    ----------
    n : images per split.
    size : ``(H, W)`` in px.
    split : ``train``, ``val``, ``test`` or ``all`` (the three splits in that order).
    seed : the dataset's seed.
    encoding : ``srgb8``, ``linear16`` or ``float``.
    illumination_decades : brightness range in decades of linear light.
    limit : at most this many images.
    """

    class_names = CLASS_NAMES

    def __init__(
        self,
        n: int = 2000,
        size: tuple[int, int] = (32, 32),
        *,
        split: str = "test",
        seed: int = 0,
        encoding: str = "srgb8",
        illumination_decades: float = 1.5,
        limit: int | None = None,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
        self.n_per_split = int(n)
        self.split = split
        self.seed = int(seed)
        self.illumination_decades = float(illumination_decades)
        self.encoding = encoding
        self.dtype = np.dtype(_ENCODING_DTYPE[encoding])
        self.image_shape = (int(size[0]), int(size[1]), 3)
        total = self.n_per_split * (3 if split == "all" else 1)
        self._len = total if limit is None else min(total, int(limit))

    def __len__(self) -> int:
        return self._len

    def _keys(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Split id and index within the split of images ``[start, stop)``."""
        index = np.arange(start, stop, dtype=np.int64)
        if self.split == "all":
            return index // self.n_per_split, index % self.n_per_split
        return np.full(len(index), SPLIT_IDS[self.split], np.int64), index

    def image_keys(self, start: int, stop: int) -> np.ndarray:
        """``split_id · 2⁴⁰ + index``: unique per generated image, the same in ``all``."""
        split_ids, index = self._keys(start, stop)
        return split_ids * (1 << 40) + index

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        x, y, _ = self.read_with_coverage(start, stop)
        return x, y

    def read_with_coverage(
        self, start: int, stop: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Like :meth:`read`, plus each shape's pixel coverage ``(n, H, W)`` in [0, 1]
        (the ground-truth segmentation)."""
        start, stop = self._check_range(start, stop)
        split_ids, index = self._keys(start, stop)
        linear, labels, coverage = render(
            self.seed, split_ids, index, self.image_shape[:2], self.illumination_decades
        )
        return encode(linear, self.encoding), labels, coverage


def encode(linear: np.ndarray, encoding: str) -> np.ndarray:
    """Linear light in [0, 1] as stored: ``srgb8``, ``linear16`` or ``float`` (float32)."""
    if encoding == "srgb8":
        in_range = np.clip(np.asarray(linear, dtype=np.float32), 0.0, 1.0)  # 8-bit codes: clip
        return np.rint(linear_to_srgb(in_range) * 255.0).astype(np.uint8)
    if encoding == "linear16":
        return np.rint(np.clip(linear, 0.0, 1.0) * 65535.0).astype(np.uint16)
    if encoding == "float":
        return linear.astype(np.float32, copy=False)
    raise ValueError(f"unknown encoding {encoding!r}")


def labels_for(seed: int, split_ids: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Class of each image: every block of 10 consecutive images holds each class once."""
    labels = np.empty(len(index), np.int64)
    perms: dict[tuple[int, int], np.ndarray] = {}
    for j, (s, i) in enumerate(zip(split_ids.tolist(), index.tolist(), strict=True)):
        block = i // _N_CLASSES
        perm = perms.get((s, block))
        if perm is None:
            rng = np.random.default_rng([seed, s, block, _LABEL_TAG])
            perm = perms[(s, block)] = rng.permutation(_N_CLASSES)
        labels[j] = perm[i % _N_CLASSES]
    return labels


def render(
    seed: int,
    split_ids: np.ndarray,
    index: np.ndarray,
    size: tuple[int, int],
    illumination_decades: float = 1.5,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render images in linear light.

    Parameters
    ----------
    seed : the dataset's seed.
    split_ids : ``(n,)`` split of each image (0 train, 1 val, 2 test).
    index : ``(n,)`` index of each image within its split.
    size : ``(H, W)`` in px.
    illumination_decades : brightness range in decades.

    Returns
    -------
    linear : ``(n, H, W, 3)`` float32 linear light in [0, 1].
    labels : ``(n,)`` int64.
    coverage : ``(n, H, W)`` float32, the fraction of each pixel the shape covers.
    """
    h, w = int(size[0]), int(size[1])
    n = len(index)
    if n == 0:
        empty = np.empty((0, h, w), np.float32)
        return empty[..., None].repeat(3, axis=-1), np.empty(0, np.int64), empty
    labels = labels_for(seed, split_ids, index)
    shape_id, colour_id = labels % len(SHAPES), labels // len(SHAPES)
    u, z_tex, z_grain = _draw(seed, split_ids, index, h, w)
    u = u.astype(np.float32)
    f = {name: u[:, i] for name, i in _U.items()}
    side = float(min(h, w))
    col = lambda a: a[:, None, None]  # noqa: E731  (n,) -> (n, 1, 1)

    # Pixel-centre coordinates relative to each shape's centre, rotated into its frame.
    cx = np.float32(w / 2) + (2 * f["cx"] - 1) * np.float32(_SHIFT * side)
    cy = np.float32(h / 2) + (2 * f["cy"] - 1) * np.float32(_SHIFT * side)
    r = (_SCALE[0] + (_SCALE[1] - _SCALE[0]) * f["scale"]) * np.float32(side)
    angle = np.float32(2 * np.pi) * f["angle"]
    xs = np.arange(w, dtype=np.float32) + np.float32(0.5)
    ys = np.arange(h, dtype=np.float32) + np.float32(0.5)
    dx = xs[None, None, :] - col(cx)
    dy = ys[None, :, None] - col(cy)
    cos_a, sin_a = col(np.cos(angle)), col(np.sin(angle))
    pu = cos_a * dx + sin_a * dy
    pv = -sin_a * dx + cos_a * dy
    sdf = np.empty((n, h, w), np.float32)
    for k, fn in enumerate(_SDF):
        sel = np.flatnonzero(shape_id == k)
        if len(sel):
            sdf[sel] = fn(pu[sel], pv[sel], r[sel, None, None].astype(np.float32))
    coverage = np.clip(0.5 - sdf, 0.0, 1.0)  # one-pixel-wide antialiased edge

    # Background: random low-saturation hue, smooth texture, fine grain.
    # Its luminance is 1 before texture; everything is scaled by the illumination at the end.
    bg = _unit_luminance_rgb(360 * f["bg_hue"], _BG_SATURATION_MAX * f["bg_sat"])
    texture = _upsample(z_tex, h, w)
    shade = np.exp(0.35 * col(f["bg_tex_amp"]) * texture + 0.08 * col(f["grain_amp"]) * z_grain)
    img = bg[:, None, None, :] * shade[..., None]

    # Clutter: up to three thin lines of random colour behind the shape.
    n_lines = np.floor(f["n_lines"] * (_MAX_LINES + 1))
    for j in range(_MAX_LINES):
        lu = u[:, _U_LINES + 7 * j : _U_LINES + 7 * (j + 1)]
        p0 = np.stack([lu[:, 0] * w, lu[:, 1] * h], axis=1)
        p1 = np.stack([lu[:, 2] * w, lu[:, 3] * h], axis=1)
        alpha = np.clip(1.0 - _segment_distance(xs, ys, p0, p1), 0.0, 1.0)
        alpha *= col((n_lines > j).astype(np.float32))  # images with fewer lines: none
        line_rgb = _unit_luminance_rgb(360 * lu[:, 4], 0.5 * lu[:, 5])
        line_rgb *= np.exp(1.4 * lu[:, 6] - 0.7)[:, None]
        _blend(img, line_rgb[:, None, None, :], alpha)

    # The shape: family hue, luminance exp(±0.2..1.2) x background's, striped texture.
    hue = np.asarray([_HUE_CENTRE_DEG[COLOURS[c]] for c in colour_id])
    hue = hue + (2 * f["fg_hue"] - 1) * _HUE_JITTER_DEG
    sat = _FG_SATURATION[0] + (_FG_SATURATION[1] - _FG_SATURATION[0]) * f["fg_sat"]
    log_k = _LOG_CONTRAST[0] + (_LOG_CONTRAST[1] - _LOG_CONTRAST[0]) * f["log_contrast"]
    log_k = np.where(f["contrast_sign"] < 0.5, -log_k, log_k)
    fg = _unit_luminance_rgb(hue, sat) * np.exp(log_k)[:, None]
    tex_angle = np.pi * f["fg_tex_angle"]
    freq = 0.08 + 0.25 * f["fg_tex_freq"]  # cycles per px
    phase_px = col(np.cos(tex_angle)) * pu + col(np.sin(tex_angle)) * pv
    stripes = 1.0 + 0.3 * col(f["fg_tex_amp"]) * np.sin(
        2 * np.pi * col(freq) * phase_px + 2 * np.pi * col(f["fg_tex_phase"])
    )
    _blend(img, fg[:, None, None, :] * stripes[..., None], coverage)

    # Illumination: peak 10**-u of full scale, a linear gradient, an illuminant tint.
    peak = img.reshape(n, -1).max(axis=1)
    level = 10.0 ** (-illumination_decades * f["illum"]) / peak
    grad_angle = 2 * np.pi * f["grad_angle"]
    along = (col(np.cos(grad_angle)) * (xs[None, None, :] - w / 2)) + col(np.sin(grad_angle)) * (
        ys[None, :, None] - h / 2
    )
    along = along / (0.5 * math.hypot(h, w))  # in [-1, 1]
    gradient = 1.0 - 0.4 * col(f["grad_depth"]) * (0.5 + 0.5 * along)
    ones = np.ones(n, np.float32)
    tint = np.stack([1 + 0.1 * (f["tint_r"] - 0.5), ones, 1 + 0.1 * (f["tint_b"] - 0.5)], 1)
    tint = tint / tint.max(axis=1, keepdims=True)
    img *= (col(level) * gradient)[..., None]
    img *= tint[:, None, None, :]
    np.clip(img, 0.0, 1.0, out=img)
    return img, labels, coverage


def _blend(img: np.ndarray, colour: np.ndarray, alpha: np.ndarray) -> None:
    """``img = img * (1 - alpha) + colour * alpha``, in place; ``alpha`` is ``(n, H, W)``."""
    layer = colour - img
    layer *= alpha[..., None]
    img += layer


def _draw(
    seed: int, split_ids: np.ndarray, index: np.ndarray, h: int, w: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each image's random numbers from its own generator: uniforms, texture and grain normals."""
    n = len(index)
    u = np.empty((n, _N_UNIFORM))
    cells = _BG_TEXTURE_CELLS
    z_tex = np.empty((n, cells, cells), np.float32)
    z_grain = np.empty((n, h, w), np.float32)
    for j, (s, i) in enumerate(zip(split_ids.tolist(), index.tolist(), strict=True)):
        rng = np.random.default_rng([seed, s, i])
        u[j] = rng.random(_N_UNIFORM)
        z_tex[j] = rng.standard_normal((cells, cells), dtype=np.float32)
        z_grain[j] = rng.standard_normal((h, w), dtype=np.float32)
    return u, z_tex, z_grain


def _unit_luminance_rgb(hue_deg: np.ndarray, saturation: np.ndarray) -> np.ndarray:
    """Linear RGB ``(n, 3)`` of the sRGB colour (hue, saturation, value 1) at luminance 1."""
    h = (np.asarray(hue_deg, np.float64) % 360.0) / 60.0
    s = np.asarray(saturation, np.float64)
    # HSV -> RGB with V = 1: channel k is 1 - s * clip(min(m, 4 - m), 0, 1), m = (k + h) mod 6.
    k = np.array([5.0, 3.0, 1.0])
    m = (k[None, :] + h[:, None]) % 6.0
    srgb = 1.0 - s[:, None] * np.clip(np.minimum(m, 4.0 - m), 0.0, 1.0)
    lin = srgb_to_linear(srgb)
    return (lin / (lin @ _LUMA.astype(np.float64))[:, None]).astype(np.float32)


def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """``(n_out, n_in)`` linear interpolation from ``n_in`` cell centres to ``n_out`` pixels."""
    pos = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
    pos = np.clip(pos, 0, n_in - 1)
    lo = np.minimum(np.floor(pos).astype(int), n_in - 2) if n_in > 1 else np.zeros(n_out, int)
    frac = pos - lo
    mat = np.zeros((n_out, n_in), np.float32)
    mat[np.arange(n_out), lo] += 1 - frac
    if n_in > 1:
        mat[np.arange(n_out), lo + 1] += frac
    return mat


def _upsample(z: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear upsampling of ``(n, c, c)`` to ``(n, h, w)``."""
    ay = _interp_matrix(h, z.shape[1])
    ax = _interp_matrix(w, z.shape[2])
    return np.matmul(np.matmul(ay, z), ax.T)


def _segment_distance(xs: np.ndarray, ys: np.ndarray, p0: np.ndarray, p1: np.ndarray) -> np.ndarray:
    """Distance in px from each pixel centre to the segment ``p0``-``p1`` (``(n, 2)`` each)."""
    px = xs[None, None, :] - p0[:, 0, None, None]
    py = ys[None, :, None] - p0[:, 1, None, None]
    d = (p1 - p0).astype(np.float32)
    length2 = np.maximum((d**2).sum(axis=1), 1e-6)[:, None, None]
    t = np.clip((px * d[:, 0, None, None] + py * d[:, 1, None, None]) / length2, 0.0, 1.0)
    return np.hypot(px - t * d[:, 0, None, None], py - t * d[:, 1, None, None]).astype(np.float32)


# Signed distance functions (px; negative inside) of the five shapes, size r (px), in the
# shape's own frame (u, v). Areas: disk 3.14 r², square 2.89 r², triangle 2.29 r²,
# cross 2.31 r², ring 2.36 r².
def _sdf_box(u: np.ndarray, v: np.ndarray, bu: np.ndarray, bv: np.ndarray) -> np.ndarray:
    qu, qv = np.abs(u) - bu, np.abs(v) - bv
    outside = np.hypot(np.maximum(qu, 0), np.maximum(qv, 0))
    return outside + np.minimum(np.maximum(qu, qv), 0)


def _sdf_disk(u: np.ndarray, v: np.ndarray, r: np.ndarray) -> np.ndarray:
    return np.hypot(u, v) - r


def _sdf_square(u: np.ndarray, v: np.ndarray, r: np.ndarray) -> np.ndarray:
    return _sdf_box(u, v, 0.85 * r, 0.85 * r)


def _sdf_triangle(u: np.ndarray, v: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Equilateral triangle of side 2a, a = 1.15 r, centred on its centroid (Quilez's SDF)."""
    a = 1.15 * r
    k = math.sqrt(3.0)
    pu = np.abs(u) - a
    pv = v + a / k
    fold = pu + k * pv > 0
    pu, pv = np.where(fold, (pu - k * pv) / 2, pu), np.where(fold, (-k * pu - pv) / 2, pv)
    pu = pu - np.clip(pu, -2 * a, 0)
    return -np.hypot(pu, pv) * np.sign(pv)


def _sdf_cross(u: np.ndarray, v: np.ndarray, r: np.ndarray) -> np.ndarray:
    arm = 0.35 * r
    return np.minimum(_sdf_box(u, v, r, arm), _sdf_box(u, v, arm, r))


def _sdf_ring(u: np.ndarray, v: np.ndarray, r: np.ndarray) -> np.ndarray:
    return np.abs(np.hypot(u, v) - 0.75 * r) - 0.25 * r


_SDF = (_sdf_disk, _sdf_square, _sdf_triangle, _sdf_cross, _sdf_ring)

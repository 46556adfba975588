"""The stage contract: the one module that ``sensors/`` and third-party plugins import.

A stage is a small object built from validated parameters. It declares the unit
it takes and the unit it gives, learns the shape of what it will receive before
any data flows (:meth:`Stage.setup`), and maps one batch to the next
(:meth:`Stage.process`). It holds no global state; randomness comes from
generators derived per image (:meth:`Stage.image_rngs`), per image tile
(:meth:`Stage.tile_rng`) or per sensor (:meth:`Stage.pattern_rng`), never from one
stream, so a run gives the same arrays bit for bit whatever the batch size, the number of
threads (:meth:`Stage.map_tiles`, :func:`worker_threads`) or the order in which batches run.

A plugin package exposes a stage class through the entry-point group
``sensorlab.stages``::

    [project.entry-points."sensorlab.stages"]
    my_stage = "my_package.module:MyStage"
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from enum import Enum
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

# The worker pool lives in pipeline.threads; re-exported here, the one module sensors import.
from pipeline.threads import THREADS_ENV, run_parallel, worker_threads

__all__ = [
    "SIGNAL_ATTRS",
    "THREADS_ENV",
    "TILE_ELEMENTS",
    "Batch",
    "SignalAttr",
    "SignalInfo",
    "Stage",
    "StageError",
    "StageParams",
    "Tile",
    "TileGroup",
    "Unit",
    "image_groups",
    "param",
    "read_attr",
    "run_parallel",
    "signal_attr",
    "tile_groups",
    "tile_rows",
    "worker_threads",
]

ENTRY_POINT_GROUP = "sensorlab.stages"

# Domain tags in the third place of every seed-sequence key. Image and fixed-pattern keys
# have the same length (4) and differ in the tag: NumPy's SeedSequence pads shorter
# entropy with zeros, so keys of different lengths could otherwise coincide. Tile keys
# (tiles after an image's first, which uses the image key) have a tag of their own, and
# so do per-image line draws that every tile of an image shares (e.g. column noise).
_IMAGE_DOMAIN = 0
_PATTERN_DOMAIN = 1
_TILE_DOMAIN = 2
_IMAGE_LINE_DOMAIN = 3

#: The most elements of one image that one generator draws per-pixel noise for. A larger
#: image is cut into row bands (tiles) of at most this many elements (at least one row),
#: each with its own generator, so that tiles can be drawn on several threads; an image
#: of at most this many elements (the 32×32 default, up to 512×512 px for a mosaic) is one
#: tile whose generator is the image's own (:meth:`Stage.image_rngs`). 2**18 float64
#: values are 2 MiB: a tile's temporaries stay in cache.
TILE_ELEMENTS = 1 << 18


class Unit(str, Enum):
    """Physical unit of the values a stage takes or gives."""

    IMAGE = "image"  # dataset pixel values as stored (8-bit sRGB, 16-bit, float)
    PHOTONS = "photons"  # mean or sampled photons per pixel per exposure
    ELECTRONS = "electrons"
    VOLTS = "volts"
    DN = "DN"  # digital numbers, ADC codes
    UNITLESS = "unitless"  # normalised values, e.g. the RGB image a CNN takes, or logits

    def __str__(self) -> str:
        return self.value


class StageError(ValueError):
    """A stage's parameters or input do not fit; ``key`` names the parameter at fault.

    The runner turns it into one line naming the config file and key path.
    """

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class StageParams(BaseModel):
    """Base class of a stage's parameters: unknown keys are errors, values are frozen."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False
    )


def param(
    default: Any = ..., *, unit: str = "", doc: str = "", path: bool = False, **constraints: Any
) -> Any:
    """A parameter field with its unit and documentation (shown by ``sensorlab stages``).

    Parameters
    ----------
    default : the default value (``...`` for a required parameter).
    unit : the unit, e.g. ``"e-"``, ``"DN"``, ``"px"``, ``"s"``; empty when unitless.
    doc : one sentence saying what the parameter is.
    path : the value (when a string) is a file path; the runner resolves a relative one
        against the config file's folder.
    constraints : pydantic constraints such as ``ge=1, le=24``.
    """
    extra: dict[str, Any] = {"unit": unit} if unit else {}
    if path:
        extra["path"] = True
    return Field(default, description=doc, json_schema_extra=extra or None, **constraints)


@dataclasses.dataclass(frozen=True)
class SignalAttr:
    """One key of :attr:`SignalInfo.attrs`: what it holds, in which unit, who sets it.

    Attributes
    ----------
    key : the key.
    unit : the unit of the value ("" for a name, a flag or a structure).
    set_by : the stage (or dataset) that sets it.
    meaning : what the value is and who reads it.
    """

    key: str
    unit: str
    set_by: str
    meaning: str


# The one declaration of the facts a stage passes to later ones in SignalInfo.attrs. A stage
# sets only keys declared here and a reader reads them through SignalInfo.attr, so a
# misspelt or undocumented key fails at once (tests/test_stage.py checks the shipped chain).
SIGNAL_ATTRS: Mapping[str, SignalAttr] = MappingProxyType(
    {
        a.key: a
        for a in (
            SignalAttr(
                "encoding",
                "",
                "dataset",
                "How the image values encode light: srgb8, linear16 or float; the scene "
                "stage linearises by it.",
            ),
            SignalAttr(
                "wavelength_nm",
                "nm",
                "scene",
                "Centre wavelengths of the channels: the R, G, B bands, or the spectral "
                "bands when spectral is set; the optics' PSFs per channel.",
            ),
            SignalAttr(
                "spectral",
                "",
                "scene (spectral modes)",
                "True: the channels are spectral bands centred on wavelength_nm, photons per "
                "band; the photodetector integrates them with its QE curves.",
            ),
            SignalAttr(
                "illuminant",
                "",
                "scene (spectral modes)",
                "Name of the light's spectrum (a colour.SDS_ILLUMINANTS key or flat_photons).",
            ),
            SignalAttr(
                "exposure_s",
                "s",
                "scene (lux mode), photodetector",
                "Exposure time; the photodetector's dark current integrates over it.",
            ),
            SignalAttr("f_number", "", "scene (lux mode)", "Lens f-number; the optics' Airy PSF."),
            SignalAttr(
                "pixel_pitch_um", "µm", "scene (lux mode)", "Pixel pitch; the optics' Airy PSF."
            ),
            SignalAttr(
                "photons_at_white",
                "photons",
                "scene (unless mean_photons)",
                "Mean photons per sensor pixel per exposure that a white input pixel gives.",
            ),
            SignalAttr(
                "cfa",
                "",
                "photodetector",
                "Colour filter array: a 2×2 Bayer name (RGGB, ...), a named tile, mono or "
                "stacked; the raw stage demosaics by it.",
            ),
            SignalAttr(
                "cfa_tile",
                "",
                "photodetector (mosaic only)",
                "The CFA's repeating tile, rows of channel letters (R, G, B, W).",
            ),
            SignalAttr(
                "full_well_e",
                "e⁻",
                "photodetector",
                "Full-well capacity; the ADC maps it to its top code by default.",
            ),
            SignalAttr(
                "conversion_gain_uv_per_e",
                "µV/e⁻",
                "a stage that gives volts (none shipped)",
                "Pixel conversion gain; the ADC's system gain for volts input.",
            ),
            SignalAttr("bits", "bits", "adc", "ADC resolution: codes 0 .. 2**bits - 1."),
            SignalAttr(
                "black_level_dn",
                "DN",
                "adc, raw",
                "Code of zero signal (the raw stage passes on the level it subtracted).",
            ),
            SignalAttr(
                "white_level_dn",
                "DN",
                "adc, raw",
                "Code that the raw stage normalises to 1.0 (the ADC: the full well's code).",
            ),
            SignalAttr("curve", "", "adc", "ADC transfer curve: linear, log, sqrt or table."),
            SignalAttr(
                "system_gain_dn_per_e",
                "DN/e⁻",
                "adc",
                "Total linear gain before companding (None for volts without a conversion "
                "gain); EMVA 1288's K.",
            ),
            SignalAttr(
                "adc_transfer",
                "",
                "adc",
                "Keyword arguments of sensors.adc.quantize, so dequantize(codes, **value) "
                "linearises the codes.",
            ),
            SignalAttr(
                "encode", "", "raw", "Transfer curve of the CNN input: linear, srgb or gamma."
            ),
            SignalAttr("raw_output", "", "raw", "planes (RGB) or mosaic."),
            SignalAttr(
                "linearized",
                "",
                "raw",
                "True when the raw stage undid the ADC's curve (dequantised the codes).",
            ),
            SignalAttr(
                "spectral_qe",
                "e⁻/photon",
                "photodetector (spectral input)",
                "QE curves of the R, G, B (and W) photosites on spectral_qe_nm, rows of "
                "floats; the raw stage's illuminant white balance and fitted CCM use them.",
            ),
            SignalAttr(
                "spectral_qe_nm",
                "nm",
                "photodetector (spectral input)",
                "Band centres of spectral_qe (the scene's wavelength_nm).",
            ),
            SignalAttr(
                "wb_gains",
                "",
                "raw",
                "The fixed R, G, B white-balance gains the raw stage applied (given, or from "
                "the illuminant); per-image methods leave 1, 1, 1.",
            ),
            SignalAttr("white_balance", "", "raw", "White-balance method: none, gray_world, ..."),
            SignalAttr(
                "ccm",
                "",
                "raw",
                "The 3×3 colour correction matrix applied after demosaicing (rows: output "
                "channels), or None.",
            ),
            SignalAttr(
                "qe_rgbw",
                "e⁻/photon",
                "photodetector (RGB input, a CFA with W)",
                "QE of the R, G, B photosites and of W (per photon of any channel); the raw "
                "stage's rgbw_fusion takes its W = Σ (qe_w / qe_c) e_c from them.",
            ),
            SignalAttr(
                "rgbw_coefficients",
                "",
                "raw (demosaic: rgbw_fusion)",
                "a_R, a_G, a_B of Ŵ = Σ a_c C_c, the W a white-balanced colour pixel would "
                "see (sensors.rgbw.w_coefficients).",
            ),
            SignalAttr(
                "rgbw_guard",
                "",
                "raw (demosaic: rgbw_fusion)",
                "The guard δ of the fusion's ratio (W + δ) / (Ŵ + δ), in normalised units.",
            ),
            SignalAttr("logits", "", "cnn (classifier)", "True: the values are class scores."),
        )
    }
)


def signal_attr(key: str) -> SignalAttr:
    """The declaration of attrs key ``key``; KeyError (with the closest key) if undeclared."""
    try:
        return SIGNAL_ATTRS[key]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(key, list(SIGNAL_ATTRS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise KeyError(
            f"{key!r} is not a declared SignalInfo attr (pipeline.stage.SIGNAL_ATTRS){hint}"
        ) from None


def read_attr(attrs: Mapping[str, Any], key: str, default: Any = None) -> Any:
    """``attrs[key]`` for a declared key (:data:`SIGNAL_ATTRS`), ``default`` when absent;
    KeyError for an undeclared key. For attrs kept apart from their SignalInfo (a run
    record's ``signal_attrs``)."""
    signal_attr(key)
    return attrs.get(key, default)


@dataclasses.dataclass(frozen=True)
class SignalInfo:
    """What flows between two stages, known before any data does.

    Attributes
    ----------
    unit : the physical unit of the values.
    shape : the shape of one image: ``(H, W, C)`` for planes, ``(H, W)`` for a mosaic.
    dtype : the NumPy dtype of the values.
    attrs : facts later stages need, set by earlier ones; every key is declared, with
        its unit and the stage that sets it, in :data:`SIGNAL_ATTRS`. Read them with
        :meth:`attr`.
    """

    unit: Unit
    shape: tuple[int, ...]
    dtype: np.dtype
    attrs: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "unit", Unit(self.unit))
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "dtype", np.dtype(self.dtype))
        object.__setattr__(self, "attrs", MappingProxyType(dict(self.attrs)))

    @property
    def is_mosaic(self) -> bool:
        """True when one image is a single-channel ``(H, W)`` array."""
        return len(self.shape) == 2

    def attr(self, key: str, default: Any = None) -> Any:
        """The value of declared attrs key ``key`` (see :data:`SIGNAL_ATTRS`), ``default``
        when no earlier stage set it; KeyError for a key that is not declared."""
        return read_attr(self.attrs, key, default)

    def evolve(self, *, attrs: Mapping[str, Any] | None = None, **changes: Any) -> SignalInfo:
        """A copy with ``changes`` applied and ``attrs`` merged into the existing ones."""
        merged = {**self.attrs, **(attrs or {})}
        return dataclasses.replace(self, attrs=merged, **changes)


@dataclasses.dataclass(frozen=True)
class Batch:
    """Where a batch sits in the dataset: ``image_index[i]`` is image i's global index."""

    image_index: np.ndarray

    def __len__(self) -> int:
        return len(self.image_index)


@dataclasses.dataclass(frozen=True)
class Tile:
    """One row band of one image of a batch (see :func:`tile_rows`).

    Attributes
    ----------
    position : the image's position in the batch.
    image_key : the image's global index (``Batch.image_index[position]``).
    number : the tile's number within its image, 0 for the first band.
    rows : the band's rows of the image.
    """

    position: int
    image_key: int
    number: int
    rows: slice


def tile_rows(shape: Sequence[int]) -> list[slice]:
    """The row bands that one image of ``shape`` (``(H, W)`` or ``(H, W, C)``) is cut into.

    Each band has ``max(1, TILE_ELEMENTS // (W·C))`` rows (the last one fewer), so an image
    of at most :data:`TILE_ELEMENTS` elements is a single band. The bands depend on the
    shape alone: never on the batch size or the number of threads.
    """
    height = int(shape[0])
    per_row = max(1, int(np.prod(shape[1:], dtype=np.int64)))
    rows = max(1, TILE_ELEMENTS // per_row)
    return [slice(r, min(r + rows, height)) for r in range(0, height, rows)]


@dataclasses.dataclass(frozen=True)
class TileGroup:
    """Tiles that one task maps together: one band of a large image, or whole images
    that are each a single tile (consecutive in the batch), so small images share one
    task and one pass of every vectorised step.

    Attributes
    ----------
    positions : the images' positions in the batch (a slice of consecutive images).
    rows : the rows of each image the group holds (the same band in every image).
    tiles : one :class:`Tile` per image of the group, in batch order.
    """

    positions: slice
    rows: slice
    tiles: tuple[Tile, ...]


def tile_groups(image_keys: Sequence[int], shape: Sequence[int]) -> list[TileGroup]:
    """The tasks that a batch of images of ``shape`` is cut into (see :func:`tile_rows`).

    An image of several tiles gives one group per tile; images that are each one tile are
    packed, in batch order, into groups of at most :data:`TILE_ELEMENTS` elements (at
    least one image). The groups depend on the batch, the tiles (and so every random
    draw) do not: a stage that draws each tile's noise from :meth:`Stage.tile_rng` and
    computes everything else element by element gives the same values in any group.
    """
    bands = tile_rows(shape)
    keys = [int(k) for k in image_keys]
    if len(bands) > 1:
        return [
            TileGroup(slice(i, i + 1), rows, (Tile(i, key, t, rows),))
            for i, key in enumerate(keys)
            for t, rows in enumerate(bands)
        ]
    rows = bands[0]
    return [
        TileGroup(
            positions, rows, tuple(Tile(i, keys[i], 0, rows) for i in range(len(keys))[positions])
        )
        for positions in image_groups(len(keys), shape)
    ]


def image_groups(n_images: int, shape: Sequence[int]) -> list[slice]:
    """Consecutive images of ``shape`` packed into groups of at most :data:`TILE_ELEMENTS`
    elements in all (at least one image per group), in batch order."""
    per_image = max(1, int(np.prod(shape, dtype=np.int64)))
    step = max(1, TILE_ELEMENTS // per_image)
    return [slice(lo, min(lo + step, n_images)) for lo in range(0, n_images, step)]


class Stage(ABC):
    """Base class of every stage.

    Subclasses set the class attributes and implement :meth:`process`; they may
    override :meth:`setup` to check their input, compute their output's shape and
    attributes, and draw fixed patterns.

    Parameters
    ----------
    params : the stage's validated parameters (an instance of ``Params``).
    seed : the run seed, for temporal noise (different per image).
    sensor_seed : the seed of the physical sensor, for fixed-pattern noise.
    index : the stage's position in the chain (part of every random key).
    """

    name: ClassVar[str] = ""  # the registry name used in YAML
    kind: ClassVar[str] = "other"  # scene, optics, photodetector, adc, raw, classifier, other
    Params: ClassVar[type[StageParams]] = StageParams
    takes: ClassVar[tuple[Unit, ...]] = ()
    gives: ClassVar[Unit] = Unit.UNITLESS

    def __init__(
        self,
        params: StageParams | None = None,
        *,
        seed: int = 0,
        sensor_seed: int | None = None,
        index: int = 0,
    ) -> None:
        self.params = params if params is not None else self.Params()
        self.seed = int(seed)
        self.sensor_seed = int(seed if sensor_seed is None else sensor_seed)
        self.index = int(index)

    # -- contract ---------------------------------------------------------------
    def setup(self, info: SignalInfo) -> SignalInfo:
        """Check the incoming signal and describe the outgoing one.

        Called once, in chain order, before any data flows. The default keeps the
        shape and dtype and sets the unit to :attr:`gives`. Raise
        :class:`StageError` for input this stage cannot take.
        """
        return info.evolve(unit=self.gives)

    @abstractmethod
    def process(self, x: np.ndarray, batch: Batch) -> np.ndarray:
        """Map one batch ``(n, *in_shape)`` to ``(n, *out_shape)``."""

    # -- randomness -------------------------------------------------------------
    def image_rngs(self, image_index: Sequence[int] | np.ndarray) -> list[np.random.Generator]:
        """One generator per image, keyed by (seed, stage index, image key)."""
        return [self._image_rng(int(i)) for i in image_index]

    def _image_rng(self, image_key: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.index, _IMAGE_DOMAIN, image_key])

    def tile_rng(self, tile: Tile) -> np.random.Generator:
        """The generator of one tile, keyed by (seed, stage index, image key, tile number).

        Tile 0 gets the image's own generator (the one :meth:`image_rngs` gives), so an
        image that is a single tile draws exactly what it drew before tiles existed.
        """
        if tile.number == 0:
            return self._image_rng(tile.image_key)
        key = [self.seed, self.index, _TILE_DOMAIN, tile.image_key, tile.number]
        return np.random.default_rng(key)

    def image_line_rng(self, image_key: int, tag: int) -> np.random.Generator:
        """A generator of one image's draws that every tile of it shares (e.g. one value
        per column), keyed by (seed, stage index, line domain, image key, tag).

        Each tile of the image gets the same stream, so a tile draws the whole line and
        takes what it needs: the values do not depend on the tiles, batch or threads.
        ``tag`` tells a stage's line draws apart (one tag per kind, never reused).
        """
        key = [self.seed, self.index, _IMAGE_LINE_DOMAIN, int(image_key), int(tag)]
        return np.random.default_rng(key)

    def map_tiles(
        self,
        fn: Callable[[np.ndarray, Tile], np.ndarray],
        x: np.ndarray,
        batch: Batch,
        out_shape: Sequence[int],
        dtype: np.dtype | type,
    ) -> np.ndarray:
        """Map every tile of a batch through ``fn``, over :func:`worker_threads` threads.

        Parameters
        ----------
        fn : ``fn(x_tile, tile)`` gives the output of one tile, ``x_tile`` being
            ``x[tile.position, tile.rows]``; it draws its noise from
            :meth:`tile_rng` ``(tile)`` and so gives the same values on any thread.
        x : the batch ``(n, H, ...)``.
        batch : where the batch sits in the dataset (the image keys).
        out_shape : the shape of one output image, ``(H, ...)``; its rows are cut into
            tiles by :func:`tile_rows`.
        dtype : the output dtype.

        Returns
        -------
        ``(n, *out_shape)`` array: bit for bit the same for any batch size and thread count.
        """

        def each_tile(x_group: np.ndarray, group: TileGroup) -> np.ndarray:
            rows = group.rows.stop - group.rows.start
            out = np.empty((len(x_group), rows, *out_shape[1:]), dtype=dtype)
            for j, tile in enumerate(group.tiles):
                out[j] = fn(x_group[j], tile)
            return out

        return self.map_tile_groups(each_tile, x, batch, out_shape, dtype)

    def map_tile_groups(
        self,
        fn: Callable[[np.ndarray, TileGroup], np.ndarray],
        x: np.ndarray,
        batch: Batch,
        out_shape: Sequence[int],
        dtype: np.dtype | type,
    ) -> np.ndarray:
        """Map a batch through ``fn`` one :class:`TileGroup` at a time, over the threads.

        Like :meth:`map_tiles`, for a stage whose per-pixel steps run on several small
        images at once (one call per group of :func:`tile_groups` instead of per image).

        Parameters
        ----------
        fn : ``fn(x_group, group)`` gives ``(k, rows, ...)``, the output of the group's
            k images, ``x_group`` being ``x[group.positions, group.rows]``; it draws each
            image's noise from :meth:`tile_rng` of that image's tile, in the tile's own
            order, and computes everything else element by element.
        x, batch, out_shape, dtype : as for :meth:`map_tiles`.

        Returns
        -------
        ``(n, *out_shape)`` array: bit for bit the same for any batch size and thread count.
        """
        out = np.empty((len(x), *out_shape), dtype=dtype)

        def task(group: TileGroup) -> Callable[[], None]:
            def run() -> None:
                out[group.positions, group.rows] = fn(x[group.positions, group.rows], group)

            return run

        run_parallel([task(g) for g in tile_groups(batch.image_index, out_shape)])
        return out

    def map_images(
        self,
        fn: Callable[[np.ndarray, Batch], np.ndarray],
        x: np.ndarray,
        batch: Batch,
        out_shape: Sequence[int],
        dtype: np.dtype | type,
    ) -> np.ndarray:
        """Map a batch through ``fn`` in groups of whole images (:func:`image_groups` of
        the output), over :func:`worker_threads` threads.

        For a stage whose every step treats each image on its own (a demosaic, a per-image
        gain): ``fn(x_group, group_batch)`` gives the group's ``(k, *out_shape)`` output,
        the same values as for the whole batch, so the result does not depend on the
        batch size or the number of threads.
        """
        out = np.empty((len(x), *out_shape), dtype=dtype)

        def task(images: slice) -> Callable[[], None]:
            def run() -> None:
                out[images] = fn(x[images], Batch(batch.image_index[images]))

            return run

        run_parallel([task(g) for g in image_groups(len(x), out_shape)])
        return out

    def pattern_rng(self, key: int = 0) -> np.random.Generator:
        """A generator for fixed-pattern draws: one pattern per sensor seed and stage."""
        return np.random.default_rng([self.sensor_seed, self.index, _PATTERN_DOMAIN, int(key)])

    # -- description --------------------------------------------------------------
    @classmethod
    def describe(cls) -> list[dict[str, Any]]:
        """Each parameter's name, type, default, unit and doc, from ``Params``."""
        schema = cls.Params.model_json_schema()
        rows = []
        for field_name, field in cls.Params.model_fields.items():
            prop = schema.get("properties", {}).get(field_name, {})
            rows.append(
                {
                    "name": field_name,
                    "type": _type_label(prop),
                    "default": None if field.is_required() else field.get_default(),
                    "required": field.is_required(),
                    "unit": prop.get("unit", ""),
                    "doc": field.description or "",
                }
            )
        return rows


def _type_label(prop: Mapping[str, Any]) -> str:
    if "enum" in prop:  # a Literal: its choices, "gaussian | airy | ..."
        return " | ".join(str(v) for v in prop["enum"])
    if "anyOf" in prop:
        return " or ".join(_type_label(p) for p in prop["anyOf"])
    if "const" in prop:
        return repr(prop["const"])
    return str(prop.get("type", "any"))

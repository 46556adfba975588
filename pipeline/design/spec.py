"""Design files: which ADC transfer curves to search, for which light, bits and noise.

A design file names a base run config (its dataset, sensor chain with one ``adc`` stage,
and model) and the grid of searches to run::

    base: default.yaml              # relative to this file
    set: {run.batch_size: 128}      # overrides applied to the base (dotted keys, as --set)
    lights: [20, 200, 2000]         # values of light_key, one search each ...
    light_key: sensor.scene.mean_photons
    bits: [2, 3, 4, 5, 6]           # ... at each ADC resolution ...
    noise: {default: {}}            # ... and each named noise setting (overrides)
    validation: {split: val, images: 300}    # what the search scores candidates on
    test: {split: test, images: all}         # held out: winner and baselines, once
    initial: [linear, log, sqrt, equal_probability, lloyd_max]   # + linear_ranged, log_ranged,
                                                                 #   sqrt_ranged (range_match)
    search: {popsize: 10, generations: 25, sigma0: 0.5, seed: 0}
    fine_tune: null                 # or {epochs: 1, images: 600}: a model fine-tuned per candidate
    range_match: {points: 12, quantile: 0.99}   # fixed curves at their best full scale (or null)
    table_full_scale: full_well     # or range_matched: the best range-matched curve's
    energy: {fom: walden, walden_fj_per_step: 50, readout_pj_per_bit: 0.5}
    out: designs                    # the design folder is <out>/<name>
    name: procedural                # default: the file's stem

This module only reads and validates the file; :mod:`pipeline.design.design` runs it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.config import apply_overrides, format_loc, read_yaml
from pipeline.errors import UserError, did_you_mean

__all__ = [
    "INITIALISERS",
    "RANGED_STARTS",
    "DesignCell",
    "DesignPlan",
    "DesignSpec",
    "EnergyOptions",
    "FineTuneOptions",
    "RangeOptions",
    "SearchOptions",
    "SplitOptions",
    "canonical_hash",
    "load_design",
]

INITIALISERS = ("linear", "log", "sqrt", "equal_probability", "lloyd_max")
# starts from the range-matched fixed curves (pipeline.design.ranged); not in the default
RANGED_STARTS = ("linear_ranged", "log_ranged", "sqrt_ranged")
_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class SplitOptions(_Strict):
    """Which images: a dataset split and how many of its first images."""

    split: Literal["train", "val", "test"] = Field(
        ..., description="Dataset split (train, val or test; not all, which holds the others)."
    )
    images: Annotated[int, Field(ge=1)] | Literal["all"] = Field(
        "all", description="How many images (the first ones of the split), or all."
    )


class SearchOptions(_Strict):
    """CMA-ES settings (:mod:`pipeline.design.search`)."""

    popsize: int = Field(10, ge=2, le=256, description="Candidates per generation (lambda).")
    generations: int = Field(25, ge=0, le=10_000, description="Generations of CMA-ES.")
    sigma0: float = Field(
        0.5, gt=0, le=10, description="Initial step size in log-increment space (1 = e-fold)."
    )
    seed: int = Field(0, ge=0, description="Seed of the search's random draws.")
    min_step: float = Field(
        1e-6,
        gt=0,
        lt=1e-2,
        description="Smallest gap between thresholds, as a fraction of full well.",
    )


class RangeOptions(_Strict):
    """Range-matched baselines: each fixed curve at the full scale that suits the light
    best on validation (:mod:`pipeline.design.ranged`)."""

    curves: list[Literal["linear", "log", "sqrt"]] = Field(
        default_factory=lambda: ["linear", "log", "sqrt"],
        min_length=1,
        description="Fixed curves to range-match.",
    )
    points: int = Field(
        12, ge=1, le=100, description="Log-spaced full scales tried (plus the base's gain)."
    )
    quantile: float = Field(
        0.99,
        gt=0,
        le=1,
        description="The smallest full scale tried: this quantile of the validation signal.",
    )


class FineTuneOptions(_Strict):
    """Fine-tune the model on each candidate's images before scoring it (expensive)."""

    epochs: int = Field(1, ge=1, le=100, description="Epochs per candidate.")
    images: Annotated[int, Field(ge=1)] | Literal["all"] = Field(
        600, description="Training images (the first ones of the train split), or all."
    )
    lr: float = Field(1e-3, gt=0, description="Learning rate (the base model's recipe otherwise).")
    split: Literal["train", "val"] = Field(
        "train", description="Dataset split the fine-tuning trains on (never test)."
    )


class EnergyOptions(_Strict):
    """Energy per pixel: ADC conversion (from a figure of merit) plus readout per bit."""

    fom: Literal["walden", "schreier"] = Field("walden", description="Which figure of merit.")
    walden_fj_per_step: float = Field(
        50.0, gt=0, description="Walden FOM, fJ per conversion step (P / (2^ENOB f_s))."
    )
    schreier_db: float = Field(
        170.0, gt=0, le=192.0, description="Schreier FOM, dB (SNDR + 10 log10(f_s / 2P))."
    )
    enob_loss_bits: float = Field(
        0.0, ge=0, description="ENOB below the nominal resolution (noise, distortion), bits."
    )
    readout_pj_per_bit: float = Field(
        0.5, ge=0, description="Readout and I/O energy per bit of each code, pJ."
    )


class DesignSpec(_Strict):
    """A design file, validated."""

    base: str = Field(..., description="Base run config, relative to the design file.")
    set: dict[str, Any] = Field(default_factory=dict, description="Overrides on the base.")
    light_key: str = Field("sensor.scene.mean_photons", description="The light level's key.")
    lights: list[Annotated[float, Field(gt=0)]] = Field(..., min_length=1)
    bits: list[Annotated[int, Field(ge=1, le=16)]] = Field(..., min_length=1)
    noise: dict[str, dict[str, Any]] = Field(
        default_factory=lambda: {"default": {}},
        description="Named noise settings: each a mapping of dotted key -> value.",
    )
    validation: SplitOptions = Field(default_factory=lambda: SplitOptions(split="val", images=300))
    test: SplitOptions = Field(default_factory=lambda: SplitOptions(split="test", images="all"))
    initial: list[Literal[INITIALISERS + RANGED_STARTS]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: list(INITIALISERS), min_length=1
    )
    search: SearchOptions = Field(default_factory=SearchOptions)
    fine_tune: FineTuneOptions | None = None
    range_match: RangeOptions | None = Field(default_factory=RangeOptions)
    table_full_scale: Literal["full_well", "range_matched"] = Field(
        "full_well",
        description="The searched table's full scale: the full well, or the full scale of "
        "the cell's best range-matched curve (an analog gain before the table ADC).",
    )
    energy: EnergyOptions = Field(default_factory=EnergyOptions)
    out: str = Field("designs", description="Folder that receives design folders.")
    name: str | None = Field(None, pattern=_NAME_PATTERN)


@dataclass(frozen=True)
class DesignCell:
    """One search: a light level, a resolution and a named noise setting."""

    light: float
    bits: int
    noise: str

    @property
    def id(self) -> str:
        """A readable folder name, ``light200-bits4-default``."""
        return f"light{self.light:g}-bits{self.bits}-{self.noise}"


@dataclass
class DesignPlan:
    """A design file read: the spec, its base config, its cells and where results go.

    Attributes
    ----------
    spec : the validated file.
    file : the design file (named in errors).
    base_file : the base run config.
    base_dir : folder the base config's relative paths resolve against.
    base_raw : the base config as a plain dict, ``set`` applied.
    cells : every search, lights outermost, then noise, then bits.
    folder : the design folder ``<out>/<name>``.
    """

    spec: DesignSpec
    file: str
    base_file: str
    base_dir: Path
    base_raw: dict
    cells: list[DesignCell]
    folder: Path

    def overrides(self, cell: DesignCell, *, bits: bool = True) -> dict[str, Any]:
        """The dotted-key overrides that make ``cell``'s config from the base."""
        pairs = {self.spec.light_key: cell.light, **self.spec.noise[cell.noise]}
        if bits:
            pairs["sensor.adc.bits"] = cell.bits
        return pairs

    def cell_raw(self, cell: DesignCell, *, bits: bool = True) -> dict:
        """``cell``'s run config as a plain dict."""
        try:
            return apply_overrides(self.base_raw, self.overrides(cell, bits=bits))
        except UserError as exc:
            raise exc.located(file=self.file) from None


def canonical_hash(data: Any) -> str:
    """SHA-256 of ``data`` as canonical JSON (sorted keys): the key of a stored result."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def load_design(source: str | Path, *, out: str | Path | None = None) -> DesignPlan:
    """Read and validate a design file.

    Raises
    ------
    UserError : one line naming the file, the key and the problem.
    """
    file = str(source)
    path = Path(source)
    if not path.is_file():
        raise UserError("no such design file", file=file)
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        what = "empty" if raw is None else f"a {type(raw).__name__}"
        raise UserError(f"a design file must be a mapping, it is {what}", file=file)
    spec = _validate(raw, file)
    if spec.validation.split == spec.test.split:
        raise UserError(
            f"validation and test both read split {spec.test.split!r}; the test images must "
            "be ones the search never sees",
            file=file,
            key="test.split",
        )
    if spec.fine_tune is not None and spec.fine_tune.split in (spec.test.split,):
        raise UserError(
            "fine-tuning on the test split would leak it into the search",
            file=file,
            key="fine_tune.split",
        )
    for name in spec.initial:
        curve = name.removesuffix("_ranged")
        if name in RANGED_STARTS and (
            spec.range_match is None or curve not in spec.range_match.curves
        ):
            raise UserError(
                f"start {name} needs range_match with curve {curve}", file=file, key="initial"
            )
    if spec.table_full_scale == "range_matched" and spec.range_match is None:
        raise UserError("needs range_match", file=file, key="table_full_scale")
    for key in ("lights", "bits"):
        values = getattr(spec, key)
        if len(set(values)) != len(values):
            raise UserError("a value is listed twice", file=file, key=key)
    for name, pairs in spec.noise.items():
        if not re.match(_NAME_PATTERN, name):
            raise UserError(f"cannot name a noise setting {name!r}", file=file, key="noise")
        for reserved in (spec.light_key, "sensor.adc.bits"):
            if reserved in pairs:
                raise UserError(f"{reserved} is set by the design", file=file, key=f"noise.{name}")
    base_path = Path(spec.base).expanduser()
    base_path = base_path if base_path.is_absolute() else path.parent / base_path
    if not base_path.is_file():
        raise UserError(f"base config not found: {base_path}", file=file, key="base")
    base_raw = read_yaml(base_path)
    if not isinstance(base_raw, dict):
        raise UserError("base config must be a mapping", file=base_path)
    if spec.set:
        try:
            base_raw = apply_overrides(base_raw, spec.set)
        except UserError as exc:
            raise UserError(exc.message, file=file, key=f"set.{exc.key}") from None
    name = spec.name or path.stem
    if not re.match(_NAME_PATTERN, name):
        raise UserError(f"cannot name a design folder {name!r}; set name:", file=file, key="name")
    cells = [
        DesignCell(float(light), int(bits), noise)
        for light in spec.lights
        for noise in spec.noise
        for bits in spec.bits
    ]
    return DesignPlan(
        spec=spec,
        file=file,
        base_file=str(base_path),
        base_dir=base_path.parent.resolve(),
        base_raw=copy.deepcopy(base_raw),
        cells=cells,
        folder=Path(out if out is not None else spec.out) / name,
    )


def _validate(raw: dict, file: str) -> DesignSpec:
    try:
        return DesignSpec.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        loc = [p for p in err["loc"] if not str(p).startswith(("literal[", "constrained-"))]
        key = format_loc(loc) or None
        if err["type"] == "extra_forbidden":
            model: Any = DesignSpec
            for part in loc[:-1]:
                field = model.model_fields.get(part) if isinstance(part, str) else None
                ann = getattr(field, "annotation", None)
                nested = [a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type)]
                model = next((a for a in nested if issubclass(a, BaseModel)), None)
                if model is None:
                    break
            fields = list(getattr(model, "model_fields", {}) or {})
            message = f"unknown key{did_you_mean(str(loc[-1]), fields)}"
        elif err["type"] == "missing":
            message = "required key is missing"
        else:
            text = repr(err.get("input"))
            text = text if len(text) <= 60 else text[:57] + "..."
            message = f"{err['msg'][:1].lower()}{err['msg'][1:]}, got {text}"
        raise UserError(message, file=file, key=key) from None

"""Sweep files: a base config and axes over its keys, expanded into cells.

A sweep file names a base run config (``base:``, relative to the sweep file) and the
values to try for some of its keys, using the dotted keys of ``--set``
(:func:`pipeline.config.apply_overrides`)::

    base: default.yaml
    axes:                          # grid: every combination, the last axis varies fastest
      sensor.adc.bits: [1, 2, 4, 8]
      sensor.scene.mean_photons: [10, 100]
    # cells: [{sensor.adc.bits: 4, sensor.scene.mean_photons: 10}, ...]   # or an explicit list
    set: {run.samples: 0}          # overrides applied to the base of every cell
    train: none                    # none | per_cell | fine_tune
    snr: {images: all}             # SNR vs a noise-free run (default: on with a photodetector)
    out: sweeps                    # the sweep folder is <out>/<name> (relative to the cwd)
    name: bitdepth                 # default: the sweep file's stem

Given both, ``cells:`` and ``axes:`` cross: every listed cell is run at every point of
the grid (the listed cells vary slowest). That pairs settings that belong together (a
sensor with the model trained for it) and crosses the pairs with conditions::

    cells: [{sensor.photodetector.cfa: RGGB, model.path: rggb/model.yaml},
            {sensor.photodetector.cfa: mono, model.path: mono/model.yaml}]
    axes: {sensor.scene.illuminant: [D65, A]}            # 4 cells

This module only reads and expands; :mod:`pipeline.sweep.check` validates every cell.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline import limits
from pipeline.config import apply_overrides, format_loc, parse_override, read_yaml
from pipeline.errors import UserError, did_you_mean

__all__ = [
    "Cell",
    "PlotOptions",
    "SnrOptions",
    "SweepPlan",
    "SweepSpec",
    "cell_id",
    "load_plan",
]

TRAIN_MODES = ("none", "per_cell", "fine_tune")
# Keys the sweep sets itself in every cell's config: an axis may not override them.
_RESERVED = ("run", "run.out", "run.name")
_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class SnrOptions(_Strict):
    """How the ``snr_db`` column is measured (see :mod:`pipeline.sweep.snr`)."""

    reference: dict[str, Any] | None = Field(
        None,
        description="Overrides (dotted keys, as --set) that make a cell's config noise-free; "
        "default: switch off the noise of every photodetector stage (shot noise, read noise, "
        "PRNU, DSNU) and digitise with a 24-bit linear ADC.",
    )
    stage: str | None = Field(
        None, description="Stage whose output is compared; default the last sensor stage."
    )
    images: Annotated[int, Field(ge=1)] | Literal["all"] = Field(
        "all", description="How many images (the first ones) enter the SNR, or all."
    )


class PlotOptions(_Strict):
    """What the sweep's plots show."""

    x: str | None = Field(
        None, description="Axis on the x axis; default the axis ending in 'bits', else the first."
    )
    stage: str | None = Field(
        None, description="Recorded stage shown in the sample grid; default the last sensor stage."
    )
    sample: int = Field(0, ge=0, description="Image index shown in the sample grid.")
    max_rows: int | None = Field(
        None,
        ge=1,
        description="At most this many rows in the sample grid (default: every row); "
        "a capped grid says so in its title.",
    )


class SweepSpec(_Strict):
    """A sweep file, validated."""

    base: str = Field(..., description="Base run config, relative to the sweep file.")
    axes: dict[str, list[Any]] | None = Field(
        None, description="Dotted config key -> values; every combination is a cell."
    )
    cells: list[dict[str, Any]] | None = Field(
        None,
        description="An explicit list of cells, each a mapping of dotted key -> value; with "
        "axes, every listed cell is crossed with the grid.",
    )
    mode: Literal["grid", "cells"] | None = Field(
        None,
        description="grid (axes only) or cells (an explicit list, crossed with axes if given); "
        "default from which is given.",
    )
    train: Literal["none", "per_cell", "fine_tune"] = Field(
        "none",
        description="none: evaluate the base config's model; per_cell: train one per cell; "
        "fine_tune: start each cell's training from the base model's weights.",
    )
    set: dict[str, Any] = Field(
        default_factory=dict,
        description="Overrides (dotted keys, as --set) applied to the base config of every "
        "cell, before the axes; --set on the command line adds to and wins over these.",
    )
    out: str = Field("sweeps", description="Folder that receives sweep folders (relative to cwd).")
    name: str | None = Field(
        None, pattern=_NAME_PATTERN, description="Sweep folder name; default the file's stem."
    )
    snr: SnrOptions | bool | None = Field(
        None,
        description="Measure each cell's SNR in dB against a noise-free run: options, true, or "
        "false (off); default: on when the chain has a stage whose noise it knows how to "
        "switch off (photodetector).",
    )
    plot: PlotOptions = Field(default_factory=PlotOptions)


@dataclass(frozen=True)
class Cell:
    """One point of a sweep: its position, stable id and the overrides that make it."""

    index: int
    id: str
    overrides: dict[str, Any]


@dataclass
class SweepPlan:
    """A sweep file read and expanded (not yet checked against stages and data).

    Attributes
    ----------
    spec : the validated sweep file.
    file : the sweep file (or ``"<dict>"``), named in error messages.
    base_file : the base config file, named in the cells' errors and manifests.
    base_dir : folder that relative paths inside the base config resolve against.
    base_raw : the base config as a plain dict, ``--set`` overrides applied.
    axes : the axis keys in order (the explicit cells' keys in ``cells`` mode).
    cells : every cell in order.
    folder : the sweep folder, ``<out>/<name>``.
    set_overrides : the ``--set`` overrides applied to the base.
    """

    spec: SweepSpec
    file: str
    base_file: str
    base_dir: Path
    base_raw: dict
    axes: list[str]
    cells: list[Cell]
    folder: Path
    set_overrides: dict[str, Any] = field(default_factory=dict)

    def axis_location(self, cell: Cell, key: str) -> str:
        """Where ``key``'s value for ``cell`` is written in the sweep file."""
        if self.spec.mode == "cells" and key not in (self.spec.axes or {}):
            return f"cells[{self.listed_index(cell)}].{key}"
        return f"axes.{key}"

    def listed_index(self, cell: Cell) -> int:
        """The index in ``cells:`` of the listed cell ``cell`` comes from (cells mode)."""
        grid = math.prod(len(v) for v in (self.spec.axes or {}).values())
        return cell.index // grid

    @property
    def cells_dir(self) -> Path:
        return self.folder / "cells"

    @property
    def models_dir(self) -> Path:
        return self.folder / "models"

    def cell_raw(self, cell: Cell) -> dict:
        """The cell's run config as a plain dict: base, the cell's values, where to write."""
        raw = apply_overrides(self.base_raw, cell.overrides)
        run = raw.get("run")
        run = dict(run) if isinstance(run, Mapping) else {}
        run.update(out=str(self.cells_dir.resolve()), name=cell.id, progress=False)
        raw["run"] = run
        return raw


# --------------------------------------------------------------------------- reading
def load_plan(
    source: str | Path | Mapping[str, Any],
    *,
    out: str | Path | None = None,
    overrides: Mapping[str, Any] | Sequence[str] | None = None,
    base_dir: str | Path | None = None,
) -> SweepPlan:
    """Read a sweep file (or dict), its base config, and expand the cells.

    Parameters
    ----------
    source : the sweep YAML path, or the same content as a dict.
    out : folder that receives the sweep folder (overrides the file's ``out``).
    overrides : ``--set`` overrides applied to the base config of every cell.
    base_dir : folder that ``base:`` is relative to when ``source`` is a dict (default cwd).

    Raises
    ------
    UserError : naming the sweep file and the key at fault.
    """
    if isinstance(source, Mapping):
        raw, file = copy.deepcopy(dict(source)), "<dict>"
        folder = Path(base_dir or ".")
    else:
        raw, file = read_yaml(source), str(source)
        folder = Path(base_dir) if base_dir else Path(source).parent
        if raw is None:
            raise UserError("empty sweep file", file=file)
        if not isinstance(raw, dict):
            raise UserError(f"top level must be a mapping, got {type(raw).__name__}", file=file)
    spec = _validate_spec(raw, file)
    axes, cells = _expand(spec, file)
    pairs = {**spec.set, **_override_pairs(overrides)}
    for key in pairs:
        if key in axes:
            raise UserError(f"{key} is a sweep axis; change its values instead", key="--set")

    base_path = Path(spec.base).expanduser()
    base_path = base_path if base_path.is_absolute() else folder / base_path
    if not base_path.exists():
        raise UserError(f"base config not found: {base_path}", file=file, key="base")
    base_raw = read_yaml(base_path)
    if not isinstance(base_raw, dict):
        what = "empty" if base_raw is None else f"a {type(base_raw).__name__}"
        raise UserError(f"base config must be a mapping, it is {what}", file=base_path)
    if pairs:
        try:
            base_raw = apply_overrides(base_raw, pairs)
        except UserError as exc:
            raise exc.located(file=base_path) from None

    name = spec.name or (Path(file).stem if file != "<dict>" else "sweep")
    if not re.match(_NAME_PATTERN, name):
        raise UserError(f"cannot name a sweep folder {name!r}; set name:", file=file, key="name")
    sweep_folder = Path(out if out is not None else spec.out) / name
    return SweepPlan(
        spec=spec,
        file=file,
        base_file=str(base_path),
        base_dir=base_path.parent.resolve(),
        base_raw=base_raw,
        axes=axes,
        cells=cells,
        folder=sweep_folder,
        set_overrides=pairs,
    )


def _override_pairs(overrides: Mapping[str, Any] | Sequence[str] | None) -> dict[str, Any]:
    if not overrides:
        return {}
    if isinstance(overrides, Mapping):
        return dict(overrides)
    return dict(parse_override(o) for o in overrides)


def _validate_spec(raw: dict, file: str) -> SweepSpec:
    _check_axes_shape(raw, file)
    try:
        spec = SweepSpec.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        loc = [p for p in err["loc"] if not _is_tag(p)]
        raise UserError(_message(err, loc), file=file, key=format_loc(loc) or None) from None
    if spec.axes is None and spec.cells is None:
        raise UserError("a sweep needs axes: (a grid) or cells: (a list)", file=file, key="axes")
    mode = "cells" if spec.cells is not None else "grid"
    if spec.mode is not None and spec.mode != mode:
        need = "axes: and no cells:" if spec.mode == "grid" else "cells:"
        raise UserError(f"mode {spec.mode} needs {need}", file=file, key="mode")
    spec.mode = mode
    return spec


def _message(err: Mapping[str, Any], loc: list) -> str:
    """One line for a pydantic error of the sweep file at ``loc``."""
    if err["type"] == "extra_forbidden":
        fields = list(getattr(_section_model(loc[:-1]), "model_fields", {}) or {})
        return f"unknown key{did_you_mean(str(loc[-1]), fields)}"
    if err["type"] == "missing":
        return "required key is missing"
    msg = err["msg"]
    return f"{msg[:1].lower()}{msg[1:]}, got {_short(err.get('input'))}"


def _section_model(loc: list) -> Any:
    """The pydantic model of the sweep file's section at ``loc`` (None when not a model)."""
    model: Any = SweepSpec
    for part in loc:
        sub = model.model_fields.get(part) if isinstance(part, str) else None
        ann = getattr(sub, "annotation", None)
        model = next((a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type)), None)
        if model is None or not issubclass(model, BaseModel):
            return model
    return model


def _check_axes_shape(raw: dict, file: str) -> None:
    """Clear messages for the shapes pydantic would word vaguely."""
    axes = raw.get("axes")
    if axes is not None:
        if not isinstance(axes, dict) or not axes:
            raise UserError(
                "must map at least one config key to a list of values", file=file, key="axes"
            )
        for key, values in axes.items():
            where = f"axes.{key}"
            if not isinstance(key, str):
                raise UserError(
                    f"axis key must be a dotted config key, got {key!r}", file=file, key=where
                )
            if not isinstance(values, list):
                raise UserError(
                    f"must be a list of values, got {_short(values)}", file=file, key=where
                )
            if not values:
                raise UserError("empty axis: list at least one value", file=file, key=where)
            seen: dict[str, int] = {}
            for j, v in enumerate(values):
                tag = _value_tag(v)
                if tag in seen:
                    raise UserError(
                        f"value {_short(v)} is listed twice (positions {seen[tag]} and {j})",
                        file=file,
                        key=where,
                    )
                seen[tag] = j
    cells = raw.get("cells")
    if cells is not None:
        if not isinstance(cells, list) or not cells:
            raise UserError("must be a non-empty list of mappings", file=file, key="cells")
        for i, c in enumerate(cells):
            if not isinstance(c, dict) or not c:
                raise UserError(
                    f"must be a mapping of config key -> value, got {_short(c)}",
                    file=file,
                    key=f"cells[{i}]",
                )


def _expand(spec: SweepSpec, file: str) -> tuple[list[str], list[Cell]]:
    grid_axes = spec.axes or {}
    listed = None if spec.cells is None else _listed_cells(spec.cells, file)
    listed_keys = [] if listed is None else list(listed[0])
    for key in grid_axes:
        if key in listed_keys:
            raise UserError(
                "is set by every listed cell too; give it in cells: or axes:, not both",
                file=file,
                key=f"axes.{key}",
            )
    n_cells = math.prod(len(v) for v in grid_axes.values()) * (len(listed) if listed else 1)
    what, where = ("the grid", "axes") if listed is None else ("the list", "cells")
    limits.check("sweep_cells", n_cells, what=what, file=file, key=where)
    grid = [
        dict(zip(grid_axes, values, strict=True))
        for values in itertools.product(*grid_axes.values())
    ]
    combos = [{**c, **g} for c in (listed or [{}]) for g in grid]
    axes = listed_keys + list(grid_axes)
    for key in axes:
        if key.strip() != key or not key or key in _RESERVED:
            why = "is set by the sweep itself" if key in _RESERVED else "is not a config key"
            at = "axes" if key in grid_axes else "cells[0]"
            raise UserError(f"{key!r} {why}", file=file, key=f"{at}.{key}")
    width = max(3, len(str(len(combos) - 1)))
    cells = [Cell(i, cell_id(i, c, width), c) for i, c in enumerate(combos)]
    return axes, cells


def _listed_cells(cells: list[dict[str, Any]], file: str) -> list[dict[str, Any]]:
    """The ``cells:`` list checked: every cell sets the same keys, no two are the same."""
    keys = list(cells[0])
    for i, c in enumerate(cells):
        if set(c) != set(keys):
            missing = sorted(set(keys) - set(c))
            extra = sorted(set(c) - set(keys))
            what = f"lacks {', '.join(missing)}" if missing else f"adds {', '.join(extra)}"
            raise UserError(
                f"every cell must set the same keys as cells[0]; this one {what}",
                file=file,
                key=f"cells[{i}]",
            )
    listed = [{k: c[k] for k in keys} for c in cells]
    seen: dict[str, int] = {}
    for i, c in enumerate(listed):
        tag = _value_tag(c)
        if tag in seen:
            raise UserError(f"same values as cells[{seen[tag]}]", file=file, key=f"cells[{i}]")
        seen[tag] = i
    return listed


# --------------------------------------------------------------------------- naming
def cell_id(index: int, overrides: Mapping[str, Any], width: int = 3) -> str:
    """A stable, readable folder name: ``c003-bits4-mean_photons100``.

    The index makes it unique; the labels (last part of each key, then the value)
    make it readable. Long or exotic values are shortened.
    """
    parts = [f"c{index:0{width}d}"]
    for key, value in overrides.items():
        short = re.sub(r"[^A-Za-z0-9_]", "", re.split(r"[.\]\[]", key.rstrip("]"))[-1])
        parts.append(f"{short}{_value_label(value)}")
    name = "-".join(parts)
    return name if len(name) <= 96 else name[:96].rstrip("-._")


def _value_label(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        text = re.sub(r"[^A-Za-z0-9.+_]", "_", str(value))
        if len(text) <= 24:
            return text
    import hashlib

    return "h" + hashlib.sha1(_value_tag(value).encode()).hexdigest()[:8]


def _value_tag(value: Any) -> str:
    """A canonical text of a YAML value (for spotting duplicates)."""
    return json.dumps(value, sort_keys=True, default=str)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_tag(part: Any) -> bool:
    """A pydantic union-member tag in an error location (not a key of the data)."""
    return isinstance(part, str) and (
        part.startswith(("literal[", "constrained-", "function-"))
        or part in {"int", "str", "float", "bool", "list", "dict", "none"}
    )

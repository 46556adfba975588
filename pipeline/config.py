"""Run configuration: YAML (safe_load only) validated into pydantic models.

A config names a ``seed``, a ``dataset``, an ordered list of sensor stages
(``sensor:``, each row ``{stage: NAME, ...params}``), an optional ``model`` and
``train`` section, and ``run`` options. Stage rows are validated against the
``Params`` of the stage class the registry finds by name. Every problem is a
:class:`~pipeline.errors.UserError` naming the file and key path.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from pipeline import limits
from pipeline.cnn.train_config import TrainConfig
from pipeline.datasets import DatasetConfig, dataset_fields, dataset_kinds
from pipeline.errors import UserError, did_you_mean
from pipeline.registry import Registry, default_registry
from pipeline.stage import StageParams

__all__ = [
    "Config",
    "LoadedConfig",
    "ModelRef",
    "RecordOptions",
    "RunOptions",
    "apply_overrides",
    "config_model",
    "load_config",
    "parse_override",
    "read_yaml",
    "with_overrides",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)


class RecordOptions(_Strict):
    """Which stage arrays a run keeps in its store."""

    stages: Literal["all", "none"] | list[str] = Field(
        "all", description="Stage names to record ('dataset' is the input images), or all/none."
    )
    images: Annotated[int, Field(ge=0)] | Literal["all"] = Field(
        16, description="How many images (the first ones) to record per stage, or all."
    )


class RunOptions(_Strict):
    """How a run streams and where it writes."""

    batch_size: int = Field(64, ge=1, le=1_000_000, description="Images per batch.")
    record: RecordOptions = Field(default_factory=RecordOptions)
    out: str = Field("runs", description="Folder that receives run folders (relative to cwd).")
    name: str | None = Field(
        None,
        description="Run folder name; default <config stem>-<UTC time>.",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
    )
    samples: int = Field(4, ge=0, le=32, description="Images shown in samples.png.")
    progress: bool = Field(
        True,
        description="Show progress on stderr: a bar on a terminal, else a line per 10 % "
        "with elapsed and remaining time.",
    )


class ModelRef(_Strict):
    """The classifier: a model YAML and its weights (paths relative to the config file)."""

    path: str = Field(..., description="Model graph YAML.")
    weights: str | None = Field(
        None, description="Weights .npz; default <model stem>.npz beside it."
    )


class Config(_Strict):
    """A whole run: the base for the registry-specific model built by :func:`config_model`."""

    def plain(self) -> dict[str, Any]:
        """The config as plain JSON types, each sensor row starting with its ``stage`` name."""
        out = self.model_dump(mode="json")
        out["sensor"] = [{"stage": row["stage"], **row} for row in out.get("sensor") or []]
        return out

    seed: int = Field(0, ge=0, lt=2**63, description="Run seed: temporal noise, shuffling.")
    sensor_seed: int | None = Field(
        None,
        ge=0,
        lt=2**63,
        description="Seed of the physical sensor (fixed pattern); default seed.",
    )
    dataset: DatasetConfig
    sensor: list[Any] = Field(default_factory=list, description="Ordered sensor stages.")
    model: ModelRef | None = None
    train: TrainConfig = Field(
        default_factory=TrainConfig, description="How `sensorlab train` trains the model."
    )
    run: RunOptions = Field(default_factory=RunOptions)


@lru_cache(maxsize=8)
def _config_model_cached(registry: Registry) -> type[Config]:
    entries = []
    for name, cls in registry.loadable().items():
        entry = create_model(
            f"{cls.__name__}Row",
            __base__=cls.Params,
            __doc__=(cls.__doc__ or name).strip().splitlines()[0],
            stage=(Literal[name], Field(..., description="Stage name.")),
        )
        entries.append(entry)
    if not entries:
        row: Any = dict
    else:
        row = Annotated[Union[tuple(entries)], Field(discriminator="stage")]  # noqa: UP007
    return create_model(
        "Config",
        __base__=Config,
        sensor=(list[row], Field(default_factory=list, description="Ordered sensor stages.")),
    )


def config_model(registry: Registry | None = None) -> type[Config]:
    """The Config class whose ``sensor`` rows validate against ``registry``'s stages."""
    return _config_model_cached(registry or default_registry())


class LoadedConfig:
    """A validated config with where it came from.

    Attributes
    ----------
    config : the validated :class:`Config`.
    file : the YAML file (or ``"<dict>"``), used in error messages.
    base_dir : folder that relative paths inside the config resolve against.
    raw : the plain dict after overrides, before validation.
    """

    def __init__(self, config: Config, file: str, base_dir: Path, raw: dict) -> None:
        self.config = config
        self.file = file
        self.base_dir = base_dir
        self.raw = raw

    def resolve(self, path: str | Path) -> Path:
        """``path`` relative to the config's folder (absolute paths unchanged)."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else self.base_dir / p

    def error(self, message: str, key: str | None = None) -> UserError:
        return UserError(message, file=self.file, key=key)

    def portable(self, registry: Registry | None = None) -> dict[str, Any]:
        """The resolved config as a plain dict whose file paths are absolute.

        A copy written elsewhere (a training run folder, say) still finds its dataset,
        model and stage files: ``dataset.path``, ``model.path``/``weights`` and stage
        parameters declared with ``param(path=True)`` are resolved against this config's
        folder.
        """
        registry = registry or default_registry()
        out = self.config.plain()
        dataset = out.get("dataset") or {}
        if isinstance(dataset.get("path"), str):
            dataset["path"] = str(self.resolve(dataset["path"]))
        model = out.get("model")
        if model:
            for key in ("path", "weights"):
                if isinstance(model.get(key), str):
                    model[key] = str(self.resolve(model[key]))
        for row in out.get("sensor") or []:
            for name in path_params(registry.get(row["stage"]).Params):
                if isinstance(row.get(name), str):
                    row[name] = str(self.resolve(row[name]))
        return out


def path_params(params: type[BaseModel]) -> list[str]:
    """The names of the parameters declared as file paths (``param(path=True)``)."""
    return [
        name
        for name, field in params.model_fields.items()
        if isinstance(field.json_schema_extra, dict) and field.json_schema_extra.get("path")
    ]


# --------------------------------------------------------------------------- reading
def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file with ``yaml.safe_load``; a UserError for a missing file or bad syntax."""
    p = Path(path)
    try:
        if p.is_file():
            limits.check("yaml_bytes", p.stat().st_size, what="this YAML file", file=p)
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError("file not found", file=p) from None
    except IsADirectoryError:
        raise UserError("is a folder, expected a YAML file", file=p) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read: {exc}", file=p) from None
    try:
        return safe_yaml(text)
    except UserError as exc:
        raise exc.located(file=p) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"YAML syntax error at {where}: {problem}", file=p) from None


def safe_yaml(text: str) -> Any:
    """``yaml.safe_load`` of ``text`` within the ``yaml_depth`` limit (nesting is measured
    on the text before parsing, so a deep input never reaches the recursive parser).

    Raises
    ------
    UserError : too deep, or a tag whose value does not convert (``!!int 3.5``).
    yaml.YAMLError : bad syntax.
    """
    depth = _max_nesting(text)
    limits.check("yaml_depth", depth, what="the YAML nesting")
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        raise
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        problem = " ".join(str(exc).split())[:100] or type(exc).__name__
        raise UserError(f"YAML value cannot be read: {problem}") from None


def _max_nesting(text: str) -> int:
    """An upper bound of the nesting depth of YAML ``text``: flow brackets plus indentation.

    Cheap and conservative: brackets inside quoted strings count too.
    """
    flow = 0
    deepest = 0
    for ch in text:
        if ch in "[{":
            flow += 1
            deepest = max(deepest, flow)
        elif ch in "]}":
            flow = max(0, flow - 1)
    indents = {
        len(line) - len(line.lstrip(" -"))
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    }
    return deepest + len(indents)


def parse_override(text: str) -> tuple[str, Any]:
    """``"sensor.adc.bits=4"`` → ``("sensor.adc.bits", 4)``; the value is read as YAML."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise UserError(f"--set expects KEY=VALUE, got {_short(text)}")
    limits.check("yaml_bytes", len(value), what="this --set value", key=_short_key(key))
    _split_key(key)  # a malformed or absurdly deep key fails here, before any work
    try:
        parsed = safe_yaml(value) if value.strip() else None
    except UserError as exc:
        raise UserError(f"--set {exc.message}", key=_short_key(key)) from None
    except yaml.YAMLError:
        parsed = value
    return key, parsed


def _short_key(key: str) -> str:
    return key if len(key) <= 80 else key[:77] + "..."


def _split_key(key: str) -> list[str | int]:
    tokens = key.replace("[", ".").replace("]", "").split(".")
    limits.check("yaml_depth", len(tokens), what="this key path", key=_short_key(key))
    parts: list[str | int] = []
    for token in tokens:
        if token == "":
            raise UserError(f"malformed key path {_short(key)}", key=_short_key(key))
        is_index = token.lstrip("-").isdigit() and len(token) <= 18
        parts.append(int(token) if is_index else token)
    return parts


def apply_overrides(raw: dict, overrides: Mapping[str, Any]) -> dict:
    """A copy of ``raw`` with dotted-key overrides applied.

    A sensor stage is addressed by its name (``sensor.adc.bits``) or its index
    (``sensor[3].bits``); a name that appears twice must use the index.
    """
    out = copy.deepcopy(raw)
    for key, value in overrides.items():
        parts = _split_key(key)
        node: Any = out
        for depth, part in enumerate(parts[:-1]):
            path_so_far = ".".join(str(p) for p in parts[: depth + 1])
            if isinstance(node, list):
                node = node[_list_index(node, part, key, path_so_far)]
                continue
            if not isinstance(node, dict):
                raise UserError(f"cannot set inside a {type(node).__name__}", key=key)
            nxt = parts[depth + 1]
            if part not in node or node[part] is None:
                node[part] = [] if part == "sensor" else {}
            node = node[part]
            if isinstance(node, list) and isinstance(nxt, str) and part == "sensor":
                continue
        last = parts[-1]
        if isinstance(node, list):
            node[_list_index(node, last, key, key)] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise UserError(f"cannot set inside a {type(node).__name__}", key=key)
    return _switch_dataset_kind(raw, out, overrides)


def _switch_dataset_kind(before: dict, after: dict, overrides: Mapping[str, Any]) -> dict:
    """An override of ``dataset.kind`` to another kind drops the dataset keys the new kind
    does not have (``n`` of procedural when switching to digits); keys shared by both kinds
    (split, seed, limit, ...) and keys set by other ``dataset.*`` overrides stay."""
    old = before.get("dataset")
    new = after.get("dataset")
    kind = overrides.get("dataset.kind")
    if not isinstance(new, dict) or kind is None:
        return after
    if isinstance(old, dict) and old.get("kind") == kind:
        return after
    fields = dataset_fields(str(kind))
    if fields is None:  # an unknown kind: validation names it
        return after
    set_here = {k.partition(".")[2] for k in overrides if k.startswith("dataset.")}
    after["dataset"] = {k: v for k, v in new.items() if k in fields or k in set_here}
    return after


def _list_index(rows: list, part: str | int, key: str, where: str) -> int:
    if isinstance(part, int):
        if -len(rows) <= part < len(rows):
            return part % len(rows)
        raise UserError(f"index {part} out of range ({len(rows)} rows)", key=key)
    matches = [i for i, r in enumerate(rows) if isinstance(r, dict) and r.get("stage") == part]
    if len(matches) == 1:
        return matches[0]
    names = [r.get("stage", "?") for r in rows if isinstance(r, dict)]
    if not matches:
        raise UserError(f"no stage named {part!r} in the chain{did_you_mean(part, names)}", key=key)
    raise UserError(f"stage {part!r} appears {len(matches)} times; use its index", key=key)


# --------------------------------------------------------------------------- validation
def with_overrides(
    loaded: LoadedConfig,
    overrides: Mapping[str, Any] | Sequence[str],
    *,
    registry: Registry | None = None,
) -> LoadedConfig:
    """``loaded`` with overrides (``["KEY=VALUE"]`` or ``{KEY: value}``) applied on top;
    errors name its file."""
    if not overrides:
        return loaded
    try:
        out = load_config(loaded.raw, overrides, registry=registry, base_dir=loaded.base_dir)
    except UserError as exc:
        raise UserError(exc.message, file=loaded.file, key=exc.key) from None
    out.file = loaded.file
    return out


def load_config(
    source: str | Path | Mapping[str, Any] | Config,
    overrides: Mapping[str, Any] | Sequence[str] | None = None,
    *,
    registry: Registry | None = None,
    base_dir: str | Path | None = None,
) -> LoadedConfig:
    """Read and validate a config.

    Parameters
    ----------
    source : a YAML path, a plain dict, or an already validated Config.
    overrides : ``{"run.batch_size": 7}`` or ``["run.batch_size=7", ...]``.
    registry : where stage names are looked up (default: installed stages).
    base_dir : folder for relative paths when ``source`` is not a file (default: cwd).

    Returns
    -------
    LoadedConfig
    """
    registry = registry or default_registry()
    if isinstance(source, Config):
        raw = source.model_dump(mode="json", exclude_none=False)
        file, folder = "<config>", Path(base_dir or ".")
    elif isinstance(source, Mapping):
        raw, file, folder = copy.deepcopy(dict(source)), "<dict>", Path(base_dir or ".")
    else:
        path = Path(source)
        raw = read_yaml(path)
        file, folder = str(source), Path(base_dir) if base_dir else path.parent
        if raw is None:
            raise UserError("empty config", file=file)
        if not isinstance(raw, dict):
            raise UserError(f"top level must be a mapping, got {type(raw).__name__}", file=file)
    if overrides:
        pairs = dict(parse_override(o) for o in overrides) if _is_str_seq(overrides) else overrides
        try:
            raw = apply_overrides(raw, pairs)
        except UserError as exc:
            raise exc.located(file=file) from None
    config = validate(raw, registry=registry, file=file)
    return LoadedConfig(config, file, folder.resolve(), raw)


def _is_str_seq(obj: Any) -> bool:
    return isinstance(obj, Sequence) and not isinstance(obj, str | bytes)


def validate(raw: dict, *, registry: Registry, file: str) -> Config:
    """Validate a plain dict into a Config, or raise one UserError for the first problem."""
    _check_stage_rows(raw, registry, file)
    model = config_model(registry)
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise _first_error(exc, raw, model, file) from None


def _check_stage_rows(raw: dict, registry: Registry, file: str) -> None:
    rows = raw.get("sensor")
    if rows is None:
        return
    if not isinstance(rows, list):
        raise UserError(
            f"must be a list of stages, got {type(rows).__name__}", file=file, key="sensor"
        )
    for i, row in enumerate(rows):
        key = f"sensor[{i}]"
        if not isinstance(row, dict):
            raise UserError(
                f"must be a mapping like {{stage: adc, ...}}, got {row!r}", file=file, key=key
            )
        if "stage" not in row:
            raise UserError("missing 'stage: NAME'", file=file, key=key)
        name = row["stage"]
        if not isinstance(name, str):
            raise UserError(
                f"stage name must be a string, got {name!r}", file=file, key=f"{key}.stage"
            )
        try:
            registry.get(name)
        except UserError as exc:
            raise exc.located(file=file, key_prefix=f"{key}.stage") from None


def format_loc(loc: Sequence[str | int], raw: Any = None) -> str:
    """``("sensor", 3, "adc", "bits")`` → ``"sensor[3].adc.bits"``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _first_error(exc: ValidationError, raw: dict, model: type[BaseModel], file: str) -> UserError:
    err = exc.errors(include_url=False)[0]
    loc = _clean_loc(err["loc"], raw)
    key = format_loc(loc)
    kind, value = err["type"], err.get("input")
    if kind == "missing":
        message = "required key is missing"
    elif kind == "extra_forbidden":
        fields = _fields_at(model, loc[:-1], raw)
        hint = did_you_mean(str(loc[-1]), fields) if fields else ""
        message = f"unknown key{hint}"
    elif kind in {"greater_than_equal", "less_than_equal", "greater_than", "less_than"}:
        message = _range_message(err, model, loc, raw, value)
    elif kind in {"union_tag_invalid", "union_tag_not_found"}:  # dataset.kind
        field = err["ctx"]["discriminator"].strip("'")
        key = format_loc([*loc, field])
        tags = [t.strip().strip("'") for t in str(err["ctx"].get("expected_tags", "")).split(",")]
        tags = [t for t in tags if t] or _tags_at(model, loc)
        if kind == "union_tag_not_found":
            message = f"required key is missing (choose from {', '.join(tags)})"
        else:
            tag = str(err["ctx"]["tag"])
            message = f"unknown {field} {tag!r}{did_you_mean(tag, tags)}"
    else:
        msg = err["msg"]
        message = f"{msg[:1].lower()}{msg[1:]}, got {_short(value)}"
    return UserError(message, file=file, key=key)


def _tags_at(model: type[BaseModel], loc: Sequence[str | int]) -> list[str]:
    """The tags of a top-level tagged union field (``dataset`` → its kinds)."""
    if list(loc) == ["dataset"]:
        return sorted(dataset_kinds())
    return []


def _clean_loc(loc: Sequence[Any], raw: Any) -> list[str | int]:
    """Keys of the data from a pydantic error location, without union-member tags.

    The tag of a sensor row is kept (``sensor[3].adc.bits``); a dataset's ``kind``
    tag and tags such as ``constrained-int`` or ``literal['all']`` are dropped.
    """
    out: list[str | int] = []
    node = raw
    missing = False
    for part in loc:
        if missing:
            out.append(part)
        elif isinstance(node, dict):
            if part in node:
                out.append(part)
                node = node[part]
            elif node.get("stage") == part:
                out.append(part)
            elif node.get("kind") == part or _is_tag(part):
                continue
            else:
                out.append(part)
                missing = True
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            out.append(part)
            node = node[part]
        # else: a tag below a scalar value: nothing in the data to name
    return out


def _is_tag(part: Any) -> bool:
    return isinstance(part, str) and ("[" in part or "-" in part or part in _SCALAR_TAGS)


_SCALAR_TAGS = {"int", "str", "float", "bool", "list", "dict", "none"}


def _fields_at(model: type[BaseModel], loc: Sequence[str | int], raw: Any) -> list[str]:
    cls: Any = model
    node = raw
    for part in loc:
        if isinstance(part, int):
            node = node[part] if isinstance(node, list) and part < len(node) else None
            cls = _item_model(cls, node)
            continue
        if isinstance(node, dict) and node.get("stage") == part:
            continue
        fields = getattr(cls, "model_fields", None) or {}
        if part not in fields:
            return []
        node = node.get(part) if isinstance(node, dict) else None
        cls = _annotation_model(fields[part].annotation, node)
    if isinstance(node, dict) and "stage" in node and cls is None:
        return []
    return list(getattr(cls, "model_fields", {}) or {}) if cls else []


def _candidates(annotation: Any) -> list[Any]:
    args = getattr(annotation, "__args__", None)
    origin = getattr(annotation, "__origin__", None)
    if origin is Annotated or hasattr(annotation, "__metadata__"):
        return _candidates(annotation.__origin__)
    if args and origin is not list:
        return [c for a in args for c in _candidates(a)]
    return [annotation]


def _annotation_model(annotation: Any, node: Any) -> Any:
    if getattr(annotation, "__origin__", None) is list:
        return annotation
    models = [
        c for c in _candidates(annotation) if isinstance(c, type) and issubclass(c, BaseModel)
    ]
    for m in models:
        for tag in ("stage", "kind"):
            field = m.model_fields.get(tag)
            if field is not None and isinstance(node, dict):
                allowed = getattr(field.annotation, "__args__", ())
                if node.get(tag) in allowed:
                    return m
    return models[0] if len(models) == 1 else None


def _item_model(list_annotation: Any, node: Any) -> Any:
    args = getattr(list_annotation, "__args__", None)
    return _annotation_model(args[0], node) if args else None


def _range_message(err: dict, model: type[BaseModel], loc: list, raw: Any, value: Any) -> str:
    """``must be between LO and HI`` for a field bounded inclusively on both sides,
    else pydantic's own wording (``must be greater than 0``...)."""
    meta = _field_metadata(model, loc, raw)
    lo = next((m.ge for m in meta if getattr(m, "ge", None) is not None), None)
    hi = next((m.le for m in meta if getattr(m, "le", None) is not None), None)
    if lo is not None and hi is not None:
        return f"must be between {lo} and {hi}, got {_short(value)}"
    msg = err["msg"].replace("Input should be", "must be")
    return f"{msg}, got {_short(value)}"


def _field_metadata(model: type[BaseModel], loc: list, raw: Any) -> list[Any]:
    if not loc:
        return []
    parent_fields = _fields_at(model, loc[:-1], raw)
    if loc[-1] not in parent_fields:
        return []
    cls: Any = model
    node = raw
    for part in loc[:-1]:
        if isinstance(part, int):
            node = node[part] if isinstance(node, list) and part < len(node) else None
            cls = _item_model(cls, node)
        elif isinstance(node, dict) and node.get("stage") == part:
            continue
        else:
            node = node.get(part) if isinstance(node, dict) else None
            cls = _annotation_model(cls.model_fields[part].annotation, node)
    field = cls.model_fields[loc[-1]] if cls is not None else None
    return list(field.metadata) if field is not None else []


def _short(value: Any) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def json_schema(registry: Registry | None = None) -> dict[str, Any]:
    """The JSON Schema of a config file (for editor completion of YAML files)."""
    schema = config_model(registry).model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "sensorlab run config"
    return schema


# Silence "imported but unused" for the re-exported parameter base (plugins subclass it).
_ = StageParams

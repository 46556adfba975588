"""Check every cell of a sweep before anything runs.

Each cell's config is built (base + the cell's values) and validated, its chain is
built against the dataset's signal (so units, shapes and stage set-ups are checked),
and so is the noise-free reference chain when the sweep measures SNR. The first
problem is reported as one line naming the sweep file, the axis key and the cell's
value, with the underlying config error after it::

    sweep.yaml: axes.sensor.adc.bits: value 0 (cell c000-bits0): sensor[3].adc.bits: must be
    between 1 and 24, got 0
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import LoadedConfig, apply_overrides, validate
from pipeline.errors import UserError, did_you_mean
from pipeline.registry import Registry
from pipeline.runner import Chain, build_chain, open_config_dataset
from pipeline.stage import SignalInfo
from pipeline.sweep.snr import NOISE_STAGE, default_reference
from pipeline.sweep.spec import Cell, SnrOptions, SweepPlan

__all__ = [
    "CheckedCell",
    "check_plan",
    "fingerprint",
    "load_cell",
    "reference_raw",
    "resolve_snr",
]


@dataclass
class CheckedCell:
    """A cell whose config and chain were built without error.

    Attributes
    ----------
    cell : the cell.
    raw : its run config as a plain dict (what the worker rebuilds it from).
    fingerprint : what must match for a finished record of this cell to be reused.
    sensor_names : record names of the chain's sensor stages, in order.
    snr : the SNR measurement, resolved (``reference`` overrides, ``stage``, ``images``),
        or None when the sweep measures none.
    """

    cell: Cell
    raw: dict
    fingerprint: dict
    sensor_names: list[str]
    snr: dict[str, Any] | None


def load_cell(raw: dict, plan_file: str, base_dir: Any, registry: Registry) -> LoadedConfig:
    """Validate a cell's raw config into a LoadedConfig located in the base config's file."""
    return LoadedConfig(validate(raw, registry=registry, file=plan_file), plan_file, base_dir, raw)


def reference_raw(raw: dict, reference: Mapping[str, Any]) -> dict:
    """The noise-free reference config of a cell: its config with ``snr.reference`` applied."""
    return apply_overrides(raw, reference)


def fingerprint(
    loaded: LoadedConfig, options: Mapping[str, Any], digests: dict[str, str] | None = None
) -> dict:
    """What a cell computes from: its resolved config (minus where it is written), the sweep
    options that shape it, and the SHA-256 of the model files its config names.

    A finished cell is reused on a rerun only when its recorded fingerprint equals this,
    so a model retrained in place makes the cells evaluated with it run again.
    """
    config = loaded.config.model_dump(mode="json")
    config["run"] = {k: v for k, v in config["run"].items() if k not in ("out", "progress")}
    files: dict[str, str] = {}
    ref = loaded.config.model
    if ref is not None:
        graph = loaded.resolve(ref.path)
        weights = loaded.resolve(ref.weights) if ref.weights else graph.with_suffix(".npz")
        for role, path in (("model", graph), ("weights", weights)):
            if path.is_file():
                files[role] = _digest(path, digests if digests is not None else {})
    out = {"config": config, "options": dict(options), "model_files": files}
    return json.loads(json.dumps(out, default=str))


def _digest(path: Path, cache: dict[str, str]) -> str:
    key = str(path.resolve())
    if key not in cache:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        cache[key] = h.hexdigest()
    return cache[key]


def resolve_snr(plan: SweepPlan, raw: dict) -> dict[str, Any] | None:
    """The cell's SNR measurement: reference overrides, compared stage, images; or None.

    ``snr:`` absent measures only when the chain has a stage whose noise switches are
    known (:data:`pipeline.sweep.snr.NOISE_STAGE`); ``snr: false`` never measures.
    """
    setting = plan.spec.snr
    if setting is False:
        return None
    opts = setting if isinstance(setting, SnrOptions) else SnrOptions()
    reference = opts.reference if opts.reference is not None else default_reference(raw)
    if not reference:
        if setting is None:
            return None
        known = NOISE_STAGE
        raise UserError(
            f"no stage whose noise is known to switch off ({known}); give snr.reference",
            file=plan.file,
            key="snr.reference",
        )
    return {"reference": reference, "stage": opts.stage, "images": opts.images}


def check_plan(plan: SweepPlan, registry: Registry) -> list[CheckedCell]:
    """Build and validate every cell's config and chain; one UserError for the first problem."""
    spec = plan.spec
    infos: dict[str, SignalInfo] = {}
    digests: dict[str, str] = {}
    with_model = spec.train != "per_cell"  # a per-cell model does not exist before training
    if spec.train != "none":
        try:
            train_hook()  # fails early, before anything runs, when training is unavailable
        except UserError as exc:
            raise exc.located(file=plan.file) from None
    checked = []
    for cell in plan.cells:
        try:
            raw = plan.cell_raw(cell)
            loaded = load_cell(raw, plan.base_file, plan.base_dir, registry)
            chain = build_chain(
                loaded, _dataset_info(loaded, infos), registry=registry, with_model=with_model
            )
        except UserError as exc:
            raise _cell_error(plan, cell, exc, registry) from None
        if spec.train == "fine_tune" and loaded.config.model is None:
            raise UserError(
                "fine_tune starts from the base config's model, but the base config has no model:",
                file=plan.file,
                key="train",
            )
        n_sensor = len(chain.sensor_stages)
        sensor_names = chain.names[:n_sensor]
        snr = resolve_snr(plan, raw)
        if snr is not None:
            _check_reference(plan, cell, raw, snr, chain, n_sensor, registry, infos)
        options = {"train": spec.train, "snr": snr}
        record_key = fingerprint(loaded, options, digests)
        checked.append(CheckedCell(cell, raw, record_key, sensor_names, snr))
    _check_plot_options(plan, checked)
    return checked


def train_hook() -> Any:
    """``pipeline.train.train_cell``: trains one cell's model (see :mod:`pipeline.sweep.cell`)."""
    try:
        from pipeline.train import train_cell
    except ImportError as exc:
        if getattr(exc, "name", None) in (None, "pipeline.train") or "train_cell" in str(exc):
            raise UserError(
                "training per cell needs pipeline.train.train_cell, which this installation lacks",
                key="train",
            ) from None
        raise
    return train_cell


def _dataset_info(loaded: LoadedConfig, cache: dict[str, SignalInfo]) -> SignalInfo:
    key = json.dumps(
        [str(loaded.base_dir), loaded.config.dataset.model_dump(mode="json")], sort_keys=True
    )
    if key not in cache:
        cache[key] = open_config_dataset(loaded).info()
    return cache[key]


def _check_reference(
    plan: SweepPlan,
    cell: Cell,
    raw: dict,
    snr: dict[str, Any],
    chain: Chain,
    n_sensor: int,
    registry: Registry,
    infos: dict[str, SignalInfo],
) -> None:
    if n_sensor == 0:
        raise UserError(
            "the base config has no sensor stages to measure", file=plan.file, key="snr"
        )
    names = chain.names[:n_sensor]
    stage = snr["stage"] or names[-1]
    if stage not in names:
        raise UserError(
            f"no sensor stage {stage!r}{did_you_mean(stage, names)}",
            file=plan.file,
            key="snr.stage",
        )
    try:
        ref_raw = reference_raw(raw, snr["reference"])
        ref_loaded = load_cell(ref_raw, plan.base_file, plan.base_dir, registry)
        ref_chain = build_chain(
            ref_loaded, _dataset_info(ref_loaded, infos), registry=registry, with_model=False
        )
    except UserError as exc:
        key = _match_key(exc.key, list(snr["reference"]), raw)
        where = f"snr.reference.{key}" if key else "snr.reference"
        inner = ": ".join(p for p in (exc.key, exc.message) if p)
        raise UserError(f"cell {cell.id}: {inner}", file=plan.file, key=where) from None
    if ref_chain.names[:n_sensor] != names:
        raise UserError(
            f"the reference changes the chain ({ref_chain.names[:n_sensor]} vs {names})",
            file=plan.file,
            key="snr.reference",
        )
    j = names.index(stage)
    a, b = chain.infos[j + 1], ref_chain.infos[j + 1]
    if (a.shape, a.dtype, a.unit) != (b.shape, b.dtype, b.unit):
        raise UserError(
            f"cell {cell.id}: {stage} gives {a.shape} {a.dtype} {a.unit} but "
            f"{b.shape} {b.dtype} {b.unit} in the reference",
            file=plan.file,
            key="snr.reference",
        )


def _check_plot_options(plan: SweepPlan, checked: list[CheckedCell]) -> None:
    opts = plan.spec.plot
    if opts.x is not None and opts.x not in plan.axes:
        raise UserError(
            f"no axis {opts.x!r}{did_you_mean(opts.x, plan.axes)}", file=plan.file, key="plot.x"
        )
    if opts.stage is not None:
        names = ["dataset", *checked[0].sensor_names]
        if opts.stage not in names:
            raise UserError(
                f"no stage {opts.stage!r}{did_you_mean(opts.stage, names)}",
                file=plan.file,
                key="plot.stage",
            )


# --------------------------------------------------------------------------- blame
def _cell_error(plan: SweepPlan, cell: Cell, exc: UserError, registry: Registry) -> UserError:
    """Name the axis (and value) a cell's config error comes from."""
    key = _match_key(exc.key, list(cell.overrides), plan.base_raw)
    inner = ": ".join(p for p in (exc.key, exc.message) if p)
    if key is not None:
        value = _short(cell.overrides[key])
        return UserError(
            f"value {value} (cell {cell.id}): {inner}",
            file=plan.file,
            key=plan.axis_location(cell, key),
        )
    # Not an axis key: the base config's own fault, or a combination of values.
    try:
        base = load_cell(
            plan.cell_raw(Cell(cell.index, cell.id, {})), plan.base_file, plan.base_dir, registry
        )
        build_chain(
            base,
            open_config_dataset(base).info(),
            registry=registry,
            with_model=plan.spec.train != "per_cell",
        )
    except UserError as base_exc:
        if str(base_exc) == str(exc):
            return exc
    values = ", ".join(f"{k}={_short(v)}" for k, v in cell.overrides.items())
    where = "axes" if plan.spec.mode == "grid" else f"cells[{plan.listed_index(cell)}]"
    return UserError(f"cell {cell.id} ({values}): {exc}", file=plan.file, key=where)


def _match_key(error_key: str | None, keys: list[str], raw: dict) -> str | None:
    """The override key whose config location contains (or lies inside) the error's location."""
    if not error_key:
        return None
    target = _canonical(error_key, raw)
    best: tuple[int, str] | None = None
    for key in keys:
        if key == error_key:
            return key
        path = _canonical(key, raw)
        n = min(len(path), len(target))
        if n and path[:n] == target[:n] and (best is None or len(path) > best[0]):
            best = (len(path), key)
    return best[1] if best else None


def _canonical(key: str, raw: Any) -> tuple:
    """A key path with sensor stages named by index: ``sensor.adc.bits`` → ("sensor", 3, "bits").

    Also drops the stage-name tag of error keys: ``sensor[3].adc.bits`` → ("sensor", 3, "bits").
    """
    tokens = [t for t in key.replace("[", ".").replace("]", "").split(".") if t != ""]
    parts: list[Any] = [int(t) if t.lstrip("-").isdigit() else t for t in tokens]
    out: list[Any] = []
    node = raw
    i = 0
    while i < len(parts):
        part = parts[i]
        if isinstance(node, list):
            if isinstance(part, str):
                matches = [
                    j for j, r in enumerate(node) if isinstance(r, dict) and r.get("stage") == part
                ]
                part = matches[0] if len(matches) == 1 else part
            elif -len(node) <= part < len(node):
                part %= len(node)
            out.append(part)
            row = node[part] if isinstance(part, int) and 0 <= part < len(node) else None
            if isinstance(row, dict) and i + 1 < len(parts) and parts[i + 1] == row.get("stage"):
                i += 1  # the stage-name tag after an index
            node = row
        else:
            out.append(part)
            node = node.get(part) if isinstance(node, dict) else None
        i += 1
    return tuple(out)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."

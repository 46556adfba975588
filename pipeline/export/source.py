"""A model named on the command line (``RUN_OR_MODEL``): a model YAML with its weights, or a
training run folder written by ``sensorlab train`` with the config it was trained with."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.cnn.model import Model, load_model
from pipeline.config import LoadedConfig, load_config, read_yaml
from pipeline.errors import UserError

__all__ = ["RUN_FILES", "ModelSource", "load_run_config", "load_source"]

RUN_FILES = ("model.yaml", "model.npz")


@dataclass
class ModelSource:
    """A model named on the command line, with the config it was trained with (if known).

    Attributes
    ----------
    model : the CNN with its weights.
    yaml_path, weights_path : its files.
    run_dir : the training run folder, if the source is one.
    config : the run's resolved config (a run folder) or the ``--config`` given.
    """

    model: Model
    yaml_path: Path
    weights_path: Path | None
    run_dir: Path | None = None
    config: LoadedConfig | None = None


def load_source(
    path: str | Path,
    *,
    weights: str | Path | None = None,
    config: str | Path | None = None,
    registry: Any = None,
) -> ModelSource:
    """Read ``RUN_OR_MODEL``: a run folder or a model YAML (with its weights).

    Parameters
    ----------
    path : a training run folder or a model YAML.
    weights : the weights .npz (default: ``model.npz`` in a run, ``<stem>.npz`` by a YAML).
    config : a run config whose sensor the model takes (default: a run's ``config.yaml``).

    Raises
    ------
    UserError : a missing path, a run folder without its files, missing, corrupt or
        mismatched weights, a bad config.
    """
    path = Path(path)
    if not path.exists():
        raise UserError("no such model YAML or run folder", file=path)
    run_dir = None
    loaded = None
    if path.is_dir():
        missing = [f for f in RUN_FILES if not (path / f).is_file()]
        if missing:
            raise UserError(
                f"not a training run folder (no {', '.join(missing)}); give a run folder "
                "written by `sensorlab train` or a model YAML",
                file=path,
            )
        run_dir, yaml_path = path, path / "model.yaml"
        weights_path = Path(weights) if weights else path / "model.npz"
        if config is None and (path / "config.yaml").is_file():
            loaded = load_run_config(path, registry=registry)
        model = load_model(yaml_path, weights_path)
    else:
        yaml_path = path
        model = load_model(yaml_path, weights)  # default <stem>.npz, with a hint when absent
        weights_path = Path(weights) if weights else path.with_suffix(".npz")
    if config is not None:
        loaded = load_config(config, registry=registry)
    return ModelSource(model, yaml_path, weights_path, run_dir, loaded)


def load_run_config(run_dir: Path, *, registry: Any = None) -> LoadedConfig:
    """A run folder's ``config.yaml`` (the ``train:`` section set aside), its relative paths
    resolved against the folder of the config the run was trained from (the manifest's
    ``config_file``) when that still exists, else against the run folder."""
    file = run_dir / "config.yaml"
    raw = read_yaml(file)
    if not isinstance(raw, dict):
        raise UserError("top level must be a mapping", file=file)
    raw = {k: v for k, v in raw.items() if k != "train"}
    try:
        loaded = load_config(raw, registry=registry, base_dir=_trained_from(run_dir))
    except UserError as exc:
        raise UserError(exc.message, file=file, key=exc.key) from None
    loaded.file = str(file)
    return loaded


def _trained_from(run_dir: Path) -> Path:
    """The folder of the config a run was trained from, if it still exists, else the run's."""
    manifest = run_dir / "manifest.json"
    if not manifest.is_file():
        return run_dir
    try:
        original = json.loads(manifest.read_text(encoding="utf-8")).get("config_file")
    except (OSError, ValueError):
        return run_dir
    if isinstance(original, str) and Path(original).is_file():
        return Path(original).resolve().parent
    return run_dir

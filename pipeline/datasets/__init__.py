"""Datasets: what feeds the first sensor stage, streamed in batches.

Every reader gives a :class:`Dataset` (images ``(n, H, W, 3)`` as stored plus int64
labels, read by index range); :func:`open_dataset` builds one from a validated config
entry. Readers, one module each:

- ``procedural`` (:mod:`.procedural`): generated shapes where shape and colour decide the class;
- ``folder`` (:mod:`.folder`): image files, one sub-folder per class;
- ``npz`` (:mod:`.npz`): arrays ``x``, ``y`` in a NumPy file;
- ``cifar10`` (:mod:`.cifar10`): the CIFAR-10 python batches from a local folder;
- ``digits`` (:mod:`.digits`): scikit-learn's digits (optional extra ``digits``).

Splits (:mod:`.splits`) depend only on the dataset's own ``seed``, never on the run seed.
Relative paths resolve against the config file's folder. In a run config::

    dataset: {kind: procedural, n: 512, size: 32, split: test, encoding: linear16}
    dataset: {kind: folder, path: ../data/photos, split: train, resize: [64, 64]}
    dataset: {kind: npz, path: ../data/set.npz, val_fraction: 0.1, test_fraction: 0.2}
    dataset: {kind: cifar10, path: ~/data/cifar-10-batches-py, split: test, limit: 1000}
    dataset: {kind: digits, size: 32, split: test}
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Union

from pydantic import Field, TypeAdapter, ValidationError

from pipeline.datasets.base import (
    ENCODINGS,
    ArrayDataset,
    Dataset,
    IndexedDataset,
)
from pipeline.datasets.cifar10 import Cifar10Config, Cifar10Dataset
from pipeline.datasets.digits import DigitsConfig, DigitsDataset
from pipeline.datasets.folder import FolderConfig, FolderDataset
from pipeline.datasets.npz import NpzConfig, open_npz
from pipeline.datasets.procedural import ProceduralConfig, ProceduralDataset
from pipeline.errors import UserError, did_you_mean

__all__ = [
    "ENCODINGS",
    "ArrayDataset",
    "Cifar10Config",
    "Cifar10Dataset",
    "Dataset",
    "DatasetConfig",
    "DigitsConfig",
    "DigitsDataset",
    "FolderConfig",
    "FolderDataset",
    "IndexedDataset",
    "NpzConfig",
    "ProceduralConfig",
    "ProceduralDataset",
    "dataset_fields",
    "dataset_kinds",
    "open_dataset",
]

DatasetConfig = Annotated[
    Union[ProceduralConfig, FolderConfig, NpzConfig, Cifar10Config, DigitsConfig],  # noqa: UP007
    Field(discriminator="kind"),
]

_ADAPTER: TypeAdapter[Any] = TypeAdapter(DatasetConfig)
_KIND_MODELS = {
    m.model_fields["kind"].annotation.__args__[0]: m
    for m in (ProceduralConfig, FolderConfig, NpzConfig, Cifar10Config, DigitsConfig)
}


def dataset_kinds() -> list[str]:
    """The dataset kinds a config may name (``procedural``, ``folder``, ...)."""
    return list(_KIND_MODELS)


def dataset_fields(kind: str) -> set[str] | None:
    """The config keys of dataset kind ``kind`` (None for an unknown kind)."""
    model = _KIND_MODELS.get(kind)
    return None if model is None else set(model.model_fields)


def open_dataset(cfg: DatasetConfig | Mapping[str, Any], *, base_dir: Path) -> Dataset:
    """The dataset a config entry describes.

    Parameters
    ----------
    cfg : a validated config model, or a plain mapping (validated here).
    base_dir : folder that relative paths resolve against (the config file's folder).

    Raises
    ------
    UserError : with key ``dataset.<field>`` for bad input (missing files, bad arrays, ...).
    """
    if isinstance(cfg, Mapping):
        cfg = _validate(cfg)
    common = {"split": cfg.split, "seed": cfg.seed, "limit": cfg.limit}
    if isinstance(cfg, ProceduralConfig):
        return ProceduralDataset(
            cfg.n,
            cfg.size,
            encoding=cfg.encoding,
            illumination_decades=cfg.illumination_decades,
            **common,
        )
    if isinstance(cfg, DigitsConfig):
        return DigitsDataset(
            cfg.size, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction, **common
        )
    path = Path(cfg.path).expanduser()
    path = path if path.is_absolute() else Path(base_dir) / path
    if isinstance(cfg, FolderConfig):
        return FolderDataset(
            path,
            classes=cfg.classes,
            resize=cfg.resize,
            val_fraction=cfg.val_fraction,
            test_fraction=cfg.test_fraction,
            **common,
        )
    if isinstance(cfg, NpzConfig):
        return open_npz(
            path,
            classes=cfg.classes,
            val_fraction=cfg.val_fraction,
            test_fraction=cfg.test_fraction,
            **common,
        )
    if isinstance(cfg, Cifar10Config):
        return Cifar10Dataset(path, val_fraction=cfg.val_fraction, **common)
    raise TypeError(f"not a dataset config: {cfg!r}")


def _validate(raw: Mapping[str, Any]) -> Any:
    """A mapping validated into its config model; the first problem as a UserError."""
    try:
        return _ADAPTER.validate_python(dict(raw))
    except ValidationError as exc:
        err = exc.errors()[0]
        kinds = sorted(_KIND_MODELS)
        if err["type"] == "union_tag_invalid":
            tag = str(raw.get("kind"))
            raise UserError(
                f"unknown dataset kind {tag!r}{did_you_mean(tag, kinds)}", key="dataset.kind"
            ) from None
        if err["type"] == "union_tag_not_found":
            raise UserError(f"missing kind ({', '.join(kinds)})", key="dataset.kind") from None
        loc = [str(p) for p in err["loc"] if p not in _KIND_MODELS]
        key = ".".join(["dataset", *loc])
        raise UserError(err["msg"].removeprefix("Value error, "), key=key) from None

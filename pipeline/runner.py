"""The runner: streams a dataset through the configured stages and records what each gave.

Memory stays flat whatever the dataset's size: images are read, processed and
written batch by batch; only the recorded images (``run.record.images``), the
labels and the predictions are kept.

:func:`stream` is the one batch loop of sensorlab (read, NaN/inf check, every stage,
errors located in the config file): ``run`` records from it, ``train`` and ``eval``
collect from it, export's int8 calibration and the sweep's SNR pass read from it.
"""

from __future__ import annotations

import dataclasses
import math
import platform
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import limits
from pipeline._version import __version__
from pipeline.classifier import ClassifierStage
from pipeline.config import (
    Config,
    LoadedConfig,
    load_config,
    parse_override,
    path_params,
    with_overrides,
)
from pipeline.datasets import Dataset, open_dataset
from pipeline.errors import UserError, did_you_mean
from pipeline.metrics import classification_metrics
from pipeline.progress import progress as progress_reporter
from pipeline.quality import QUALITY_IMAGES, QualitySums
from pipeline.reference import default_reference
from pipeline.registry import Registry, default_registry
from pipeline.stage import Batch, SignalInfo, Stage, StageError, Unit
from pipeline.store import RunWriter

__all__ = [
    "Chain",
    "Comparison",
    "RunResult",
    "StreamClock",
    "StreamedBatch",
    "batch_for",
    "build_chain",
    "compare_chains",
    "open_config_dataset",
    "run",
    "stream",
]

DATASET = "dataset"  # record name of the input images


@dataclasses.dataclass
class Chain:
    """Stages in order with what flows between them.

    Attributes
    ----------
    stages : the stage objects, sensor stages first, then the classifier if any.
    names : each stage's record name (its registry name, ``_2``... when repeated).
    infos : ``infos[0]`` describes the dataset images, ``infos[i + 1]`` stage i's output.
    keys : each stage's key path in the config (``sensor[3]``, ``model``), for errors.
    """

    stages: list[Stage]
    names: list[str]
    infos: list[SignalInfo]
    keys: list[str]

    @property
    def classifier(self) -> ClassifierStage | None:
        last = self.stages[-1] if self.stages else None
        return last if isinstance(last, ClassifierStage) else None

    @property
    def sensor_stages(self) -> list[Stage]:
        return [s for s in self.stages if not isinstance(s, ClassifierStage)]

    def apply(
        self, x: np.ndarray, batch: Batch, *, upto: int | None = None, timings: list | None = None
    ) -> list[np.ndarray]:
        """Every stage's output for one batch (the first ``upto`` stages)."""
        outputs = []
        for i, stage in enumerate(self.stages[:upto]):
            t0 = time.perf_counter()
            try:
                x = stage.process(x, batch)
            except StageError as exc:  # input the stage cannot take, met while data flows
                key = f"{self.keys[i]}.{self.names[i]}"
                raise UserError(str(exc), key=f"{key}.{exc.key}" if exc.key else key) from None
            if timings is not None:
                timings[i] += time.perf_counter() - t0
            _check_output(self, i, x, len(batch))
            outputs.append(x)
        return outputs

    def stream(
        self, dataset: Dataset, batch_size: int, *, sensor_only: bool = True, file: str = ""
    ) -> Iterator[tuple[np.ndarray, np.ndarray | None, np.ndarray]]:
        """``(x, labels, image_index)`` per batch after the sensor stages (or the whole chain);
        see :func:`stream`."""
        upto = len(self.sensor_stages) if sensor_only else None
        for b in stream(self, dataset, batch_size, upto=upto, file=file):
            yield b.last, b.labels, b.index


@dataclasses.dataclass
class StreamedBatch:
    """One batch of images after the chain's stages.

    Attributes
    ----------
    images : the dataset's images.
    labels : their labels (None when the dataset has none).
    index : their positions in the dataset (int64).
    outputs : each applied stage's output, in chain order.
    """

    images: np.ndarray
    labels: np.ndarray | None
    index: np.ndarray
    outputs: list[np.ndarray]

    @property
    def last(self) -> np.ndarray:
        """The last applied stage's output (the images when no stage was applied)."""
        return self.outputs[-1] if self.outputs else self.images


@dataclasses.dataclass
class StreamClock:
    """Seconds spent reading the dataset and in each stage, summed over batches."""

    read_s: float
    stage_s: list[float]

    @classmethod
    def for_chain(cls, chain: Chain) -> StreamClock:
        return cls(0.0, [0.0] * len(chain.stages))


def stream(
    chain: Chain,
    dataset: Dataset,
    batch_size: int,
    *,
    upto: int | None = None,
    start: int = 0,
    stop: int | None = None,
    file: str = "",
    clock: StreamClock | None = None,
) -> Iterator[StreamedBatch]:
    """Stream images ``start..stop`` of ``dataset`` through the chain's first ``upto`` stages.

    Each batch is read, checked for NaN and inf (a float dataset), and passed through the
    stages keyed by the images' identities (:func:`batch_for`), so every image gives the
    same arrays whatever the batch size or the range. Errors are located in ``file``.

    Parameters
    ----------
    chain : the stages.
    dataset : the images.
    batch_size : images per batch (at least 1).
    upto : apply the first ``upto`` stages (default: all).
    start, stop : the range of image positions (default: the whole dataset).
    file : the config file named in errors.
    clock : when given, reading and stage seconds are added to it.
    """
    stop = len(dataset) if stop is None else min(stop, len(dataset))
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    for lo in range(start, stop, batch_size):
        hi = min(lo + batch_size, stop)
        t0 = time.perf_counter()
        try:
            images, labels = dataset.read(lo, hi)
        except UserError as exc:
            raise exc.located(file=file or None) from None
        if clock is not None:
            clock.read_s += time.perf_counter() - t0
        index = np.arange(lo, hi, dtype=np.int64)
        _check_finite(images, index, file)
        timings = clock.stage_s if clock is not None else None
        try:
            outputs = chain.apply(images, batch_for(dataset, index), upto=upto, timings=timings)
        except UserError as exc:
            raise exc.located(file=file or None) from None
        yield StreamedBatch(images, labels, index, outputs)


def batch_for(dataset: Dataset, index: np.ndarray) -> Batch:
    """The Batch of images at positions ``index``: keyed by the dataset's image identities."""
    keys = getattr(dataset, "image_keys", None)
    if keys is None or len(index) == 0:
        return Batch(np.asarray(index, dtype=np.int64))
    return Batch(keys(int(index[0]), int(index[-1]) + 1))


def _check_output(chain: Chain, i: int, x: np.ndarray, n: int) -> None:
    info = chain.infos[i + 1]
    if not isinstance(x, np.ndarray) or x.shape != (n, *info.shape) or x.dtype != info.dtype:
        got = (getattr(x, "shape", None), getattr(x, "dtype", type(x).__name__))
        raise RuntimeError(
            f"stage {chain.names[i]!r} broke its contract: declared {(n, *info.shape)} "
            f"{info.dtype}, gave {got[0]} {got[1]}"
        )


def _check_finite(images: np.ndarray, index: np.ndarray, file: str) -> None:
    if images.dtype.kind != "f":
        return
    bad = ~np.isfinite(images.reshape(len(images), -1)).all(axis=1)
    if bad.any():
        j = int(np.argmax(bad))
        what = "NaN" if np.isnan(images[j]).any() else "inf"
        raise UserError(f"image {int(index[j])} contains {what}", file=file or None, key="dataset")


def open_config_dataset(loaded: LoadedConfig, split: str | None = None) -> Dataset:
    """The dataset a config names (optionally another split), errors located in its file."""
    cfg = loaded.config.dataset
    if split is not None and "split" in type(cfg).model_fields:
        cfg = cfg.model_copy(update={"split": split})
    try:
        return open_dataset(cfg, base_dir=loaded.base_dir)
    except UserError as exc:
        raise exc.located(file=loaded.file) from None


def build_chain(
    loaded: LoadedConfig,
    input_info: SignalInfo,
    *,
    registry: Registry | None = None,
    with_model: bool = True,
    model: Any = None,
) -> Chain:
    """Instantiate and set up the configured stages, checking units and shapes before any data.

    ``model`` is the classifier to use instead of loading the config's ``model:`` (None:
    load it).

    Raises
    ------
    UserError : a unit that does not chain, a stage that refuses its input, a model
        whose input does not fit the sensor's output.
    """
    registry = registry or default_registry()
    config = loaded.config
    stages: list[Stage] = []
    names: list[str] = []
    keys: list[str] = []
    _check_pixels(input_info, loaded, "dataset", "each image")
    infos = [input_info]
    prev_name = DATASET
    for i, row in enumerate(config.sensor):
        cls = registry.get(row.stage)
        params = cls.Params.model_validate(_resolve_paths(cls, row.model_dump(), loaded))
        stage = cls(params, seed=config.seed, sensor_seed=config.sensor_seed, index=i)
        key = f"sensor[{i}]"
        info = infos[-1]
        if cls.takes and info.unit not in cls.takes:
            takes = " or ".join(str(u) for u in cls.takes)
            raise loaded.error(
                f"{cls.name} takes {takes}; {prev_name} gives {info.unit}", key=f"{key}.stage"
            )
        infos.append(_setup(stage, info, loaded, f"{key}.{cls.name}"))
        stages.append(stage)
        names.append(_unique(cls.name, names))
        keys.append(key)
        prev_name = cls.name
    if with_model and config.model is not None:
        net = model if model is not None else load_config_model(loaded)
        stage = ClassifierStage(net, index=len(stages), seed=config.seed)
        info = infos[-1]
        if info.unit not in stage.takes:
            takes = " or ".join(str(u) for u in stage.takes)
            raise loaded.error(f"the model takes {takes}; {prev_name} gives {info.unit}", "model")
        infos.append(_setup(stage, info, loaded, "model"))
        stages.append(stage)
        names.append(_unique(stage.name, names))
        keys.append("model")
    return Chain(stages, names, infos, keys)


def _resolve_paths(cls: type[Stage], values: dict[str, Any], loaded: LoadedConfig) -> dict:
    """Stage parameters with file paths (``param(path=True)``) made relative to the config."""
    values = {k: v for k, v in values.items() if k != "stage"}
    for name in path_params(cls.Params):
        if isinstance(values.get(name), str):
            values[name] = str(loaded.resolve(values[name]))
    return values


def _setup(stage: Stage, info: SignalInfo, loaded: LoadedConfig, key: str) -> SignalInfo:
    try:
        out = stage.setup(info)
    except StageError as exc:
        raise loaded.error(str(exc), f"{key}.{exc.key}" if exc.key else key) from None
    if not isinstance(out, SignalInfo):
        raise RuntimeError(f"{type(stage).__name__}.setup returned {type(out).__name__}")
    _check_pixels(out, loaded, key, "its output")
    return out


def _check_pixels(info: SignalInfo, loaded: LoadedConfig, key: str, what: str) -> None:
    """Refuse an image larger than the ``image_pixels`` limit before a stage allocates it."""
    if len(info.shape) >= 2:
        try:
            limits.check("image_pixels", info.shape[0] * info.shape[1], what=what)
        except UserError as exc:
            raise loaded.error(f"{exc.message} ({info.shape[0]}×{info.shape[1]} px)", key) from None


def _unique(name: str, taken: Sequence[str]) -> str:
    if name not in taken and name != DATASET:
        return name
    k = 2
    while f"{name}_{k}" in taken:
        k += 1
    return f"{name}_{k}"


def load_config_model(loaded: LoadedConfig) -> Any:
    """The classifier the config's ``model:`` names, with its weights."""
    from pipeline.cnn.model import load_model

    ref = loaded.config.model
    assert ref is not None
    path = loaded.resolve(ref.path)
    weights = loaded.resolve(ref.weights) if ref.weights else None
    try:
        return load_model(path, weights)
    except UserError as exc:
        raise exc.located(file=exc.file or loaded.file, key_prefix=None) from None


# --------------------------------------------------------------------------- running
@dataclasses.dataclass
class RunResult:
    """What a run gives back.

    Attributes
    ----------
    arrays : recorded arrays by stage name (``dataset`` for the input), first images only.
    metrics : accuracy, per-class accuracy, confusion matrix (when labels and a model exist).
    manifest : the manifest written to ``manifest.json``.
    path : the run folder, or None when nothing was stored.
    predictions : predicted class per image (when a model exists).
    labels : true class per image (when the dataset has labels).
    """

    arrays: dict[str, np.ndarray]
    metrics: dict[str, Any]
    manifest: dict[str, Any]
    path: Path | None
    predictions: np.ndarray | None = None
    labels: np.ndarray | None = None

    @property
    def class_names(self) -> list[str]:
        """The dataset's class names (label order)."""
        return list(self.manifest["dataset"]["classes"])

    def stage(self, name: str) -> dict[str, Any]:
        """The manifest's entry for stage ``name``: unit, shape, dtype, attrs, seconds."""
        for entry in self.manifest["stages"]:
            if entry["name"] == name:
                return entry
        raise KeyError(f"no stage {name!r}; stages: {[e['name'] for e in self.manifest['stages']]}")


def run(
    config: str | Path | Mapping[str, Any] | Config | LoadedConfig,
    *,
    set: Mapping[str, Any] | Sequence[str] | None = None,
    registry: Registry | None = None,
    dataset: Dataset | None = None,
    store: bool = True,
    progress: bool | None = None,
    model: Any = None,
    compare: Sequence[Comparison] = (),
    **overrides: Any,
) -> RunResult:
    """Run a config: stream the dataset through its stages, record, measure.

    Parameters
    ----------
    config : a YAML path, a dict, a Config or a LoadedConfig.
    set : dotted-key overrides (``{"sensor.adc.bits": 4}`` or ``["sensor.adc.bits=4"]``).
    registry : stage registry (default: installed stages and plugins).
    dataset : use this dataset instead of the config's (Python API).
    store : write the run folder (False keeps the records in memory only).
    progress : force progress on or off (default: ``run.progress``); a bar on a terminal,
        a line per 10 % with elapsed and remaining time in a log.
    model : use this classifier (a loaded ``pipeline.cnn`` model) instead of loading the
        config's ``model:`` (a caller that keeps models between runs).
    compare : more sums against reference chains, fed while the run streams
        (:class:`Comparison`; the sweep's SNR). A comparison whose reference is the
        PSNR/SSIM probe's shares its reference pass.
    overrides : more overrides as keyword arguments, ``__`` for dots (``run__batch_size=7``).

    Returns
    -------
    RunResult
    """
    registry = registry or default_registry()
    pairs: dict[str, Any] = {}
    if set:
        pairs.update(dict(_pairs(set)))
    pairs.update({k.replace("__", "."): v for k, v in overrides.items()})
    if isinstance(config, LoadedConfig):
        loaded = with_overrides(config, pairs, registry=registry)
    else:
        loaded = load_config(config, pairs, registry=registry)
    ds = dataset if dataset is not None else open_config_dataset(loaded)
    chain = build_chain(loaded, ds.info(), registry=registry, model=model)
    quality = _quality_comparison(loaded, chain, registry=registry)
    wanted = [quality, *compare] if quality is not None else list(compare)
    probes = _reference_probes(loaded, ds, chain, wanted, registry=registry)
    quality_sums = quality.sums if quality is not None else None
    return _execute(
        loaded, ds, chain, store=store, progress=progress, probes=probes, quality=quality_sums
    )


def compare_chains(
    chain: Chain,
    reference: Chain,
    dataset: Dataset,
    batch_size: int,
    *,
    stage: str | None = None,
    images: int | str = "all",
    file: str = "",
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The same images through a chain and its reference chain: ``(out, ref)`` per batch.

    The chain streams through :func:`stream`; each batch's dataset images then go through
    the reference chain, keyed by the same image identities (so both see the same seeds).

    Parameters
    ----------
    chain, reference : two chains over the same dataset with the same stage names.
    dataset : the images.
    batch_size : images per batch.
    stage : record name of the compared stage (default: the last sensor stage).
    images : how many images (the first ones), or "all".
    file : the config file named in errors.
    """
    upto = _stage_count(chain, stage)
    stop = None if images == "all" else int(images)
    for batch in stream(chain, dataset, batch_size, upto=upto, stop=stop, file=file):
        ref = _reference_output(reference, dataset, batch.images, batch.index, upto, file)
        yield batch.last, ref


def _stage_count(chain: Chain, stage: str | None) -> int:
    """How many stages lead up to ``stage`` (default: the last sensor stage)."""
    if stage is None:
        return len(chain.sensor_stages)
    return chain.names.index(stage) + 1


def _reference_output(
    reference: Chain, dataset: Dataset, images: np.ndarray, index: np.ndarray, upto: int, file: str
) -> np.ndarray:
    """Dataset images (at positions ``index``) through the reference chain's first ``upto``
    stages."""
    try:
        return reference.apply(images, batch_for(dataset, index), upto=upto)[-1]
    except UserError as exc:
        raise exc.located(file=file or None) from None


@dataclasses.dataclass
class Comparison:
    """Sums of a run's outputs against a reference chain's, over the run's first images.

    Attributes
    ----------
    reference : the reference config (same dataset and stage names as the run's).
    sums : receives ``sums.add(out, ref)`` per batch, in image order (e.g.
        :class:`pipeline.quality.QualitySums`, ``pipeline.sweep.snr.SnrSums``).
    stage : record name of the compared stage (default: the last sensor stage).
    images : how many images (the first ones), or "all".
    """

    reference: LoadedConfig
    sums: Any
    stage: str | None = None
    images: int | str = "all"


@dataclasses.dataclass
class _ReferenceProbe:
    """One reference chain fed while a run streams: the first images of each batch also go
    through it, and each ``(images, sums)`` consumer gets its first ``images`` pairs."""

    reference: Chain
    upto: int
    file: str
    consumers: list[tuple[float, Any]]

    def add(self, dataset: Dataset, batch: StreamedBatch) -> None:
        most = max(n for n, _ in self.consumers)
        keep = int(np.count_nonzero(batch.index < most))
        if keep == 0:
            return
        images, index = batch.images[:keep], batch.index[:keep]
        ref = _reference_output(self.reference, dataset, images, index, self.upto, self.file)
        out = batch.outputs[self.upto - 1]
        for n, sums in self.consumers:
            k = int(np.count_nonzero(index < n))
            if k:
                sums.add(out[:k], ref[:k])


def _reference_probes(
    loaded: LoadedConfig,
    dataset: Dataset,
    chain: Chain,
    wanted: Sequence[Comparison],
    *,
    registry: Registry,
) -> list[_ReferenceProbe]:
    """A probe per comparison; comparisons with the same reference config and compared
    stage share one (its reference chain runs once per batch)."""
    probes: list[tuple[Config, _ReferenceProbe]] = []
    for c in wanted:
        upto = _stage_count(chain, c.stage)
        n = math.inf if c.images == "all" else int(c.images)
        for config, probe in probes:
            if probe.upto == upto and config == c.reference.config:
                probe.consumers.append((n, c.sums))
                break
        else:
            ref = build_chain(c.reference, dataset.info(), registry=registry, with_model=False)
            probes.append(
                (c.reference.config, _ReferenceProbe(ref, upto, loaded.file, [(n, c.sums)]))
            )
    return [p for _, p in probes]


def _quality_comparison(
    loaded: LoadedConfig, chain: Chain, *, registry: Registry | None = None
) -> Comparison | None:
    """The run's PSNR/SSIM (see :mod:`pipeline.quality`): the raw stage against the config
    with :func:`pipeline.reference.default_reference` applied, on the first
    :data:`~pipeline.quality.QUALITY_IMAGES` images. None when the chain has no
    photodetector or its last sensor stage is not unitless.
    """
    overrides = default_reference(loaded.raw)
    n = len(chain.sensor_stages)
    if not overrides or n == 0 or chain.infos[n].unit is not Unit.UNITLESS:
        return None
    registry = registry or default_registry()
    try:
        reference = load_config(loaded.raw, overrides, registry=registry, base_dir=loaded.base_dir)
        # built here once to blame a failure on the reference; probes build their own
        build_chain(reference, chain.infos[0], registry=registry, with_model=False)
    except UserError as exc:
        raise UserError(
            f"the ideal-sensor reference for PSNR/SSIM ({', '.join(overrides)}): {exc.message}",
            file=loaded.file,
            key=exc.key,
        ) from None
    return Comparison(reference, QualitySums(), None, QUALITY_IMAGES)


def _pairs(items: Mapping[str, Any] | Sequence[str]) -> Iterator[tuple[str, Any]]:
    if isinstance(items, Mapping):
        yield from items.items()
    else:
        for item in items:
            yield parse_override(item)


def _record_plan(config: Config, chain: Chain, n_images: int) -> tuple[list[int], int]:
    """Which chain positions to record (-1 is the dataset) and how many images."""
    rec = config.run.record
    all_names = [DATASET, *chain.names]
    if rec.stages == "all":
        chosen = all_names
    elif rec.stages == "none":
        chosen = []
    else:
        for name in rec.stages:
            if name not in all_names:
                raise UserError(
                    f"no stage {name!r} to record{did_you_mean(name, all_names)}",
                    key="run.record.stages",
                )
        chosen = list(rec.stages)
    n = n_images if rec.images == "all" else min(int(rec.images), n_images)
    return [all_names.index(name) - 1 for name in chosen], n


def _check_batch_bytes(loaded: LoadedConfig, chain: Chain, batch: int) -> None:
    """Refuse a batch whose largest stage output exceeds the ``batch_bytes`` limit."""
    for i, info in enumerate(chain.infos):
        nbytes = batch * math.prod(info.shape) * np.dtype(info.dtype).itemsize
        where = f"{chain.keys[i - 1]}'s output" if i else "the dataset"
        try:
            limits.check("batch_bytes", nbytes, what=f"a batch of {batch} images of {where}")
        except UserError as exc:
            raise loaded.error(f"{exc.message}; or lower it", key="run.batch_size") from None


def _check_classes_fit(loaded: LoadedConfig, dataset: Dataset, chain: Chain) -> None:
    """Refuse, before any image flows, a dataset with more classes than the model scores."""
    if chain.classifier is None:
        return
    k_model = len(chain.classifier.model.class_names)
    k_data = len(dataset.class_names)
    if k_data > k_model:
        raise loaded.error(
            f"the dataset has {k_data} classes (labels up to {k_data - 1}) but the model "
            f"scores {k_model}; use a model trained on these classes",
            key="dataset",
        )


def _run_name(loaded: LoadedConfig) -> str:
    if loaded.config.run.name:
        return loaded.config.run.name
    stem = Path(loaded.file).stem if loaded.file.endswith((".yaml", ".yml")) else "run"
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    return f"{stem}-{stamp}"


def _execute(
    loaded: LoadedConfig,
    dataset: Dataset,
    chain: Chain,
    *,
    store: bool,
    progress: bool | None,
    probes: Sequence[_ReferenceProbe] = (),
    quality: QualitySums | None = None,
) -> RunResult:
    config = loaded.config
    _check_classes_fit(loaded, dataset, chain)
    _check_batch_bytes(loaded, chain, min(config.run.batch_size, len(dataset)))
    try:
        positions, n_record = _record_plan(config, chain, len(dataset))
    except UserError as exc:
        raise exc.located(file=loaded.file) from None
    writer = None
    if store:
        try:
            writer = RunWriter(config.run.out, _run_name(loaded))
        except UserError as exc:
            raise exc.located(file=loaded.file) from None
    try:
        recorder = _Recorder(chain, dataset, positions, n_record, writer)
        result = _run_stream(loaded, dataset, chain, recorder, progress, probes, quality)
        recorder.save_provenance()
        if writer is not None:
            _write_samples(writer, chain, result, config.run.samples)
            result.path = writer.commit(result.manifest)
        return result
    except BaseException:
        if writer is not None:
            writer.abort()
        raise


PROVENANCE = "provenance"  # zarr group and manifest section: where recorded images come from


class _Recorder:
    """The recorded stages' first ``n_record`` images: kept in memory and, with a writer,
    written to the run's array store as they stream by; with them, each image's label,
    dataset image key and (folder datasets) file name, its provenance."""

    def __init__(
        self,
        chain: Chain,
        dataset: Dataset,
        positions: list[int],
        n_record: int,
        writer: RunWriter | None,
    ) -> None:
        self.positions = positions
        self.names = [DATASET if p < 0 else chain.names[p] for p in positions]
        self.n_record = n_record
        self.writer = writer
        self.infos = [chain.infos[p + 1] for p in positions]
        self.arrays: dict[str, np.ndarray] = {}
        for pos, name, info in zip(positions, self.names, self.infos, strict=True):
            self.arrays[name] = np.zeros((n_record, *info.shape), dtype=info.dtype)
            if writer is not None:
                attrs = {
                    "stage": name,
                    "unit": str(info.unit),
                    "index": pos,
                    "signal_attrs": dict(info.attrs),
                }
                writer.create_array(name, (n_record, *info.shape), info.dtype, attrs)
        n_traced = n_record if positions else 0
        self.image_keys = batch_for(dataset, np.arange(n_traced, dtype=np.int64)).image_index
        self.files = dataset.sources(0, n_traced)
        self.labels: np.ndarray | None = None  # set by the first labelled batch

    def add(self, batch: StreamedBatch) -> None:
        """Keep the part of ``batch`` that falls among the first ``n_record`` images."""
        start = int(batch.index[0])
        if start >= self.n_record:
            return
        stop = min(int(batch.index[-1]) + 1, self.n_record)
        traced = min(stop, len(self.image_keys)) - start
        if batch.labels is not None and traced > 0:
            if self.labels is None:
                self.labels = np.zeros(len(self.image_keys), np.int64)
            self.labels[start : start + traced] = batch.labels[:traced]
        outputs = [batch.images, *batch.outputs]
        for pos, name in zip(self.positions, self.names, strict=True):
            part = outputs[pos + 1][: stop - start]
            self.arrays[name][start:stop] = part
            if self.writer is not None:
                self.writer.write(name, start, part)

    def manifest_entries(self) -> dict[str, dict[str, Any]]:
        """The manifest's ``arrays`` section."""
        return {
            name: {
                "path": f"arrays.zarr/{name}",
                "shape": [self.n_record, *info.shape],
                "dtype": str(info.dtype),
                "unit": str(info.unit),
            }
            for name, info in zip(self.names, self.infos, strict=True)
        }

    def provenance(self) -> dict[str, Any]:
        """The manifest's ``provenance`` section: for recorded image i, ``labels[i]`` (None
        for an unlabelled dataset), ``image_keys[i]`` (the dataset's stable identity of
        the image, :meth:`Dataset.image_keys`) and ``files[i]`` (None without files)."""
        return {
            "path": f"arrays.zarr/{PROVENANCE}",
            "images": len(self.image_keys),
            "labels": None if self.labels is None else self.labels.tolist(),
            "image_keys": self.image_keys.tolist(),
            "files": self.files,
        }

    def save_provenance(self) -> None:
        """Write the provenance arrays (``labels``, ``image_keys``, ``files``) to the store."""
        if self.writer is None:
            return
        arrays = {"image_keys": self.image_keys, "labels": self.labels, "files": self.files}
        for name, values in arrays.items():
            if values is not None:
                self.writer.save_array(f"{PROVENANCE}/{name}", values, {"provenance": name})


def _progress_bar(config: Config, progress: bool | None, total: int) -> Any:
    """Progress over images (:mod:`pipeline.progress`: a bar on a terminal, a line per
    10 % in a log): on when asked, else as the config says."""
    show = config.run.progress if progress is None else progress
    return progress_reporter(total, desc="run", unit="img", show=show)


def _run_stream(
    loaded: LoadedConfig,
    dataset: Dataset,
    chain: Chain,
    recorder: _Recorder,
    progress: bool | None,
    probes: Sequence[_ReferenceProbe] = (),
    quality: QualitySums | None = None,
) -> RunResult:
    """Stream the whole dataset through the chain: record, collect labels and predictions,
    feed the PSNR/SSIM probe, time, then measure and describe the run."""
    clock = StreamClock.for_chain(chain)
    labels_all: list[np.ndarray] = []
    preds_all: list[np.ndarray] = []
    bar = _progress_bar(loaded.config, progress, len(dataset))
    t_start = time.perf_counter()
    for batch in stream(
        chain, dataset, loaded.config.run.batch_size, file=loaded.file, clock=clock
    ):
        recorder.add(batch)
        for probe in probes:
            probe.add(dataset, batch)
        if batch.labels is not None:
            labels_all.append(np.asarray(batch.labels))
        if chain.classifier is not None:
            preds_all.append(np.argmax(batch.last, axis=1))
        bar.update(len(batch.index))
    bar.close()
    wall = time.perf_counter() - t_start
    labels = np.concatenate(labels_all) if labels_all else None
    preds = np.concatenate(preds_all) if preds_all else None
    metrics: dict[str, Any] = {}
    if labels is not None and preds is not None:
        metrics = classification_metrics(labels, preds, chain.classifier.model.class_names)
    if quality is not None:
        metrics.update(quality.metrics)
    manifest = _manifest(loaded, dataset, chain, recorder, clock, wall, metrics)
    return RunResult(recorder.arrays, metrics, manifest, None, preds, labels)


def _manifest(
    loaded: LoadedConfig,
    dataset: Dataset,
    chain: Chain,
    recorder: _Recorder,
    clock: StreamClock,
    wall: float,
    metrics: dict[str, Any],
) -> dict[str, Any]:
    config = loaded.config
    return {
        "sensorlab": __version__,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config_file": loaded.file,
        "config": config.plain(),
        "seed": config.seed,
        "sensor_seed": config.sensor_seed if config.sensor_seed is not None else config.seed,
        "versions": _versions(),
        "dataset": {
            "images": len(dataset),
            "image_shape": list(dataset.image_shape),
            "dtype": str(dataset.dtype),
            "encoding": dataset.encoding,
            "classes": list(dataset.class_names),
        },
        "stages": _stage_entries(chain, clock),
        "arrays": recorder.manifest_entries(),
        "provenance": recorder.provenance(),
        "wall_seconds": round(wall, 6),
        "images_per_second": round(len(dataset) / wall, 3) if wall > 0 else None,
        "metrics": metrics,
    }


def _stage_entries(chain: Chain, clock: StreamClock) -> list[dict[str, Any]]:
    """The manifest's ``stages`` section: the dataset, then each stage with its timing."""
    stages = [
        {
            "name": DATASET,
            "kind": "dataset",
            "unit": str(chain.infos[0].unit),
            "shape": list(chain.infos[0].shape),
            "dtype": str(chain.infos[0].dtype),
            "seconds": round(clock.read_s, 6),
        }
    ]
    for i, stage in enumerate(chain.stages):
        info = chain.infos[i + 1]
        stages.append(
            {
                "name": chain.names[i],
                "kind": stage.kind,
                "key": chain.keys[i],
                "takes": str(chain.infos[i].unit),
                "unit": str(info.unit),
                "shape": list(info.shape),
                "dtype": str(info.dtype),
                "attrs": dict(info.attrs),
                "seconds": round(clock.stage_s[i], 6),
            }
        )
    return stages


def _versions() -> dict[str, str]:
    import numpy
    import pydantic
    import zarr

    return {
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "sensorlab": __version__,
        "zarr": zarr.__version__,
        "pydantic": pydantic.__version__,
        "platform": platform.platform(),
    }


def _write_samples(writer: RunWriter, chain: Chain, result: RunResult, n: int) -> None:
    from pipeline.samples import confusion_figure, samples_figure

    if "confusion_matrix" in result.metrics:
        confusion_figure(result.metrics, writer.path("confusion.png"))
    if n > 0 and result.arrays:
        samples_figure(result.arrays, chain, writer.path("samples.png"), n=n, labels=result.labels)

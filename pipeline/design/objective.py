"""What a candidate ADC is worth: the accuracy of the model on its images.

:class:`Backend` holds a chain built once and rebuilds only the stages from the ADC on
(ADC, raw, ..., classifier) for a candidate setting: a table of thresholds
(:meth:`Backend.table`, full scale = the full well) or a fixed curve
(:meth:`Backend.fixed`, with the base's gain or a chosen full scale). :func:`score`
runs images that reached the ADC (:class:`pipeline.design.front.FrontImages`) through
that back end; with fine-tuning, the model is first trained a little on the candidate's
images (:func:`fine_tuned_model`).

The search's fitness is the validation accuracy plus a tie-break smaller than one
image: the mean probability the model gives the true class, divided by ``2 n`` — so
two candidates with the same count of right answers are ordered by confidence, and
one more right answer always wins.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.classifier import ClassifierStage, to_nchw
from pipeline.cnn.training import TrainConfig, fit
from pipeline.errors import UserError
from pipeline.runner import Chain
from pipeline.stage import Batch, StageError, Unit

__all__ = ["Backend", "Score", "fine_tuned_model", "score", "sensor_images"]

_BATCH = 256  # images per call through the back end (logits do not depend on it)


@dataclass(frozen=True)
class Score:
    """Right answers out of ``n``, and the mean probability of the true class."""

    correct: int
    n: int
    mean_p_true: float

    @property
    def accuracy(self) -> float:
        return self.correct / self.n

    @property
    def fitness(self) -> float:
        """Accuracy plus a tie-break below one image: ``mean_p_true / (2 n)``."""
        return self.accuracy + self.mean_p_true / (2 * self.n)


class Backend:
    """The chain from the ADC on, rebuilt for each candidate ADC setting.

    Parameters
    ----------
    chain : the whole chain (sensor stages and classifier), built once.
    adc_index : the position of the ADC in it.
    file : the config file, named in errors.
    """

    def __init__(self, chain: Chain, adc_index: int, file: str) -> None:
        if chain.classifier is None:
            raise UserError("designing an ADC needs a model", file=file, key="model")
        info = chain.infos[adc_index]
        full_well = info.attrs.get("full_well_e")
        if info.unit != Unit.ELECTRONS or full_well is None:
            raise UserError(
                "designing an ADC needs electrons with a full_well_e at the adc's input "
                f"(a photodetector before it); it gets {info.unit}",
                file=file,
                key=f"sensor[{adc_index}]",
            )
        self.chain = chain
        self.adc_index = adc_index
        self.file = file
        self.full_well_e = float(full_well)
        adc = chain.stages[adc_index]
        self.bits = int(adc.params.bits)
        self.analog_gain = float(adc.params.analog_gain)
        self.black_level_dn = int(chain.infos[adc_index + 1].attrs["black_level_dn"])
        self.n_thresholds = (1 << self.bits) - 1 - self.black_level_dn

    def with_adc(self, **update: Any) -> Chain:
        """The back chain (ADC on) with the ADC's parameters updated."""
        src = self.chain
        infos = [src.infos[self.adc_index]]
        stages = []
        for i in range(self.adc_index, len(src.stages)):
            old = src.stages[i]
            new = old
            if not isinstance(old, ClassifierStage):
                values = old.params.model_dump()
                if i == self.adc_index:
                    values.update(update)
                params = type(old).Params.model_validate(values)
                new = type(old)(params, seed=old.seed, sensor_seed=old.sensor_seed, index=old.index)
            try:
                infos.append(new.setup(infos[-1]))
            except StageError as exc:
                key = f"{src.keys[i]}.{src.names[i]}" + (f".{exc.key}" if exc.key else "")
                raise UserError(str(exc), file=self.file, key=key) from None
            stages.append(new)
        start = self.adc_index
        return Chain(stages, src.names[start:], infos, src.keys[start:])

    def gain_update(self, full_scale_e: float) -> dict[str, Any]:
        """The ADC parameters that put its full scale at ``full_scale_e`` electrons.

        The adc stage's full scale is ``2**N / (K · analog_gain)``
        (:class:`sensors.adc.ADCStage`), so ``K = system_gain_dn_per_e = 2**N /
        (full_scale_e · analog_gain)``; the base's analog gain is kept and a conversion
        gain or volts range is cleared. Lowering the full scale below the full well is
        the analog gain a real ADC chooses freely (it clips at ``full_scale_e``).
        """
        gain = (1 << self.bits) / (float(full_scale_e) * self.analog_gain)
        return {
            "system_gain_dn_per_e": gain,
            "conversion_gain_uv_per_e": None,
            "full_scale_v": None,
        }

    def table(self, thresholds: np.ndarray, full_scale_e: float | None = None) -> Chain:
        """The back chain with a table ADC: ``thresholds`` as fractions of its full scale,
        ``full_scale_e`` electrons (default: the full well)."""
        scale = self.full_well_e if full_scale_e is None else full_scale_e
        return self.with_adc(
            curve="table", thresholds=[float(t) for t in thresholds], **self.gain_update(scale)
        )

    def fixed(self, curve: str, full_scale_e: float | None = None) -> Chain:
        """The back chain with a fixed curve (linear, log, sqrt): with the base's gain, or
        with its full scale at ``full_scale_e`` electrons (:meth:`gain_update`)."""
        update = {} if full_scale_e is None else self.gain_update(full_scale_e)
        return self.with_adc(curve=curve, thresholds=None, **update)


def sensor_images(back: Chain, signal: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """What the sensor gives the CNN, (N, C, H, W) float32: the back chain without it."""
    n_sensor = len(back.sensor_stages)
    out = []
    for lo in range(0, len(signal), _BATCH):
        batch = Batch(keys[lo : lo + _BATCH])
        out.append(to_nchw(back.apply(signal[lo : lo + _BATCH], batch, upto=n_sensor)[-1]))
    return np.concatenate(out)


def score(
    back: Chain, signal: np.ndarray, labels: np.ndarray, keys: np.ndarray, model: Any = None
) -> Score:
    """The back chain's (or ``model``'s, on the back chain's images) score on images.

    Parameters
    ----------
    back : the back chain from :class:`Backend`.
    signal, labels, keys : images as they reach the ADC (:class:`FrontImages`).
    model : a model to use instead of the chain's classifier (a fine-tuned one).
    """
    if model is None:
        logits = np.concatenate(
            [
                back.apply(signal[lo : lo + _BATCH], Batch(keys[lo : lo + _BATCH]))[-1]
                for lo in range(0, len(signal), _BATCH)
            ]
        )
    else:
        x = sensor_images(back, signal, keys)
        logits = np.concatenate(list(model.iter_logits(x, _BATCH)))
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    rows = np.arange(len(labels))
    correct = int(np.count_nonzero(np.argmax(logits, axis=1) == labels))
    return Score(correct, len(labels), float(p[rows, labels].mean()))


def fine_tuned_model(
    back: Chain, train: Any, cfg: TrainConfig, model: Any, *, epochs: int, lr: float
) -> Any:
    """``model`` (a fresh copy: trained in place) fine-tuned on ``train``'s images as
    ``back`` digitises them, with the base recipe ``cfg`` at ``epochs`` and ``lr``,
    no held-out split and no best-epoch restore (the search's validation set judges)."""
    x = sensor_images(back, train.signal, train.keys)
    tuned = cfg.model_copy(
        update={
            "epochs": epochs,
            "lr": lr,
            "warmup_epochs": 0,
            "val_fraction": 0.0,
            "restore_best": False,
            "patience": None,
            "min_lr": 0.0,
        }
    )
    fit(model, (x, train.labels), None, TrainConfig.model_validate(tuned.model_dump()))
    return model

"""The ``train:`` section of a run config (:class:`TrainConfig`), kept apart from the
training loop so that the config layer validates it without importing the CNN engine."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    from pipeline.cnn.model import Model
    from pipeline.cnn.optim import LRSchedule, Optimizer

__all__ = ["TrainConfig"]


class TrainConfig(BaseModel):
    """The ``train:`` section of a run config: how a model is trained."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: int = Field(20, ge=1, le=100_000, description="Passes over the training set.")
    batch_size: int = Field(64, ge=1, le=65_536, description="Images per optimiser step.")
    optimizer: Literal["sgd", "adam", "adamw"] = Field(
        "adam", description="sgd (with momentum/Nesterov), adam (L2 decay) or adamw (decoupled)."
    )
    lr: float = Field(
        1e-3, gt=0.0, le=10.0, description="Peak learning rate, per step (after warm-up)."
    )
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="SGD momentum (0 = plain SGD).")
    nesterov: bool = Field(False, description="SGD: Nesterov momentum.")
    beta1: float = Field(0.9, ge=0.0, lt=1.0, description="Adam/AdamW first-moment decay.")
    beta2: float = Field(0.999, ge=0.0, lt=1.0, description="Adam/AdamW second-moment decay.")
    eps: float = Field(1e-8, gt=0.0, le=1.0, description="Adam/AdamW denominator term.")
    weight_decay: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Weight decay per step, on conv and dense weights only: L2 (added to the "
        "gradient) for sgd and adam, decoupled (p *= 1 - lr * weight_decay) for adamw.",
    )
    schedule: Literal["constant", "step", "cosine"] = Field(
        "constant", description="Learning-rate decay after warm-up, per epoch."
    )
    step_epochs: int = Field(10, ge=1, description="step schedule: epochs between decays.")
    gamma: float = Field(0.1, gt=0.0, le=1.0, description="step schedule: factor per decay.")
    min_lr: float = Field(0.0, ge=0.0, description="cosine schedule: final learning rate.")
    warmup_epochs: int = Field(
        0, ge=0, description="Epochs of linear warm-up from lr / warm-up steps to lr."
    )
    patience: int | None = Field(
        None,
        ge=1,
        description="Stop after this many epochs without a lower validation loss; "
        "None = train all epochs.",
    )
    restore_best: bool = Field(
        True, description="At the end, keep the weights of the epoch with the lowest val loss."
    )
    val_fraction: float = Field(
        0.1,
        ge=0.0,
        lt=1.0,
        description="Fraction of the training images held out for validation (stratified "
        "by class) when no validation images are given; `sensorlab train` uses the "
        "dataset's val split when it has one.",
    )
    seed: int = Field(0, ge=0, description="Seed of initial weights, split, shuffling, dropout.")
    checkpoint_every: int = Field(1, ge=1, description="Epochs between checkpoints.")

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.warmup_epochs >= self.epochs:
            raise ValueError(
                f"warmup_epochs ({self.warmup_epochs}) must be less than epochs ({self.epochs})"
            )
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
            raise ValueError("nesterov needs optimizer: sgd with momentum > 0")
        if self.schedule == "cosine" and self.min_lr >= self.lr:
            raise ValueError(f"min_lr ({self.min_lr}) must be less than lr ({self.lr})")
        return self

    def make_optimizer(self, model: Model) -> Optimizer:
        from pipeline.cnn.optim import make_optimizer

        return make_optimizer(
            self.optimizer,
            model.params,
            lr=self.lr,
            momentum=self.momentum,
            nesterov=self.nesterov,
            betas=(self.beta1, self.beta2),
            eps=self.eps,
            weight_decay=self.weight_decay,
        )

    def make_schedule(self) -> LRSchedule:
        from pipeline.cnn.optim import LRSchedule

        return LRSchedule(
            self.schedule,
            self.lr,
            self.epochs,
            self.warmup_epochs,
            self.step_epochs,
            self.gamma,
            self.min_lr,
        )

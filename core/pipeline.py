"""The layer-priority binarization pipeline (Zhuang et al. 2017, arXiv 1709.04344).

One *step* binarizes the next layer in the chosen order, fine-tunes the whole network for
`finetune_iters` iterations, evaluates MR^-2 / AP@0.5 on the validation split, measures the
compression ratio and hands a packed checkpoint to `on_step`. Step 0 is the float model.
The all-at-once baseline (XNOR-Net / BWN style) binarizes the same set of layers in one
step and fine-tunes with the same total iteration budget.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Method = Literal["layer_priority", "all_at_once"]
Order = Literal["inverse_depth", "forward", "sensitivity"]


class Target(BaseModel):
    """Where to stop: exactly one of the two fields is set."""

    model_config = ConfigDict(extra="forbid")

    min_compression_ratio: float | None = Field(default=None, gt=1.0, le=32.0)
    max_miss_rate_increase: float | None = Field(default=None, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _exactly_one(self) -> Target:
        if (self.min_compression_ratio is None) == (self.max_miss_rate_increase is None):
            raise ValueError(
                "target must set exactly one of min_compression_ratio, max_miss_rate_increase"
            )
        return self


class PipelineConfig(BaseModel):
    """Everything that defines a binarization run; stored with the job as JSON."""

    model_config = ConfigDict(extra="forbid")

    target: Target
    method: Method = "layer_priority"
    order: Order = "inverse_depth"
    bits: int = Field(default=1, ge=1, le=4)
    finetune_iters: int = Field(default=200, ge=0, le=100_000)
    seed: int = 0
    batch_size: int = Field(default=8, ge=1, le=256)
    learning_rate: float = Field(default=1e-3, gt=0.0, le=1.0)


class Progress(BaseModel):
    """A progress report: the step running and how far the whole run is."""

    step: int
    total_steps: int
    iteration: int
    total_iterations: int
    percent: float
    eta_seconds: float | None
    message: str = ""


class StepOutcome(BaseModel):
    """One completed step. `checkpoint` (packed, for serving) and `state` (latent float
    weights, for resuming) are bytes; everything else is JSON-able metadata."""

    index: int
    layers: list[str]
    binary_layers: list[str]
    bits: int
    compression_ratio: float
    binary_layer_compression: float | None
    miss_rate: float
    ap50: float
    step_seconds: float
    checkpoint_bytes: int
    checkpoint: bytes = Field(repr=False, exclude=True)
    state: bytes = Field(repr=False, exclude=True)
    fppi_curve: list[tuple[float, float]] = Field(default_factory=list)


class PipelineResult(BaseModel):
    steps: list[StepOutcome]
    selected_index: int


OnStep = Callable[[StepOutcome], None]
OnProgress = Callable[[Progress], None]
ShouldStop = Callable[[], bool]


class Cancelled(Exception):
    """Raised inside `run` when `should_stop()` answered True."""


def run(
    model,
    card,
    train_records,
    val_records,
    config: PipelineConfig,
    *,
    completed=(),
    on_step: OnStep | None = None,
    on_progress: OnProgress | None = None,
    should_stop: ShouldStop | None = None,
    device: str = "cpu",
) -> PipelineResult:
    """Run (or resume) a binarization job.

    model: the float detector as uploaded (`core.checkpoint.load_model*`), card its ModelCard.
    train_records / val_records: `core.data.ImageRecord`s.
    completed: StepOutcomes already committed by an earlier, interrupted run of the same
      config; the run resumes after the last one and repeats none of them.
    on_step: called once per newly completed step (including step 0), in order.
    on_progress: called at least every few seconds while a step runs.
    should_stop: polled every fine-tuning iteration; True raises `Cancelled`.
    """
    raise NotImplementedError  # being written

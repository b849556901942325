"""What defines a binarization run, importable without torch (the API validates job bodies
with it; `core.pipeline` runs it)."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Method = Literal["layer_priority", "all_at_once"]
ACTIVATION_BITS = (1, 32)
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
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    batch_size: int = Field(default=8, ge=1, le=256)
    learning_rate: float = Field(default=1e-3, gt=0.0, le=1.0)
    min_layer_params: int = Field(
        default=1024, ge=0,
        description="layers with fewer weights stay float: packing them saves at most a few KB, "
        "while binarizing a detector's first conv or its 1x1 output heads costs accuracy "
        "(XNOR-Net keeps first and last layers float for the same reason); 0 = every layer")
    num_layers: int | None = Field(
        default=None, ge=1, le=10_000,
        description="all_at_once only: binarize exactly this many layers (first ones of "
        "`order`) instead of as many as the target needs")
    activation_bits: int = Field(
        default=32,
        description="32: binarize weights only (inputs stay float); 1: every binarized layer that can also "
        "takes binary inputs H(x - τ) with a learnable threshold (core.binary.activation), so it runs as a "
        "1-bit XNOR-popcount convolution once exported (dense Conv2d with a multiple of 8 input channels; "
        "other layers keep float inputs)")

    @field_validator("activation_bits")
    @classmethod
    def _activation_bits(cls, value: int) -> int:
        if value not in ACTIVATION_BITS:
            raise ValueError(f"activation_bits must be 1 (binary inputs) or 32 (float inputs), got {value}")
        return value

    @model_validator(mode="after")
    def _method_fits_target(self) -> PipelineConfig:
        if self.method == "all_at_once" and self.target.min_compression_ratio is None \
                and self.num_layers is None:
            raise ValueError("method all_at_once needs target.min_compression_ratio (or "
                             "num_layers): a miss-rate budget has no single layer set")
        if self.method == "layer_priority" and self.num_layers is not None:
            raise ValueError("num_layers applies to method all_at_once only")
        if self.activation_bits == 1 and self.bits != 1:
            raise ValueError("activation_bits 1 needs bits 1: a 1-bit convolution takes 1-bit weights")
        return self

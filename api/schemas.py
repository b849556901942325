"""Request and response bodies, one schema per use (the public contract is shared/API.md)."""
from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from core.config import Method, Order, Target

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class ArchitecturePublic(BaseModel):
    name: str
    description: str
    default_kwargs: dict[str, Any]


class ModelPublic(BaseModel):
    id: str
    architecture: str
    num_classes: int
    num_params: int
    size_bytes: int
    card: dict[str, Any] = Field(description="The model card as validated (builder kwargs resolved).")
    name: str | None = None
    created_at: datetime


class DatasetPublic(BaseModel):
    id: str
    num_images: int
    num_boxes: int
    size_bytes: int
    name: str | None = None
    created_at: datetime


class ModelsPublic(BaseModel):
    data: list[ModelPublic]
    count: int


class DatasetsPublic(BaseModel):
    data: list[DatasetPublic]
    count: int


class JobCreate(BaseModel):
    """`POST /jobs`. Everything but the ids and the target has a default."""

    model_config = ConfigDict(extra="forbid")

    model_id: str
    dataset_id: str
    target: Target
    method: Method = "layer_priority"
    order: Order = "inverse_depth"
    bits: int = Field(default=1, ge=1, le=4)
    finetune_iters: int = Field(default=200, ge=0, le=100_000)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    batch_size: int | None = Field(default=None, ge=1, le=256, description="Fine-tuning batch size.")
    learning_rate: float | None = Field(default=None, gt=0.0, le=1.0)
    num_layers: int | None = Field(
        default=None, ge=1, le=10_000, description="all_at_once only: binarize exactly this many layers."
    )
    min_layer_params: int | None = Field(
        default=None, ge=0, description="Layers with fewer weights stay float (default 1024; 0 = every layer)."
    )
    deploy_on_success: bool = Field(
        default=False, description="Deploy the selected checkpoint for this tenant when the job succeeds."
    )
    activation_bits: int = Field(
        default=32, description="32: binarize weights only; 1: binarized layers also take binary inputs "
        "(real 1-bit convolutions once exported to OpenVINO; needs bits 1). Anything else: 422."
    )


class JobCreated(BaseModel):
    id: str
    status: JobStatus


class JobProgress(BaseModel):
    step: int
    total_steps: int | None
    percent: float
    eta_seconds: float | None
    message: str | None = None
    updated_at: datetime | None = None


class JobStepPublic(BaseModel):
    index: int
    layers: list[str]
    binary_layers: list[str]
    bits: int
    compression_ratio: float
    binary_layer_compression: float | None
    miss_rate: float
    ap50: float
    step_seconds: float
    checkpoint_id: str
    checkpoint_bytes: int
    latency_ms: float | None = Field(
        default=None, description="Median forward time of the step's exported OpenVINO model on the worker's CPU "
        "(1 thread, the export's fixed input size), in ms; null when it was not exported.")


class JobPublic(BaseModel):
    id: str
    model_id: str
    dataset_id: str
    target: dict[str, Any]
    method: str
    order: str
    bits: int
    finetune_iters: int
    seed: int
    config: dict[str, Any]
    status: JobStatus
    progress: JobProgress
    steps: list[JobStepPublic]
    selected_checkpoint_id: str | None
    error: str | None
    cancel_requested: bool
    deploy_on_success: bool
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class JobsPublic(BaseModel):
    data: list[JobPublic]
    count: int


class LayerPrecision(BaseModel):
    precision: Literal["float", "binary_weights", "binary_weights_activations"] = Field(
        description="What the checkpoint holds: float weights, 1-bit weights (float inputs), or 1-bit weights "
                    "and 1-bit inputs.")
    runs_as: Literal["float", "int8", "binary_weights", "binary_weights_activations"] | None = Field(
        default=None, description="How OpenVINO's compiled model runs the layer on the worker's CPU: a float, an "
                                  "int8 or a 1-bit (binary_weights_activations) convolution; null if not measured.")


class CheckpointPublic(BaseModel):
    id: str
    job_id: str
    model_id: str
    step: int
    architecture: str
    binary_layers: list[str]
    bits: int
    compression_ratio: float
    binary_layer_compression: float | None
    size_bytes: int
    miss_rate: float
    ap50: float
    sha256: str
    created_at: datetime
    fppi_curve: list[list[float]] = Field(
        default_factory=list,
        description="MR-FPPI curve on the validation split: [false positives per image, miss rate] "
                    "operating points in decreasing score order (at most 100).")
    latency_ms: float | None = Field(
        default=None, description="Median forward time of the exported OpenVINO model on the worker's CPU "
                                  "(1 thread, fixed input size), in ms; null when it was not exported.")
    serving_backend: Literal["openvino", "torch"] = Field(
        description="What /detect runs this checkpoint with in this API process (openvino unless configured "
                    "otherwise or the checkpoint has no OpenVINO export).")
    openvino: bool = Field(description="Whether `download?format=openvino` serves a stored IR zip.")
    layer_precision: dict[str, LayerPrecision] = Field(
        default_factory=dict, description="Per Conv2d / Linear layer: its precision and how OpenVINO runs it.")


class DeploymentUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    checkpoint_id: str


class DeploymentPublic(BaseModel):
    checkpoint_id: str | None
    model_id: str | None
    updated_at: datetime | None


class Detection(BaseModel):
    box: list[float] = Field(
        min_length=4, max_length=4,
        description="x1, y1, x2, y2 in pixels of the image as uploaded (after its EXIF orientation), "
                    "0-based continuous coordinates.")
    score: float = Field(description="Pedestrian confidence in [0, 1].")


class ImageDetections(BaseModel):
    filename: str
    width: int = Field(description="Width of the image in pixels (after EXIF orientation).")
    height: int = Field(description="Height of the image in pixels (after EXIF orientation).")
    detections: list[Detection] = Field(description="Pedestrians, best first.")


class DetectPublic(BaseModel):
    checkpoint_id: str = Field(description="The packed checkpoint that ran.")
    model_id: str = Field(description="The float model the checkpoint was made from.")
    results: list[ImageDetections] = Field(description="One entry per uploaded image, in upload order.")


class Message(BaseModel):
    detail: str

"""Request and response bodies, one schema per use (the public contract is shared/API.md)."""
from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator

from core.job_spec import (
    CheckpointMetrics,
    DeployFormat,
    Method,
    Order,
    PipelineConfig,
    StepMetrics,
)
from service.store.jobs import JobStatus


class PretrainedWeightsPublic(BaseModel):
    name: str = Field(description="Name of the bundled weights (`core.models.load_pretrained`).")
    origin: str = Field(description="Where the weights come from and how they were converted.")
    license: str = Field(description="SPDX licence identifier of the weights.")
    sha256: str = Field(description="sha256 of the bundled weights.safetensors, checked at every load.")


class ArchitecturePublic(BaseModel):
    name: str
    description: str
    default_kwargs: dict[str, Any]
    input_size: int = Field(description="Side of the square dummy image uploads are checked with (pixels); "
                                        "the network's own input size is in default_kwargs where it has one.")
    pretrained: PretrainedWeightsPublic | None = Field(
        default=None, description="Weights that ship with FlexBin for this architecture; null: upload your own.")


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


class JobCreate(PipelineConfig):
    """`POST /jobs`: which model and dataset, the run's options (`core.job_spec.PipelineConfig`:
    everything but the target has a default) and what to do when it succeeds."""

    model_id: str = Field(description="The float detector to binarize (`POST /models`).")
    dataset_id: str = Field(description="Its labelled images (`POST /datasets`): split into training and validation.")
    deploy_on_success: bool = Field(
        default=False, description="Deploy the selected checkpoint for this tenant when the job succeeds."
    )

    def pipeline_config(self) -> PipelineConfig:
        """The run's options alone, as the job row stores them."""
        return PipelineConfig.model_validate(self.model_dump(include=set(PipelineConfig.model_fields)))


class JobCreated(BaseModel):
    id: str
    status: JobStatus


class JobCancelPublic(BaseModel):
    """`POST /jobs/{id}/cancel`: a queued job is `cancelled` at once; a running one is still
    `running`, with `cancel_requested`, until its worker stops it (within one iteration)."""

    id: str
    status: JobStatus
    cancel_requested: bool = Field(description="The job's worker has been told to stop (always true here).")


def _progress_column(name: str) -> AliasChoices:
    return AliasChoices(name, f"progress_{name}")  # the jobs row's progress_<name> column


class JobProgress(BaseModel):
    """How far a job is; read from the jobs row's `progress_*` columns."""

    step: int = Field(validation_alias=_progress_column("step"))
    total_steps: int | None = Field(validation_alias=_progress_column("total_steps"))
    percent: float = Field(validation_alias=_progress_column("percent"))
    eta_seconds: float | None = Field(validation_alias=_progress_column("eta_seconds"))
    message: str | None = Field(default=None, validation_alias=_progress_column("message"))
    updated_at: datetime | None = Field(default=None, validation_alias=_progress_column("updated_at"))


class JobStepPublic(StepMetrics):
    """A committed step (`core.job_spec.StepMetrics`) and the checkpoint it produced; its MR-FPPI
    curve is on the checkpoint (`GET /checkpoints/{id}`), not in every job poll."""

    fppi_curve: list[tuple[float, float]] = Field(default_factory=list, exclude=True)
    checkpoint_id: str


class JobPublic(BaseModel):
    id: str
    model_id: str
    dataset_id: str
    target: dict[str, Any]
    method: Method
    order: Order
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
    ms: float | None = Field(
        default=None, description="The layer's measured time in the exported model on the worker's CPU (1 thread; "
                                  "OpenVINO's per-node counters, its standalone binarization included); null if not "
                                  "measured.")


class CheckpointFiles(BaseModel):
    """The real byte size of each download of a checkpoint (`GET /checkpoints/{id}/download?format=`)."""

    safetensors: int = Field(description="FlexBin's packed checkpoint (binary weights bit-packed): what "
                             "`compression_ratio` describes, against the float32 checkpoint.")
    openvino: int | None = Field(description="The OpenVINO IR zip as trained (1-bit layers packed 1 bit per weight; "
                                 "weights-only binary layers 1 bit per weight too, float layers float32); null until exported.")
    openvino_int8: int | None = Field(description="`format=openvino-int8`: the NNCF int8 IR zip (1-bit layers "
                                      "unchanged); null until first requested, or made by the job for every step (`deploy_format` openvino-int8).")


class CheckpointPublic(CheckpointMetrics):
    """A packed checkpoint: what it is (`core.job_spec.CheckpointMetrics`), where it came from and
    its file."""

    id: str
    job_id: str
    model_id: str
    step: int
    architecture: str
    size_bytes: int
    sha256: str
    created_at: datetime
    openvino: bool = Field(description="Whether `download?format=openvino` serves a stored IR zip.")
    files: CheckpointFiles = Field(description="Byte size of each download, next to `size_bytes` (the packed "
                                   "checkpoint).")
    serving_backend: Literal["openvino", "torch"] = Field(
        default="torch", description="What /detect runs this checkpoint with in this API process (openvino unless "
                                     "configured otherwise or the checkpoint has no OpenVINO export).")
    layer_precision: dict[str, LayerPrecision] = Field(
        default_factory=dict, description="Per Conv2d / Linear layer: its precision and how OpenVINO runs it.")

    @field_validator("layer_precision", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return {} if value is None else value  # checkpoints made before exports existed


DeploymentFormat = DeployFormat


class DeploymentUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    checkpoint_id: str
    format: DeploymentFormat | None = Field(
        default=None, description="openvino (default): the checkpoint as trained; openvino-int8: its NNCF int8 IR "
        "(1-bit layers stay 1-bit; made now when it does not exist yet, which takes seconds to a minute).")


class DeploymentPublic(BaseModel):
    checkpoint_id: str | None
    model_id: str | None
    format: DeploymentFormat = Field(default="openvino", description="Which file of the checkpoint /detect runs.")
    updated_at: datetime | None

    @field_validator("format", mode="before")
    @classmethod
    def _null_is_as_trained(cls, value: Any) -> Any:
        return value or "openvino"


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
    format: DeploymentFormat = Field(default="openvino", description="Which file of it ran: as trained, or its int8 IR.")
    results: list[ImageDetections] = Field(description="One entry per uploaded image, in upload order.")


class Message(BaseModel):
    detail: str

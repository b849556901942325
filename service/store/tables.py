"""FlexBin's tables (SQLAlchemy 2). The schema is changed only by migrations in `migrations/`.

Every user-owned row carries `tenant_id`; the API filters every query by it. Bytes
(weights, dataset archives, checkpoints, resume state) live in `blobs` with a sha256.
"""
from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

def columns_of(table: type[Base], values: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of `values` that are columns of `table` (a step record's metrics become
    the columns of the rows that store them, whichever metrics the record has)."""
    columns = table.__table__.columns
    return {key: value for key, value in values.items() if key in columns}


def new_id() -> str:
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite stores naive UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime; use service.store.tables.utcnow()")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime, dict[str, Any]: JSON, list[Any]: JSON}


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiKey(Base):
    """An API key, stored as sha256(key) hex; the key itself is never stored."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Blob(Base):
    """Bytes with their sha256; readers verify the checksum (`service.store.blobs`)."""

    __tablename__ = "blobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    data: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class DetectorModel(Base):
    """An uploaded (or demo-trained) float detector: safetensors weights + model card."""

    __tablename__ = "models"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str | None] = mapped_column(String(200))
    architecture: Mapped[str] = mapped_column(String(100))
    num_classes: Mapped[int] = mapped_column(Integer)
    num_params: Mapped[int] = mapped_column(BigInteger)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    card: Mapped[dict[str, Any]] = mapped_column(JSON)
    weights_blob_id: Mapped[str] = mapped_column(ForeignKey("blobs.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Dataset(Base):
    """An uploaded dataset zip (Penn-Fudan or COCO layout), kept as uploaded."""

    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str | None] = mapped_column(String(200))
    num_images: Mapped[int] = mapped_column(Integer)
    num_boxes: Mapped[int] = mapped_column(Integer)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    archive_blob_id: Mapped[str] = mapped_column(ForeignKey("blobs.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Job(Base):
    """A binarization run. `config` is the `core.job_spec.PipelineConfig` as JSON.

    Written only through `service.store.jobs` (the lifecycle: statuses, the lease a worker holds
    while it runs the job, progress, cancel, the end).
    """

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id"), index=True)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"), index=True)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), index=True)  # a service.store.jobs.JobStatus
    deploy_on_success: Mapped[bool] = mapped_column(Boolean, default=False)

    progress_step: Mapped[int] = mapped_column(Integer, default=0)
    progress_total_steps: Mapped[int | None] = mapped_column(Integer)
    progress_percent: Mapped[float] = mapped_column(Float, default=0.0)
    progress_eta_seconds: Mapped[float | None] = mapped_column(Float)
    progress_message: Mapped[str | None] = mapped_column(Text)
    progress_updated_at: Mapped[datetime | None] = mapped_column()

    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    selected_step_index: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)

    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None] = mapped_column()
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # When the job's message was last handed to the broker; NULL while `queued` means no
    # message is known to exist (the API died between commit and send, or the job was just
    # requeued): workers send those (service.store.jobs.unsent_jobs).
    enqueued_at: Mapped[datetime | None] = mapped_column()

    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()

    steps: Mapped[list[JobStep]] = relationship(
        back_populates="job", order_by="JobStep.index", lazy="selectin"
    )


class CheckpointMetricColumns:
    """The columns of `core.job_spec.CheckpointMetrics` (but its MR-FPPI curve, kept on the job
    step only), shared by a checkpoint and the job step that produced it."""

    binary_layers: Mapped[list[Any]] = mapped_column(JSON)
    bits: Mapped[int] = mapped_column(Integer)
    compression_ratio: Mapped[float] = mapped_column(Float)
    binary_layer_compression: Mapped[float | None] = mapped_column(Float)
    miss_rate: Mapped[float] = mapped_column(Float)
    ap50: Mapped[float] = mapped_column(Float)
    latency_ms: Mapped[float | None] = mapped_column(Float)  # migration 0003
    int8: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # migration 0005


class Checkpoint(CheckpointMetricColumns, Base):
    """A packed checkpoint produced by one job step (`GET /checkpoints/{id}/download`)."""

    __tablename__ = "checkpoints"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id"))
    step: Mapped[int] = mapped_column(Integer)
    architecture: Mapped[str] = mapped_column(String(100))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    blob_id: Mapped[str] = mapped_column(ForeignKey("blobs.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # OpenVINO export (migration 0003; NULL for older checkpoints and failed exports)
    openvino_blob_id: Mapped[str | None] = mapped_column(ForeignKey("blobs.id"))
    layer_precision: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # its int8 IR zip, made through NNCF on first request (migration 0004)
    openvino_int8_blob_id: Mapped[str | None] = mapped_column(ForeignKey("blobs.id"))

    blob: Mapped[Blob] = relationship(viewonly=True, foreign_keys=[blob_id])
    openvino_blob: Mapped[Blob | None] = relationship(viewonly=True, foreign_keys=[openvino_blob_id])
    openvino_int8_blob: Mapped[Blob | None] = relationship(viewonly=True, foreign_keys=[openvino_int8_blob_id])
    job_step: Mapped[JobStep | None] = relationship(viewonly=True, uselist=False)

    @property
    def sha256(self) -> str:
        """The checksum of the checkpoint file."""
        return self.blob.sha256

    @property
    def files(self) -> dict[str, int | None]:
        """Byte size of each stored file of the checkpoint: the packed checkpoint, its OpenVINO zip
        and its int8 OpenVINO zip (None: not made yet)."""
        return {"safetensors": self.size_bytes,
                "openvino": self.openvino_blob.size_bytes if self.openvino_blob is not None else None,
                "openvino_int8": self.openvino_int8_blob.size_bytes if self.openvino_int8_blob is not None else None}

    @property
    def openvino(self) -> bool:
        """Whether an OpenVINO IR zip of the checkpoint is stored."""
        return self.openvino_blob_id is not None

    @property
    def fppi_curve(self) -> list[Any]:
        """The MR-FPPI curve measured for this checkpoint (kept on its job step)."""
        return self.job_step.fppi_curve if self.job_step is not None else []


class JobStep(CheckpointMetricColumns, Base):
    """One committed pipeline step; (job_id, index) is unique, so a step is never stored twice."""

    __tablename__ = "job_steps"
    __table_args__ = (UniqueConstraint("job_id", "index", name="uq_job_steps_job_id_index"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    index: Mapped[int] = mapped_column(Integer)
    layers: Mapped[list[Any]] = mapped_column(JSON)
    step_seconds: Mapped[float] = mapped_column(Float)
    checkpoint_bytes: Mapped[int] = mapped_column(BigInteger)
    fppi_curve: Mapped[list[Any]] = mapped_column(JSON)
    checkpoint_id: Mapped[str] = mapped_column(ForeignKey("checkpoints.id"))
    state_blob_id: Mapped[str] = mapped_column(ForeignKey("blobs.id"))
    worker: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    job: Mapped[Job] = relationship(back_populates="steps")


class Deployment(Base):
    """Which checkpoint `/detect` serves by default for a tenant (one row per tenant).

    `model_id` is set while only a float model is deployed (the demo before its job ends).
    """

    __tablename__ = "deployments"

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    checkpoint_id: Mapped[str | None] = mapped_column(ForeignKey("checkpoints.id"))
    model_id: Mapped[str | None] = mapped_column(ForeignKey("models.id"))
    # which file of the checkpoint /detect runs: NULL = as trained, "openvino-int8" (migration 0004)
    format: Mapped[str | None] = mapped_column(String(32))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

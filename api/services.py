"""What the routes do: validate uploads with `core`, read and write the store, scoped by tenant.

Routes stay thin; every function here takes the tenant and filters by it, so a foreign id
is indistinguishable from an unknown one (`NotFound` -> 404).
"""
from __future__ import annotations

import json
import logging
import math
from typing import Any, TypeVar

from pydantic import ValidationError
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from api import schemas
from core.settings import Settings
from core.store import (
    Checkpoint,
    Dataset,
    Deployment,
    Job,
    JobStep,
    Model,
    Tenant,
    get_blob_bytes,
    put_blob,
    session_scope,
    utcnow,
)
from core.store.models import Blob

log = logging.getLogger(__name__)


class NotFound(LookupError):
    """An id that is unknown or belongs to another tenant."""


class Conflict(RuntimeError):
    """The request does not fit the resource's current state (409)."""


class TooLarge(ValueError):
    """An upload over its configured limit (413)."""


class InvalidUpload(ValueError):
    """An upload that `core` rejected; the message names the problem (422)."""


class UnsupportedMediaType(ValueError):
    """An upload of a type the endpoint does not take (415)."""


T = TypeVar("T")


def _owned(session: Session, tenant: Tenant, table: type[T], kind: str, row_id: str) -> T:
    """The tenant's row `row_id` of `table`; NotFound for unknown and other tenants' ids alike.

    An id with a NUL character cannot exist (PostgreSQL text cannot hold one, and would fail
    the query with a 500): it answers 404 like any unknown id."""
    if "\x00" in row_id:
        raise NotFound(f"{kind} {row_id!r} not found")
    row = session.scalars(
        select(table).where(table.id == row_id, table.tenant_id == tenant.id)  # type: ignore[attr-defined]
    ).one_or_none()
    if row is None:
        raise NotFound(f"{kind} {row_id} not found")
    return row


def read_upload(upload: Any, limit: int, field: str) -> bytes:
    """Read an uploaded file, refusing (413) past `limit` bytes."""
    chunks, total = [], 0
    while chunk := upload.file.read(1 << 20):
        total += len(chunk)
        if total > limit:
            raise TooLarge(f"{field}: over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


# -- models ---------------------------------------------------------------------------------
def create_model(session: Session, tenant: Tenant, settings: Settings, weights: bytes, card_json: str,
                 name: str | None = None) -> Model:
    """Validate (strict load into the declared architecture + one forward pass), then store."""
    from core.checkpoint import check_forward, load_model_bytes

    if len(weights) > settings.max_model_bytes:
        raise TooLarge(f"weights: {len(weights)} bytes, over the limit of {settings.max_model_bytes}")
    if len(card_json.encode()) > settings.max_card_bytes:
        raise TooLarge(f"card: over the limit of {settings.max_card_bytes} bytes")
    if not weights:
        raise InvalidUpload("weights: empty file")
    try:
        model, card = load_model_bytes(weights, card_json)
        check_forward(model, card)
    except ValueError as exc:  # CheckpointError and friends name the problem
        raise InvalidUpload(str(exc)) from None
    num_params = sum(p.numel() for p in model.parameters())
    card_data = json.loads(card.model_dump_json())
    blob = put_blob(session, weights)
    row = Model(
        tenant_id=tenant.id,
        name=name,
        architecture=card.architecture,
        num_classes=card.num_classes,
        num_params=num_params,
        size_bytes=len(weights),
        card=card_data,
        weights_blob_id=blob.id,
    )
    session.add(row)
    session.flush()
    log.info("tenant %s: model %s (%s, %d params) stored", tenant.name, row.id, row.architecture, num_params)
    return row


def get_model(session: Session, tenant: Tenant, model_id: str) -> Model:
    return _owned(session, tenant, Model, "model", model_id)


def model_public(row: Model) -> schemas.ModelPublic:
    return schemas.ModelPublic.model_validate(row, from_attributes=True)


# -- datasets -------------------------------------------------------------------------------
def create_dataset(session: Session, tenant: Tenant, settings: Settings, archive: bytes,
                   name: str | None = None) -> Dataset:
    """Parse the whole zip (layout, every image decodes, every box inside its image), then store."""
    from core.data import read_dataset_zip

    if len(archive) > settings.max_dataset_bytes:
        raise TooLarge(f"archive: {len(archive)} bytes, over the limit of {settings.max_dataset_bytes}")
    if not archive:
        raise InvalidUpload("archive: empty file")
    try:
        records = read_dataset_zip(archive, **settings.dataset_zip_limits())
    except ValueError as exc:
        raise InvalidUpload(str(exc)) from None
    if not records:
        raise InvalidUpload("archive: the dataset holds no images")
    num_boxes = sum(int(r.boxes.shape[0]) for r in records)
    blob = put_blob(session, archive)
    row = Dataset(
        tenant_id=tenant.id,
        name=name,
        num_images=len(records),
        num_boxes=num_boxes,
        size_bytes=len(archive),
        archive_blob_id=blob.id,
    )
    session.add(row)
    session.flush()
    log.info("tenant %s: dataset %s (%d images, %d boxes) stored", tenant.name, row.id, len(records), num_boxes)
    return row


def get_dataset(session: Session, tenant: Tenant, dataset_id: str) -> Dataset:
    return _owned(session, tenant, Dataset, "dataset", dataset_id)


# -- jobs -----------------------------------------------------------------------------------
def create_job(session: Session, tenant: Tenant, body: schemas.JobCreate) -> Job:
    """Insert a queued job (the caller commits, then enqueues)."""
    from core.config import PipelineConfig

    model = get_model(session, tenant, body.model_id)
    dataset = get_dataset(session, tenant, body.dataset_id)
    fields: dict[str, Any] = body.model_dump(
        exclude={"model_id", "dataset_id", "deploy_on_success"}, exclude_none=True
    )
    try:
        config = PipelineConfig.model_validate(fields)
    except ValidationError as exc:  # cross-field rules (e.g. all_at_once needs a ratio target)
        raise InvalidUpload("; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'job'}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
        )) from None
    job = Job(
        tenant_id=tenant.id,
        model_id=model.id,
        dataset_id=dataset.id,
        config=config.model_dump(mode="json"),
        status="queued",
        deploy_on_success=body.deploy_on_success,
    )
    session.add(job)
    session.flush()
    return job


def get_job(session: Session, tenant: Tenant, job_id: str) -> Job:
    return _owned(session, tenant, Job, "job", job_id)


def list_owned(session: Session, tenant: Tenant, table: type[T], skip: int, limit: int) -> tuple[list[T], int]:
    """One page of the tenant's rows of `table` (Model, Dataset, Job), newest first, and the total."""
    owned = table.tenant_id == tenant.id  # type: ignore[attr-defined]
    count = session.scalar(select(func.count()).select_from(table).where(owned)) or 0
    rows = session.scalars(
        select(table).where(owned).order_by(table.created_at.desc(), table.id.desc())  # type: ignore[attr-defined]
        .offset(skip).limit(limit)
    ).all()
    return list(rows), int(count)


def cancel_job(session: Session, tenant: Tenant, job_id: str) -> Job:
    """A queued job is cancelled at once; a running one gets a flag its worker polls."""
    job = get_job(session, tenant, job_id)
    now = utcnow()
    done = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.status == "queued", Job.lease_owner.is_(None))
        .values(status="cancelled", cancel_requested=True, finished_at=now, progress_message="cancelled")
    ).rowcount
    if not done:
        flagged = session.execute(
            update(Job)
            .where(Job.id == job.id, Job.status.in_(("queued", "running")))
            .values(cancel_requested=True, progress_message="cancel requested")
        ).rowcount
        if not flagged:
            session.refresh(job)
            raise Conflict(f"job {job.id} already {job.status}")
    session.flush()
    session.refresh(job)
    return job


def job_public(session: Session, job: Job) -> schemas.JobPublic:
    steps = [
        schemas.JobStepPublic.model_validate(s, from_attributes=True)
        for s in sorted(job.steps, key=lambda s: s.index)
    ]
    selected = None
    if job.selected_step_index is not None:
        selected = next((s.checkpoint_id for s in steps if s.index == job.selected_step_index), None)
    cfg = job.config
    return schemas.JobPublic(
        id=job.id,
        model_id=job.model_id,
        dataset_id=job.dataset_id,
        target={k: v for k, v in cfg["target"].items() if v is not None},
        method=cfg["method"],
        order=cfg["order"],
        bits=cfg["bits"],
        finetune_iters=cfg["finetune_iters"],
        seed=cfg["seed"],
        config=cfg,
        status=job.status,  # type: ignore[arg-type]
        progress=schemas.JobProgress(
            step=job.progress_step,
            total_steps=job.progress_total_steps,
            percent=job.progress_percent,
            eta_seconds=job.progress_eta_seconds,
            message=job.progress_message,
            updated_at=job.progress_updated_at,
        ),
        steps=steps,
        selected_checkpoint_id=selected,
        error=job.error,
        cancel_requested=job.cancel_requested,
        deploy_on_success=job.deploy_on_success,
        attempts=job.attempts,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
    )


# -- checkpoints ----------------------------------------------------------------------------
def get_checkpoint(session: Session, tenant: Tenant, checkpoint_id: str) -> Checkpoint:
    return _owned(session, tenant, Checkpoint, "checkpoint", checkpoint_id)


def checkpoint_public(session: Session, row: Checkpoint, settings: Settings) -> schemas.CheckpointPublic:
    sha = session.scalar(select(Blob.sha256).where(Blob.id == row.blob_id)) or ""
    curve = session.scalar(select(JobStep.fppi_curve).where(JobStep.checkpoint_id == row.id))
    derived = {"sha256", "fppi_curve", "serving_backend", "openvino", "layer_precision"}
    data = {c: getattr(row, c) for c in schemas.CheckpointPublic.model_fields if c not in derived}
    has_ir = row.openvino_blob_id is not None
    return schemas.CheckpointPublic(
        **data, sha256=sha, fppi_curve=[list(p) for p in curve or []], openvino=has_ir,
        serving_backend="openvino" if settings.serving_backend == "openvino" and has_ir else "torch",
        layer_precision=row.layer_precision or {})


def checkpoint_openvino_zip(session: Session, row: Checkpoint) -> bytes:
    """The checkpoint's OpenVINO IR zip: the one its worker stored, else exported now (and
    stored) for checkpoints made before exports existed; 422 when it cannot be exported."""
    if row.openvino_blob_id is not None:
        return get_blob_bytes(session, row.openvino_blob_id)
    # imports torch: only for checkpoints made before exports existed
    from core.export.openvino import export_checkpoint

    try:
        data = export_checkpoint(get_blob_bytes(session, row.blob_id)).zip_bytes()
    except (ValueError, RuntimeError) as exc:  # CheckpointError, ExportError, OpenVINO's conversion errors
        raise InvalidUpload(f"checkpoint {row.id} cannot be exported to OpenVINO: {exc}"[:2000]) from None
    row.openvino_blob_id = put_blob(session, data).id
    session.flush()
    return data


def job_step_count(session: Session, job_id: str) -> int:
    return int(session.scalar(select(func.count()).select_from(JobStep).where(JobStep.job_id == job_id)) or 0)


# -- deployment -----------------------------------------------------------------------------
def get_deployment(session: Session, tenant: Tenant) -> Deployment | None:
    return session.get(Deployment, tenant.id)


def set_deployment(session: Session, tenant: Tenant, checkpoint_id: str) -> Deployment:
    checkpoint = get_checkpoint(session, tenant, checkpoint_id)
    row = session.get(Deployment, tenant.id)
    if row is None:
        row = Deployment(tenant_id=tenant.id)
        session.add(row)
    row.checkpoint_id = checkpoint.id
    row.model_id = checkpoint.model_id
    row.updated_at = utcnow()
    session.flush()
    return row


def deployed_checkpoint_ids(database_url: str) -> list[str]:
    """Every tenant's deployed checkpoint (what the serving runtime keeps warm)."""
    with session_scope(database_url) as s:
        return sorted(set(s.scalars(select(Deployment.checkpoint_id).where(Deployment.checkpoint_id.is_not(None)))))


# -- detection ------------------------------------------------------------------------------
DETECT_MEDIA_TYPES = {"image/jpeg": "JPEG", "image/jpg": "JPEG", "image/pjpeg": "JPEG", "image/png": "PNG"}


def detect_target(session: Session, tenant: Tenant, checkpoint_id: str | None) -> tuple[str, str]:
    """(checkpoint id, model id) that `/detect` runs: the named checkpoint (tenant-scoped,
    404 otherwise) or the tenant's deployment (409 when nothing is deployed)."""
    if checkpoint_id:
        row = get_checkpoint(session, tenant, checkpoint_id)
        return row.id, row.model_id
    deployment = get_deployment(session, tenant)
    if deployment is None or deployment.checkpoint_id is None:
        if deployment is not None and deployment.model_id:
            raise Conflict(f"model {deployment.model_id} is deployed but has no checkpoint yet (its job has not "
                           "committed step 0); try again shortly, or pass checkpoint_id")
        raise Conflict('nothing is deployed for this tenant: PUT /deployment {"checkpoint_id": ...} first, '
                       "or pass checkpoint_id")
    row = get_checkpoint(session, tenant, deployment.checkpoint_id)
    return row.id, row.model_id


def checkpoint_bytes(database_url: str, checkpoint_id: str, kind: str = "checkpoint") -> bytes | None:
    """A checkpoint's stored bytes, any tenant (the serving runtime's loader; callers scope):
    `kind` "checkpoint" (the packed safetensors file) or "openvino" (its IR zip; None when it
    has none)."""
    with session_scope(database_url) as s:
        row = s.get(Checkpoint, checkpoint_id)
        if row is None:
            raise NotFound(f"checkpoint {checkpoint_id} not found")
        if kind == "openvino":
            return None if row.openvino_blob_id is None else get_blob_bytes(s, row.openvino_blob_id)
        return get_blob_bytes(s, row.blob_id)


def sniff_image_format(data: bytes) -> str | None:
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    return None


def check_detect_image(data: bytes, filename: str, content_type: str | None) -> None:
    """JPEG or PNG by content (415 for anything else; 422 for a JPEG/PNG that is not one)."""
    if not data:
        raise InvalidUpload(f"{filename}: empty file")
    if sniff_image_format(data) is not None:
        return
    declared = (content_type or "").split(";")[0].strip().lower()
    if declared in DETECT_MEDIA_TYPES:
        raise InvalidUpload(f"{filename}: not a readable {DETECT_MEDIA_TYPES[declared]} image (sent as {declared})")
    raise UnsupportedMediaType(f"{filename}: unsupported type {declared or 'unknown'}; send JPEG or PNG images")


def decode_detect_image(data: bytes, filename: str, max_pixels: int) -> Any:
    """float32 numpy [3, H, W] (RGB in [0, 1], EXIF orientation applied) of an uploaded image;
    413 over `max_pixels`, 422 when it does not decode (the message names the file). No torch:
    the OpenVINO serving backend runs without it."""
    from core.images import DataError, image_size
    from core.images import decode_image as load_image

    try:
        width, height = image_size(data, name=filename, max_pixels=1 << 62)
    except DataError as exc:
        if ": image too large" in str(exc):  # PIL's decompression-bomb guard
            raise TooLarge(str(exc)) from None
        raise InvalidUpload(str(exc)) from None
    if width * height > max_pixels:
        raise TooLarge(f"{filename}: image of {width}x{height} pixels exceeds the limit of {max_pixels} pixels")
    try:
        return load_image(data, name=filename, max_pixels=max_pixels)
    except DataError as exc:
        raise InvalidUpload(str(exc)) from None


def detections_public(checkpoint_id: str, model_id: str, names: list[str], images: list[Any],
                      predictions: list[Any], score_threshold: float) -> schemas.DetectPublic:
    results = []
    for name, image, pred in zip(names, images, predictions, strict=True):
        height, width = int(image.shape[-2]), int(image.shape[-1])
        detections = [
            schemas.Detection(box=[round(float(v), 2) for v in box], score=round(float(score), 5))
            for box, score in zip(pred.boxes, pred.scores, strict=True)
            if score >= score_threshold and all(math.isfinite(v) for v in box)  # NaN never reaches JSON
        ]
        results.append(schemas.ImageDetections(filename=name, width=width, height=height, detections=detections))
    return schemas.DetectPublic(checkpoint_id=checkpoint_id, model_id=model_id, results=results)

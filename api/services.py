"""What the routes do, scoped by tenant: look rows up, call the store (uploads through
`service.store.catalog`, jobs through `service.store.jobs`, deployments through
`service.store.deployments`) and turn what goes wrong into the errors `api/errors.py` answers
with a status (`NotFound` 404, `Conflict` 409, `TooLarge` 413, `UnsupportedMediaType` 415,
`InvalidUpload` 422).

Routes stay thin; every function here takes the tenant and filters by it, so a foreign id
is indistinguishable from an unknown one (`NotFound` -> 404).
"""
from __future__ import annotations

import logging
import math
from typing import Any, TypeVar

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api import schemas
from api.serving import serving_key
from core.images import DataError, image_size
from core.images import decode_image as load_image
from core.job_spec import INT8, PipelineConfig
from service.settings import Settings
from service.store import (
    Checkpoint,
    Dataset,
    Deployment,
    DetectorModel,
    Job,
    Tenant,
    catalog,
    deployments,
    get_blob_bytes,
    jobs,
    put_blob,
    session_scope,
)
from service.store.catalog import InvalidUpload, TooLarge

log = logging.getLogger(__name__)


class NotFound(LookupError):
    """An id that is unknown or belongs to another tenant."""


class Conflict(RuntimeError):
    """The request does not fit the resource's current state (409)."""


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
                 name: str | None = None) -> DetectorModel:
    """Validate and store the tenant's float detector (`service.store.catalog.store_model`)."""
    row = catalog.store_model(session, tenant.id, settings, weights, card_json, name=name)
    log.info("tenant %s: model %s (%s, %d params) stored", tenant.name, row.id, row.architecture, row.num_params)
    return row


def get_model(session: Session, tenant: Tenant, model_id: str) -> DetectorModel:
    return _owned(session, tenant, DetectorModel, "model", model_id)


def model_public(row: DetectorModel) -> schemas.ModelPublic:
    return schemas.ModelPublic.model_validate(row, from_attributes=True)


# -- datasets -------------------------------------------------------------------------------
def create_dataset(session: Session, tenant: Tenant, settings: Settings, archive: bytes,
                   name: str | None = None) -> Dataset:
    """Validate and store the tenant's dataset zip (`service.store.catalog.store_dataset`)."""
    row = catalog.store_dataset(session, tenant.id, settings, archive, name=name)
    log.info("tenant %s: dataset %s (%d images, %d boxes) stored", tenant.name, row.id, row.num_images,
             row.num_boxes)
    return row


def get_dataset(session: Session, tenant: Tenant, dataset_id: str) -> Dataset:
    return _owned(session, tenant, Dataset, "dataset", dataset_id)


# -- jobs -----------------------------------------------------------------------------------
def create_job(session: Session, tenant: Tenant, body: schemas.JobCreate, settings: Settings) -> Job:
    """Insert a queued job on the tenant's model and dataset (the caller commits, then enqueues).
    422 for a latency target or order, or deploy_format openvino-int8, where the workers do not
    export and time each step."""
    config = body.pipeline_config()
    if config.needs_export and not settings.export_openvino:
        raise InvalidUpload(f"{config.needs_export}: measured on each step's OpenVINO export, which this deployment "
                            "turned off (FLEXBIN_EXPORT_OPENVINO=false)")
    model = get_model(session, tenant, body.model_id)
    dataset = get_dataset(session, tenant, body.dataset_id)
    return jobs.create_job(session, tenant_id=tenant.id, model_id=model.id, dataset_id=dataset.id,
                           config=config, deploy_on_success=body.deploy_on_success)


def withdraw_job(session: Session, job: Job) -> None:
    """The job's message could not be sent: delete it (the client retries)."""
    jobs.withdraw_unsent(session, job)


def get_job(session: Session, tenant: Tenant, job_id: str) -> Job:
    return _owned(session, tenant, Job, "job", job_id)


def list_owned(session: Session, tenant: Tenant, table: type[T], skip: int, limit: int) -> tuple[list[T], int]:
    """One page of the tenant's rows of `table` (DetectorModel, Dataset, Job), newest first, and the total."""
    owned = table.tenant_id == tenant.id  # type: ignore[attr-defined]
    count = session.scalar(select(func.count()).select_from(table).where(owned)) or 0
    rows = session.scalars(
        select(table).where(owned).order_by(table.created_at.desc(), table.id.desc())  # type: ignore[attr-defined]
        .offset(skip).limit(limit)
    ).all()
    return list(rows), int(count)


def cancel_job(session: Session, tenant: Tenant, job_id: str) -> Job:
    """A queued job is cancelled at once; a running one gets a flag its worker polls (409 once
    it has ended)."""
    try:
        return jobs.request_cancel(session, get_job(session, tenant, job_id))
    except jobs.JobEnded as exc:
        raise Conflict(str(exc)) from None


def job_public(job: Job) -> schemas.JobPublic:
    """The job as `GET /jobs/{id}` shows it: its row's columns, the main options of its config,
    its progress, its steps and the selected step's checkpoint."""
    config = PipelineConfig.model_validate(job.config)
    steps = [schemas.JobStepPublic.model_validate(s, from_attributes=True) for s in job.steps]
    return schemas.JobPublic.model_validate({
        **{name: getattr(job, name) for name in schemas.JobPublic.model_fields if name in Job.__table__.columns},
        **config.model_dump(include={"method", "order", "bits", "finetune_iters", "seed"}),
        "target": config.target.public(),
        "progress": schemas.JobProgress.model_validate(job, from_attributes=True),
        "steps": steps,
        "selected_checkpoint_id": next((s.checkpoint_id for s in steps if s.index == job.selected_step_index), None),
    })


# -- checkpoints ----------------------------------------------------------------------------
def get_checkpoint(session: Session, tenant: Tenant, checkpoint_id: str) -> Checkpoint:
    return _owned(session, tenant, Checkpoint, "checkpoint", checkpoint_id)


def checkpoint_public(row: Checkpoint, settings: Settings) -> schemas.CheckpointPublic:
    public = schemas.CheckpointPublic.model_validate(row, from_attributes=True)
    if settings.serving_backend == "openvino" and public.openvino:
        public.serving_backend = "openvino"
    return public


def checkpoint_openvino_zip(session: Session, row: Checkpoint) -> bytes:
    """The checkpoint's OpenVINO IR zip: the one its worker stored, else exported now (and
    stored) for checkpoints made before exports existed; 422 when it cannot be exported."""
    if row.openvino_blob_id is not None:
        return get_blob_bytes(session, row.openvino_blob_id)
    # torch loads into the API only for checkpoints made before exports existed
    from core.export.openvino import export_checkpoint

    try:
        data = export_checkpoint(get_blob_bytes(session, row.blob_id)).zip_bytes()
    except (ValueError, RuntimeError) as exc:  # CheckpointError, ExportError, OpenVINO's conversion errors
        raise InvalidUpload(f"checkpoint {row.id} cannot be exported to OpenVINO: {exc}"[:2000]) from None
    row.openvino_blob_id = put_blob(session, data).id
    session.flush()
    return data


def checkpoint_openvino_int8_zip(session: Session, row: Checkpoint, settings: Settings) -> bytes:
    """The checkpoint's int8 OpenVINO zip (`?format=openvino-int8`): its 1-bit layers stay
    1-bit and every other layer goes to int8 through `nncf.quantize`, calibrated on the job's
    training images (`core.export.int8.int8_zip`). Made on first request (seconds to a minute:
    the dataset is read and NNCF calibrates), then stored like the other files; 422 when it
    cannot be made."""
    if row.openvino_int8_blob_id is not None:
        return get_blob_bytes(session, row.openvino_int8_blob_id)
    trained = checkpoint_openvino_zip(session, row)
    # torch and NNCF load into the API only to make an int8 file
    from core.data import read_dataset_zip, split_records
    from core.export.int8 import int8_zip

    job = session.get(Job, row.job_id)
    dataset = session.get(Dataset, job.dataset_id) if job is not None else None
    if dataset is None:
        raise InvalidUpload(f"checkpoint {row.id}: its job's dataset is gone, so there is nothing to calibrate on")
    try:
        train, _ = split_records(read_dataset_zip(get_blob_bytes(session, dataset.archive_blob_id),
                                                  **settings.dataset_zip_limits()))
        images = [load_image(r.image, name=r.name) for r in train[: settings.int8_calibration_images]]
        data = int8_zip(trained, images)
    except (ValueError, RuntimeError) as exc:  # DataError, NNCF's and OpenVINO's errors
        raise InvalidUpload(f"checkpoint {row.id} cannot be quantized to int8: {exc}"[:2000]) from None
    row.openvino_int8_blob_id = put_blob(session, data).id
    session.flush()
    return data


def checkpoint_file(session: Session, row: Checkpoint, format: str, settings: Settings) -> tuple[bytes, str, str]:
    """(bytes, media type, file name) of a checkpoint download in `format`."""
    stem = f"flexbin-{row.id}-step{row.step}"
    if format == "openvino":
        return checkpoint_openvino_zip(session, row), "application/zip", f"{stem}-openvino.zip"
    if format == INT8:
        return checkpoint_openvino_int8_zip(session, row, settings), "application/zip", f"{stem}-openvino-int8.zip"
    return get_blob_bytes(session, row.blob_id), "application/octet-stream", f"{stem}.safetensors"


# -- deployment -----------------------------------------------------------------------------
def get_deployment(session: Session, tenant: Tenant) -> Deployment | None:
    return session.get(Deployment, tenant.id)


def set_deployment(session: Session, tenant: Tenant, checkpoint_id: str, format: str | None,
                   settings: Settings) -> Deployment:
    """Deploy a checkpoint as trained (`format` None or "openvino") or as its int8 file (made
    now when it has none)."""
    checkpoint = get_checkpoint(session, tenant, checkpoint_id)
    stored = INT8 if format == INT8 else None
    if stored is not None:
        checkpoint_openvino_int8_zip(session, checkpoint, settings)
    return deployments.deploy(session, tenant.id, checkpoint_id=checkpoint.id, model_id=checkpoint.model_id,
                              format=stored)


def deployed_serving_keys(database_url: str) -> list[str]:
    """Every tenant's deployment as the serving runtime names it (what it keeps warm)."""
    with session_scope(database_url) as s:
        return [serving_key(checkpoint_id, format) for checkpoint_id, format in deployments.deployed_files(s)]


# -- detection ------------------------------------------------------------------------------
DETECT_MEDIA_TYPES = {"image/jpeg": "JPEG", "image/jpg": "JPEG", "image/pjpeg": "JPEG", "image/png": "PNG"}


def detect_target(session: Session, tenant: Tenant, checkpoint_id: str | None) -> tuple[str, str, str | None]:
    """(checkpoint id, model id, format) that `/detect` runs: the named checkpoint as trained
    (tenant-scoped, 404 otherwise) or the tenant's deployment (409 when nothing is deployed)."""
    if checkpoint_id:
        row = get_checkpoint(session, tenant, checkpoint_id)
        return row.id, row.model_id, None
    deployment = get_deployment(session, tenant)
    if deployment is None or deployment.checkpoint_id is None:
        if deployment is not None and deployment.model_id:
            raise Conflict(f"model {deployment.model_id} is deployed but has no checkpoint yet (its job has not "
                           "committed step 0); try again shortly, or pass checkpoint_id")
        raise Conflict('nothing is deployed for this tenant: PUT /deployment {"checkpoint_id": ...} first, '
                       "or pass checkpoint_id")
    row = get_checkpoint(session, tenant, deployment.checkpoint_id)
    return row.id, row.model_id, deployment.format


def checkpoint_bytes(database_url: str, checkpoint_id: str, kind: str = "checkpoint") -> bytes | None:
    """A checkpoint's stored bytes, any tenant (the serving runtime's loader; callers scope):
    `kind` "checkpoint" (the packed safetensors file), "openvino" (its IR zip) or
    "openvino-int8" (its int8 IR zip); None for a file it does not have."""
    with session_scope(database_url) as s:
        row = s.get(Checkpoint, checkpoint_id)
        if row is None:
            raise NotFound(f"checkpoint {checkpoint_id} not found")
        files: dict[str, str | None] = {"openvino": row.openvino_blob_id, INT8: row.openvino_int8_blob_id}
        blob_id = files.get(kind, row.blob_id)
        return None if blob_id is None else get_blob_bytes(s, blob_id)


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


def detections_public(checkpoint_id: str, model_id: str, format: str | None, names: list[str], images: list[Any],
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
    return schemas.DetectPublic(checkpoint_id=checkpoint_id, model_id=model_id, format=format or "openvino",
                                results=results)

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Request, UploadFile
from starlette.concurrency import run_in_threadpool

from api import schemas, services
from api.deps import SessionDep, SettingsDep, TenantDep
from api.services import InvalidUpload, TooLarge
from api.serving import InferenceError, serving_key

router = APIRouter(tags=["detect"])


@router.post(
    "/detect",
    response_model=schemas.DetectPublic,
    responses={
        404: {"model": schemas.Message, "description": "checkpoint_id unknown or another tenant's"},
        409: {"model": schemas.Message, "description": "nothing deployed and no checkpoint_id"},
        413: {"model": schemas.Message, "description": "too many images, bytes or pixels"},
        415: {"model": schemas.Message, "description": "an image is not JPEG or PNG"},
        422: {"model": schemas.Message, "description": "an image does not decode (the detail names it)"},
    },
)
async def detect(
    request: Request,
    session: SessionDep,
    tenant: TenantDep,
    settings: SettingsDep,
    images: Annotated[list[UploadFile], File(description="One or more JPEG or PNG images.")],
    checkpoint_id: Annotated[str | None, Form(description="Checkpoint to run (default: the deployed one).")] = None,
    score_threshold: Annotated[float, Form(ge=0.0, le=1.0, description="Drop detections scoring below.")] = 0.05,
) -> schemas.DetectPublic:
    """Pedestrian boxes per image: `box` is x1, y1, x2, y2 in pixels of the image as uploaded
    (after its EXIF orientation), `score` in [0, 1], best first. Runs the tenant's deployed
    packed checkpoint, or `checkpoint_id`; images are micro-batched with other requests."""
    if len(images) > settings.max_detect_images:
        raise TooLarge(f"images: {len(images)} files, over the limit of {settings.max_detect_images} per request")
    target_id, model_id, format = await run_in_threadpool(services.detect_target, session, tenant, checkpoint_id)
    names, tensors, total = [], [], 0
    for i, upload in enumerate(images):
        name = upload.filename or f"image{i}"
        data = await upload.read()
        total += len(data)
        if total > settings.max_detect_bytes:
            raise TooLarge(f"images: over the limit of {settings.max_detect_bytes} bytes per request")
        services.check_detect_image(data, name, upload.content_type)
        tensors.append(await run_in_threadpool(services.decode_detect_image, data, name, settings.max_detect_pixels))
        names.append(name)
    runtime = request.app.state.serving
    try:
        predictions = await runtime.detect(serving_key(target_id, format), tensors)
    except InferenceError as exc:
        raise InvalidUpload(f"the model could not process {', '.join(names)}: {exc}") from None
    request.app.state.metrics.detect_images.inc(len(tensors))
    return services.detections_public(target_id, model_id, format, names, tensors, predictions, score_threshold)

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response

from api import schemas, services
from api.deps import SessionDep, SettingsDep, TenantDep
from service.store import get_blob_bytes

router = APIRouter(tags=["checkpoints"])


@router.get("/checkpoints/{checkpoint_id}", response_model=schemas.CheckpointPublic,
            responses={404: {"model": schemas.Message, "description": "Unknown id, or another tenant's."}})
def get_checkpoint(checkpoint_id: str, session: SessionDep, tenant: TenantDep,
                   settings: SettingsDep) -> schemas.CheckpointPublic:
    return services.checkpoint_public(services.get_checkpoint(session, tenant, checkpoint_id), settings)


@router.get(
    "/checkpoints/{checkpoint_id}/download",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}, "application/zip": {}},
                     "description": "The packed checkpoint (safetensors; card in its metadata), or with "
                                    "`format=openvino` a zip of its OpenVINO IR: model.xml, model.bin, card.json, "
                                    "README.txt and flexbin_detect.py (runs it with numpy + openvino only)."},
               404: {"model": schemas.Message, "description": "Unknown id, or another tenant's."}},
)
def download_checkpoint(
    checkpoint_id: str, session: SessionDep, tenant: TenantDep,
    format: Annotated[Literal["safetensors", "openvino"], Query(
        description="safetensors (default): the packed checkpoint; openvino: its OpenVINO IR zip.")] = "safetensors",
) -> Response:
    row = services.get_checkpoint(session, tenant, checkpoint_id)
    if format == "openvino":
        data = services.checkpoint_openvino_zip(session, row)
        session.commit()  # an export made just now is kept
        return Response(content=data, media_type="application/zip", headers={
            "Content-Disposition": f'attachment; filename="flexbin-{row.id}-step{row.step}-openvino.zip"'})
    data = get_blob_bytes(session, row.blob_id)
    return Response(
        content=data,
        media_type="application/octet-stream",
        headers={"Content-Disposition": f'attachment; filename="flexbin-{row.id}-step{row.step}.safetensors"'},
    )

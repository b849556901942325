from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response

from api import schemas, services
from api.deps import SessionDep, SettingsDep, TenantDep

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
                                    "README.txt and flexbin_detect.py (runs it with numpy + openvino only); "
                                    "`format=openvino-int8` the same zip quantized to int8."},
               404: {"model": schemas.Message, "description": "Unknown id, or another tenant's."},
               422: {"model": schemas.Message, "description": "The checkpoint cannot be exported or quantized."}},
)
def download_checkpoint(
    checkpoint_id: str, session: SessionDep, tenant: TenantDep,
    settings: SettingsDep,
    format: Annotated[Literal["safetensors", "openvino", "openvino-int8"], Query(
        description="safetensors (default): the packed checkpoint; openvino: its OpenVINO IR zip as trained; "
                    "openvino-int8: that IR with every layer that is not 1-bit quantized to int8 by NNCF, "
                    "calibrated on the job's training images (made on the first request: seconds to a "
                    "minute; stored after).")] = "safetensors",
) -> Response:
    row = services.get_checkpoint(session, tenant, checkpoint_id)
    data, media_type, filename = services.checkpoint_file(session, row, format, settings)
    session.commit()  # a file made just now is kept
    return Response(content=data, media_type=media_type,
                    headers={"Content-Disposition": f'attachment; filename="{filename}"'})

from __future__ import annotations

from fastapi import APIRouter, Response

from api import schemas, services
from api.deps import SessionDep, TenantDep
from core.store import get_blob_bytes

router = APIRouter(tags=["checkpoints"])


@router.get("/checkpoints/{checkpoint_id}", response_model=schemas.CheckpointPublic,
            responses={404: {"model": schemas.Message, "description": "Unknown id, or another tenant's."}})
def get_checkpoint(checkpoint_id: str, session: SessionDep, tenant: TenantDep) -> schemas.CheckpointPublic:
    return services.checkpoint_public(services.get_checkpoint(session, tenant, checkpoint_id))


@router.get(
    "/checkpoints/{checkpoint_id}/download",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}},
                     "description": "The packed checkpoint (safetensors; card in its metadata)."},
               404: {"model": schemas.Message, "description": "Unknown id, or another tenant's."}},
)
def download_checkpoint(checkpoint_id: str, session: SessionDep, tenant: TenantDep) -> Response:
    row = services.get_checkpoint(session, tenant, checkpoint_id)
    data = get_blob_bytes(session, row.blob_id)
    return Response(
        content=data,
        media_type="application/octet-stream",
        headers={"Content-Disposition": f'attachment; filename="flexbin-{row.id}-step{row.step}.safetensors"'},
    )

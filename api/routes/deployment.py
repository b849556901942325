from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from api import schemas, services
from api.deps import SessionDep, SettingsDep, TenantDep
from api.serving import serving_key

router = APIRouter(tags=["deployment"])


def _public(row: object | None) -> schemas.DeploymentPublic:
    if row is None:
        return schemas.DeploymentPublic(checkpoint_id=None, model_id=None, updated_at=None)
    return schemas.DeploymentPublic.model_validate(row, from_attributes=True)


@router.get("/deployment", response_model=schemas.DeploymentPublic)
def get_deployment(session: SessionDep, tenant: TenantDep) -> schemas.DeploymentPublic:
    return _public(services.get_deployment(session, tenant))


@router.put("/deployment", response_model=schemas.DeploymentPublic,
            responses={404: {"model": schemas.Message, "description": "checkpoint_id unknown or another tenant's."},
                       422: {"model": schemas.Message, "description": "its int8 file cannot be made."}})
async def put_deployment(body: schemas.DeploymentUpdate, request: Request, session: SessionDep,
                         tenant: TenantDep, settings: SettingsDep) -> schemas.DeploymentPublic:
    """Choose the checkpoint `/detect` serves by default for this tenant. New requests use it
    at once (loading it on first use); requests in flight finish on the previous one."""

    def update() -> schemas.DeploymentPublic:
        row = services.set_deployment(session, tenant, body.checkpoint_id, body.format, settings)
        session.commit()
        return _public(row)

    public = await run_in_threadpool(update)
    # warm it before traffic arrives
    request.app.state.serving.preload(serving_key(body.checkpoint_id, public.format))
    return public

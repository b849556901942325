from __future__ import annotations

from fastapi import APIRouter

from api import schemas, services
from api.deps import SessionDep, TenantDep

router = APIRouter(tags=["deployment"])


def _public(row: object | None) -> schemas.DeploymentPublic:
    if row is None:
        return schemas.DeploymentPublic(checkpoint_id=None, model_id=None, updated_at=None)
    return schemas.DeploymentPublic.model_validate(row, from_attributes=True)


@router.get("/deployment", response_model=schemas.DeploymentPublic)
def get_deployment(session: SessionDep, tenant: TenantDep) -> schemas.DeploymentPublic:
    return _public(services.get_deployment(session, tenant))


@router.put("/deployment", response_model=schemas.DeploymentPublic)
def put_deployment(body: schemas.DeploymentUpdate, session: SessionDep, tenant: TenantDep) -> schemas.DeploymentPublic:
    """Choose the checkpoint `/detect` serves by default for this tenant."""
    row = services.set_deployment(session, tenant, body.checkpoint_id)
    session.commit()
    return _public(row)

from __future__ import annotations

from fastapi import APIRouter

from api import schemas
from api.deps import TenantDep

router = APIRouter(tags=["architectures"])


@router.get("/architectures", response_model=list[schemas.ArchitecturePublic])
def list_architectures(_: TenantDep) -> list[schemas.ArchitecturePublic]:
    """The detector architectures a model card may name, with their default builder kwargs."""
    from core.models import list_architectures as core_list

    return [
        schemas.ArchitecturePublic(name=a.name, description=a.description, default_kwargs=a.default_kwargs)
        for a in core_list()
    ]

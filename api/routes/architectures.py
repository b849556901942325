from __future__ import annotations

from fastapi import APIRouter

from api import schemas
from api.deps import TenantDep

router = APIRouter(tags=["architectures"])


@router.get("/architectures", response_model=list[schemas.ArchitecturePublic])
def list_architectures(_: TenantDep) -> list[schemas.ArchitecturePublic]:
    """The detector architectures a model card may name, with their default builder kwargs,
    input size and, for pretrained ones, where the bundled weights come from and their licence."""
    # keeps the idle API free of torch
    from core.models import list_architectures as core_list
    from core.pretrained import pretrained_for

    def pretrained(name: str) -> schemas.PretrainedWeightsPublic | None:
        weights = pretrained_for(name)
        if weights is None:
            return None
        return schemas.PretrainedWeightsPublic(name=weights.name, origin=weights.origin, license=weights.license,
                                               sha256=weights.weights_sha256)

    return [
        schemas.ArchitecturePublic(name=a.name, description=a.description, default_kwargs=a.default_kwargs,
                                   input_size=a.input_size, pretrained=pretrained(a.name))
        for a in core_list()
    ]

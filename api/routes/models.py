from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile, status

from api import schemas, services
from api.deps import PageDep, SessionDep, SettingsDep, TenantDep
from service.store import DetectorModel

router = APIRouter(tags=["models"])


@router.post("/models", status_code=status.HTTP_201_CREATED, response_model=schemas.ModelPublic)
def upload_model(
    session: SessionDep,
    tenant: TenantDep,
    settings: SettingsDep,
    weights: Annotated[UploadFile, File(description="safetensors state_dict of the float detector")],
    card: Annotated[
        str | UploadFile,
        Form(description='JSON text (or a JSON file): {"architecture", "num_classes", ...builder kwargs}'),
    ],
    name: Annotated[str | None, Form(max_length=200)] = None,
) -> schemas.ModelPublic:
    """Upload a float detector. It must load strictly into the card's architecture (every key
    and shape) and run one forward pass on a dummy image; nothing is stored otherwise."""
    data = services.read_upload(weights, settings.max_model_bytes, "weights")
    if not isinstance(card, str):
        raw = services.read_upload(card, settings.max_card_bytes, "card")
        try:
            card = raw.decode()
        except UnicodeDecodeError:
            raise services.InvalidUpload("card: not UTF-8 text") from None
    row = services.create_model(session, tenant, settings, data, card, name=name)
    session.commit()
    return services.model_public(row)


@router.get("/models/{model_id}", response_model=schemas.ModelPublic,
            responses={404: {"model": schemas.Message, "description": "Unknown id, or another tenant's."}})
def get_model(model_id: str, session: SessionDep, tenant: TenantDep) -> schemas.ModelPublic:
    return services.model_public(services.get_model(session, tenant, model_id))


@router.get("/models", response_model=schemas.ModelsPublic)
def list_models(session: SessionDep, tenant: TenantDep, page: PageDep) -> schemas.ModelsPublic:
    """This tenant's models, newest first."""
    rows, count = services.list_owned(session, tenant, DetectorModel, page.skip, page.limit)
    return schemas.ModelsPublic(data=[services.model_public(m) for m in rows], count=count)

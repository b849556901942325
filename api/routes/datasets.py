from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile, status

from api import schemas, services
from api.deps import PageDep, SessionDep, SettingsDep, TenantDep
from service.store import Dataset

router = APIRouter(tags=["datasets"])


@router.post("/datasets", status_code=status.HTTP_201_CREATED, response_model=schemas.DatasetPublic)
def upload_dataset(
    session: SessionDep,
    tenant: TenantDep,
    settings: SettingsDep,
    archive: Annotated[
        UploadFile, File(description="zip in Penn-Fudan layout (PNGImages/, Annotation/) or COCO layout")
    ],
    name: Annotated[str | None, Form(max_length=200)] = None,
) -> schemas.DatasetPublic:
    """Upload a dataset. The zip is parsed whole first: every image must decode and every
    box lie inside its image; nothing is stored otherwise."""
    data = services.read_upload(archive, settings.max_dataset_bytes, "archive")
    row = services.create_dataset(session, tenant, settings, data, name=name)
    session.commit()
    return schemas.DatasetPublic.model_validate(row, from_attributes=True)


@router.get("/datasets/{dataset_id}", response_model=schemas.DatasetPublic,
            responses={404: {"model": schemas.Message, "description": "Unknown id, or another tenant's."}})
def get_dataset(dataset_id: str, session: SessionDep, tenant: TenantDep) -> schemas.DatasetPublic:
    return schemas.DatasetPublic.model_validate(services.get_dataset(session, tenant, dataset_id),
                                                from_attributes=True)


@router.get("/datasets", response_model=schemas.DatasetsPublic)
def list_datasets(session: SessionDep, tenant: TenantDep, page: PageDep) -> schemas.DatasetsPublic:
    """This tenant's datasets, newest first."""
    rows, count = services.list_owned(session, tenant, Dataset, page.skip, page.limit)
    return schemas.DatasetsPublic(data=[schemas.DatasetPublic.model_validate(d, from_attributes=True) for d in rows],
                                  count=count)

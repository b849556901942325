from __future__ import annotations

import logging

from fastapi import APIRouter, HTTPException, status

from api import queue, schemas, services
from api.deps import PageDep, SessionDep, SettingsDep, TenantDep
from service.store import Job

log = logging.getLogger(__name__)
router = APIRouter(tags=["jobs"])


@router.post("/jobs", status_code=status.HTTP_202_ACCEPTED, response_model=schemas.JobCreated, responses={
    404: {"model": schemas.Message, "description": "model_id or dataset_id unknown or another tenant's."},
    503: {"model": schemas.Message, "description": "The job queue or the database is unreachable; nothing was "
                                                   "queued or kept. Retry later."},
})
def create_job(body: schemas.JobCreate, session: SessionDep, tenant: TenantDep,
               settings: SettingsDep) -> schemas.JobCreated:
    """Queue a binarization job; a worker picks it up (`GET /jobs/{id}` shows progress)."""
    job = services.create_job(session, tenant, body, settings)
    session.commit()  # the worker must find the row
    try:
        queue.enqueue_job(settings, job.id)
    except Exception as exc:
        # The broker stayed unreachable through the publish retries: the job was never
        # queued, so it does not exist (the client retries), rather than a failed row.
        log.warning("job %s: could not reach the broker (%s); job not created", job.id, type(exc).__name__)
        services.withdraw_job(session, job)
        session.commit()
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail="the job queue is unavailable; retry later",
                            headers={"Retry-After": "5"}) from exc
    return schemas.JobCreated(id=job.id, status=job.status)


@router.get("/jobs", response_model=schemas.JobsPublic)
def list_jobs(session: SessionDep, tenant: TenantDep, page: PageDep) -> schemas.JobsPublic:
    """This tenant's jobs, newest first."""
    rows, count = services.list_owned(session, tenant, Job, page.skip, page.limit)
    return schemas.JobsPublic(data=[services.job_public(j) for j in rows], count=count)


@router.get("/jobs/{job_id}", response_model=schemas.JobPublic,
            responses={404: {"model": schemas.Message, "description": "Unknown id, or another tenant's."}})
def get_job(job_id: str, session: SessionDep, tenant: TenantDep) -> schemas.JobPublic:
    return services.job_public(services.get_job(session, tenant, job_id))


@router.post("/jobs/{job_id}/cancel", status_code=status.HTTP_202_ACCEPTED, response_model=schemas.JobCancelPublic,
             responses={404: {"model": schemas.Message, "description": "Unknown id, or another tenant's."},
                        409: {"model": schemas.Message, "description": "The job has already ended."}})
def cancel_job(job_id: str, session: SessionDep, tenant: TenantDep) -> schemas.JobCancelPublic:
    """A queued job is cancelled at once; a running one stops within one fine-tuning
    iteration (its status turns `cancelled`; committed steps stay)."""
    job = services.cancel_job(session, tenant, job_id)
    session.commit()
    return schemas.JobCancelPublic.model_validate(job, from_attributes=True)

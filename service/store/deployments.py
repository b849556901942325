"""Which checkpoint `/detect` serves for each tenant (one `deployments` row per tenant).

`model_id` alone (no checkpoint) means a float model is deployed whose job has not packed it
yet (the demo): `/detect` answers 409 until the job commits step 0, which `serve_float_step`
then deploys; the job's selected checkpoint replaces it when the job succeeds.
"""
from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.store.tables import Deployment, utcnow


def deploy(session: Session, tenant_id: str, *, checkpoint_id: str | None, model_id: str,
           format: str | None = None) -> Deployment:
    """Make `checkpoint_id` (of `model_id`) the tenant's deployment, served as trained
    (`format` None) or as its int8 IR (`core.job_spec.INT8`, which must exist); `checkpoint_id=None` deploys
    the float model before its job has a checkpoint."""
    row = session.get(Deployment, tenant_id)
    if row is None:
        row = Deployment(tenant_id=tenant_id)
        session.add(row)
    row.checkpoint_id = checkpoint_id
    row.model_id = model_id
    row.format = format
    row.updated_at = utcnow()
    session.flush()
    return row


def serve_float_step(session: Session, tenant_id: str, model_id: str, checkpoint_id: str) -> bool:
    """Deploy a job's step 0 (its float model, packed) where the tenant's deployment names
    that model but no checkpoint yet; a deployment that names a checkpoint is left alone.
    Whether it deployed."""
    row = session.get(Deployment, tenant_id)
    if row is None or row.checkpoint_id is not None or row.model_id != model_id:
        return False
    deploy(session, tenant_id, checkpoint_id=checkpoint_id, model_id=model_id)
    return True


def deployed_files(session: Session) -> list[tuple[str, str | None]]:
    """Every tenant's deployed (checkpoint id, format), what the serving runtime keeps warm."""
    rows = session.execute(select(Deployment.checkpoint_id, Deployment.format)
                           .where(Deployment.checkpoint_id.is_not(None))).all()
    return sorted({(str(checkpoint_id), format) for checkpoint_id, format in rows}, key=lambda r: (r[0], r[1] or ""))

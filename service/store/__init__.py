"""The database layer shared by the API and the workers (SQLAlchemy 2; schema by Alembic)."""
from __future__ import annotations

from service.store.blobs import BlobCorrupted, get_blob_bytes, put_blob
from service.store.session import (
    TRANSIENT_DB_ERRORS,
    get_engine,
    get_sessionmaker,
    retry_transient,
    run_in_transaction,
    session_scope,
    wait_for_database,
)
from service.store.tables import (
    ApiKey,
    Base,
    Blob,
    Checkpoint,
    Dataset,
    Deployment,
    DetectorModel,
    Job,
    JobStep,
    Tenant,
    utcnow,
)

__all__ = [
    "TRANSIENT_DB_ERRORS",
    "ApiKey",
    "Base",
    "Blob",
    "BlobCorrupted",
    "Checkpoint",
    "Dataset",
    "Deployment",
    "DetectorModel",
    "Job",
    "JobStep",
    "Tenant",
    "get_blob_bytes",
    "get_engine",
    "get_sessionmaker",
    "put_blob",
    "retry_transient",
    "run_in_transaction",
    "session_scope",
    "utcnow",
    "wait_for_database",
]

"""Bytes in the database, each with a sha256 checked on every read."""
from __future__ import annotations

import hashlib

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.store.tables import Blob


class BlobCorrupted(RuntimeError):
    """A blob's bytes no longer match its recorded sha256."""


def put_blob(session: Session, data: bytes) -> Blob:
    """Add a blob to the session (flushed, so `blob.id` is usable; committed by the caller)."""
    blob = Blob(sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data), data=data)
    session.add(blob)
    session.flush()
    return blob


def get_blob_bytes(session: Session, blob_id: str) -> bytes:
    row = session.execute(select(Blob.data, Blob.sha256).where(Blob.id == blob_id)).one_or_none()
    if row is None:
        raise KeyError(f"blob {blob_id} not found")
    data, sha = bytes(row[0]), row[1]
    if hashlib.sha256(data).hexdigest() != sha:
        raise BlobCorrupted(f"blob {blob_id}: sha256 mismatch")
    return data

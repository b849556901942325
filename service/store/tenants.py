"""Tenants and API keys. Keys are stored as sha256 hex and compared in constant time."""
from __future__ import annotations

import hashlib
import hmac

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from service.store.session import rows_changed
from service.store.tables import ApiKey, Tenant


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def ensure_tenant(session: Session, name: str) -> Tenant:
    tenant = session.scalars(select(Tenant).where(Tenant.name == name)).one_or_none()
    if tenant is None:
        tenant = Tenant(name=name)
        session.add(tenant)
        session.flush()
    return tenant


def ensure_api_key(session: Session, tenant_name: str, key: str) -> Tenant:
    """Create the tenant and the key if missing. A key already owned by another tenant is an error."""
    tenant = ensure_tenant(session, tenant_name)
    digest = hash_key(key)
    existing = session.scalars(select(ApiKey).where(ApiKey.key_hash == digest)).one_or_none()
    if existing is None:
        session.add(ApiKey(tenant_id=tenant.id, key_hash=digest))
        session.flush()
    elif existing.tenant_id != tenant.id:
        raise ValueError(f"an API key configured for tenant {tenant_name!r} already belongs to another tenant")
    return tenant


def sync_api_keys(session: Session, pairs: list[tuple[str, str]]) -> int:
    """Make `pairs` [(tenant, key), ...] the full set of valid keys: create the missing ones and
    delete every other key in the database. Returns how many were deleted (revoked). Tenants
    and their data stay. An empty `pairs` is refused: it would lock every tenant out."""
    if not pairs:
        raise ValueError("sync_api_keys: no keys given (revoking every key is never what is meant)")
    for tenant_name, key in pairs:
        ensure_api_key(session, tenant_name, key)
    keep = {hash_key(key) for _, key in pairs}
    revoked = rows_changed(session, delete(ApiKey).where(ApiKey.key_hash.not_in(keep)))
    session.flush()
    return revoked


def tenant_for_key(session: Session, key: str) -> Tenant | None:
    digest = hash_key(key)
    row = session.execute(
        select(ApiKey.key_hash, Tenant).join(Tenant, Tenant.id == ApiKey.tenant_id).where(ApiKey.key_hash == digest)
    ).one_or_none()
    if row is None or not hmac.compare_digest(row[0], digest):
        return None
    return row[1]

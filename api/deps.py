"""FastAPI dependencies: settings, a DB session per request, the tenant behind the API key."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Query, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from api.ratelimit import enforce_rate_limit
from service.settings import Settings
from service.store import Tenant, session_scope
from service.store.tenants import hash_key, tenant_for_key

_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <API key>`")


def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]


def get_db(settings: SettingsDep) -> Iterator[Session]:
    """One session per request, rolled back on any error. Routes that write commit
    explicitly before returning: teardown may run after the response is sent."""
    with session_scope(settings.database_url) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_db)]


def get_tenant(
    request: Request,
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Tenant:
    """The key's tenant (401 without a valid key), then the key's rate limit (429 beyond it)."""
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="missing API key: send `Authorization: Bearer <key>`",
            headers={"WWW-Authenticate": "Bearer"},
        )
    tenant = tenant_for_key(session, credentials.credentials)
    if tenant is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, detail="invalid API key", headers={"WWW-Authenticate": "Bearer"}
        )
    enforce_rate_limit(request, hash_key(credentials.credentials))
    return tenant


TenantDep = Annotated[Tenant, Depends(get_tenant)]


# Paging of the list endpoints (`GET /models`, `/datasets`, `/jobs`): newest first.
Skip = Annotated[int, Query(ge=0, le=2**31 - 1, description="Rows to skip.")]
Limit = Annotated[int, Query(ge=1, le=1000, description="Rows to return.")]


class Page:
    """`?skip=&limit=` of a list endpoint."""

    def __init__(self, skip: Skip = 0, limit: Limit = 100) -> None:
        self.skip, self.limit = skip, limit


PageDep = Annotated[Page, Depends()]

"""Engines and sessions. One engine per URL per process; SQLite gets WAL + a busy timeout so
the API and a worker process can share the embedded database. PostgreSQL connections have a
connect timeout, a statement timeout and TCP keepalives (a vanished server is noticed), and
`retry_transient` retries an idempotent unit of work with backoff (tenacity) while the database
is away."""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, TypeVar, cast

from sqlalchemy import CursorResult, Engine, Executable, create_engine, event, text
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_before_delay,
    wait_exponential,
)

from service.settings import get_settings

log = logging.getLogger(__name__)
T = TypeVar("T")

TRANSIENT_DB_ERRORS: tuple[type[Exception], ...] = (OperationalError, InterfaceError, PoolTimeout)
"""The database is unreachable or restarting (not a bug, not bad data): retry later, answer 503."""


@lru_cache(maxsize=8)
def get_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.close()

        return engine

    settings = get_settings()
    connect_args: dict[str, Any] = {}
    if url.startswith("postgresql"):
        connect_args = {
            "connect_timeout": settings.database_connect_timeout_seconds,
            "keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3,
            "options": f"-c statement_timeout={settings.database_statement_timeout_seconds * 1000}",
        }
    return create_engine(
        url, pool_pre_ping=True, pool_size=10, max_overflow=20, connect_args=connect_args,
        pool_timeout=2 * settings.database_connect_timeout_seconds,
    )


@lru_cache(maxsize=8)
def get_sessionmaker(url: str) -> sessionmaker[Session]:
    return sessionmaker(get_engine(url), expire_on_commit=False)


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A session that commits on success and rolls back on any exception."""
    session = get_sessionmaker(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def rows_changed(session: Session, statement: Executable) -> int:
    """Run an UPDATE or DELETE in the session; how many rows it changed."""
    result = cast("CursorResult[Any]", session.execute(statement))
    return int(result.rowcount or 0)


def run_in_transaction(url: str, work: Callable[[Session], T], *, what: str, within: float) -> T:
    """`work(session)` as one transaction, retried whole with `retry_transient` while the
    database is unreachable (so `work` must be idempotent: a retry re-runs all of it)."""

    def attempt() -> T:
        with session_scope(url) as session:
            return work(session)

    return retry_transient(attempt, what=what, within=within)


def wait_for_database(url: str, timeout: float = 60.0) -> None:
    """Block until `SELECT 1` succeeds (containers start in any order)."""

    def ping() -> None:
        with get_engine(url).connect() as conn:
            conn.execute(text("SELECT 1"))

    retry_transient(ping, what="waiting for the database", within=timeout)


def retry_transient(work: Callable[[], T], *, what: str, within: float) -> T:
    """Run `work` (one whole, idempotent unit: a transaction, a read), retrying it with
    exponential backoff (0.25 s doubling to 5 s) while the database is unreachable, for at
    most `within` seconds; then the last error propagates. Other errors propagate at once."""
    retrying = Retrying(
        retry=retry_if_exception_type(TRANSIENT_DB_ERRORS),
        wait=wait_exponential(multiplier=0.25, max=5.0),
        stop=stop_before_delay(within),
        before_sleep=lambda state: _log_retry(what, state),
        reraise=True,
    )
    return retrying(work)


def _log_retry(what: str, state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome is not None else None
    log.warning("%s: database unavailable (%s); retrying in %.2fs", what, str(exc).splitlines()[0][:200],
                state.upcoming_sleep)

"""Every error is `{"detail": "<what is wrong>"}` with a fitting 4xx (shared/API.md)."""
from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from api.services import (
    Conflict,
    InvalidUpload,
    NotFound,
    TooLarge,
    UnsupportedMediaType,
)
from api.serving import ServingError
from service.store import TRANSIENT_DB_ERRORS


def _loc(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header", "form")]
    return ".".join(parts) or "request"


def validation_detail(exc: RequestValidationError) -> str:
    problems = []
    for err in exc.errors():
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        problems.append(f"{_loc(err.get('loc', ()))}: {msg}")
    return "; ".join(problems) or "invalid request"


# The service's own errors and the status each answers with (the message is the detail).
ERROR_STATUS: dict[type[Exception], int] = {
    NotFound: status.HTTP_404_NOT_FOUND,
    Conflict: status.HTTP_409_CONFLICT,
    TooLarge: status.HTTP_413_CONTENT_TOO_LARGE,
    InvalidUpload: status.HTTP_422_UNPROCESSABLE_CONTENT,
    UnsupportedMediaType: status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
    ServingError: status.HTTP_409_CONFLICT,
}


async def _detail_response(_: Request, exc: Exception) -> JSONResponse:
    code = next(ERROR_STATUS[t] for t in type(exc).__mro__ if t in ERROR_STATUS)
    return JSONResponse({"detail": str(exc)}, code)


async def _database_unavailable(_: Request, exc: Exception) -> JSONResponse:
    # Not the client's fault and not a bug: the database is restarting or unreachable.
    return JSONResponse({"detail": "the database is unavailable; retry later"},
                        status.HTTP_503_SERVICE_UNAVAILABLE, headers={"Retry-After": "5"})


def install_error_handlers(app: FastAPI) -> None:
    for transient in TRANSIENT_DB_ERRORS:
        app.add_exception_handler(transient, _database_unavailable)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": validation_detail(exc)}, status.HTTP_422_UNPROCESSABLE_CONTENT)

    for exc_type in ERROR_STATUS:
        app.add_exception_handler(exc_type, _detail_response)

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from api import queue
from api.deps import SettingsDep
from service.settings import Settings
from service.store import get_engine

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


def _database_check(settings: Settings) -> str:
    try:
        with get_engine(settings.database_url).connect() as conn:
            conn.execute(text("SELECT 1"))
        return "ok"
    except Exception as exc:  # noqa: BLE001 - reported as the check result
        return f"{type(exc).__name__}: {exc}"[:300]


@router.get("/readyz")
async def readyz(request: Request, settings: SettingsDep) -> JSONResponse:
    """Database and broker answer, and every deployed checkpoint is loaded and warmed up
    (503 otherwise; asking also starts loading a deployed checkpoint not loaded yet)."""
    checks: dict[str, str] = {"database": await run_in_threadpool(_database_check, settings)}
    _, detail = await run_in_threadpool(queue.broker_ok, settings)
    checks["broker"] = detail[:300]
    if checks["database"] == "ok":
        try:
            _, checks["models"] = await request.app.state.serving.readiness()
        except Exception as exc:  # noqa: BLE001 - reported as the check result
            checks["models"] = f"{type(exc).__name__}: {exc}"[:300]
    else:
        checks["models"] = "unknown (no database)"
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ready" if ready else "not ready", "checks": checks},
                        status_code=200 if ready else 503)


@router.get("/metrics", response_class=Response)
def metrics(request: Request) -> Response:
    """Prometheus text format."""
    return request.app.state.metrics.render()

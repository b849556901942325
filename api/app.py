"""The FastAPI app factory: `create_app()` (uvicorn: `api.app:create_app --factory`)."""
from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from api import schemas, services
from api.bootstrap import bootstrap, maybe_seed_demo
from api.errors import install_error_handlers
from api.limits import BodySizeLimit
from api.prometheus import Metrics
from api.ratelimit import RateLimiter
from api.routes import (
    architectures,
    checkpoints,
    datasets,
    deployment,
    detect,
    health,
    jobs,
    models,
)
from api.serving import ServingRuntime
from service.settings import Settings, get_settings

log = logging.getLogger(__name__)

UPLOAD_OVERHEAD = 1 << 20  # multipart framing and small form fields
STATIC_DIR = Path(__file__).resolve().parent / "static"  # the dashboard (no build step)
# Errors any authenticated request may get (routes add their own 404/409/...). Documented with
# the real body, `{"detail": "<what is wrong>"}`: FastAPI's default 422 schema (a list of
# validation errors) is not what api/errors.py answers.
COMMON_ERRORS: dict[int | str, dict[str, object]] = {
    400: {"model": schemas.Message, "description": "The body could not be parsed."},
    401: {"model": schemas.Message, "description": "Missing or invalid API key."},
    413: {"model": schemas.Message, "description": "The request body is over its limit."},
    422: {"model": schemas.Message, "description": "The request is invalid (the detail names the field)."},
    429: {"model": schemas.Message, "description": "This API key is over its rate limit (FLEXBIN_RATE_LIMIT; "
          "POST /detect also FLEXBIN_RATE_LIMIT_DETECT).",
          "headers": {"Retry-After": {"description": "Seconds until a request is allowed again.",
                                      "schema": {"type": "integer", "minimum": 1}}}},
}


def create_app(settings: Settings | None = None, *, run_bootstrap: bool = True) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if run_bootstrap:
            await run_in_threadpool(bootstrap, settings)
            await run_in_threadpool(maybe_seed_demo, settings)
        await app.state.serving.start()
        try:
            yield
        finally:
            await app.state.serving.stop()

    app = FastAPI(
        title="FlexBin",
        version="0.1.0",
        description="Layer-wise priority binarization of pedestrian detectors, as a service.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = Metrics(settings)
    app.state.rate_limiter = RateLimiter(settings, app.state.metrics)
    log.info("%s", app.state.rate_limiter.describe())
    app.state.serving = ServingRuntime(
        settings, app.state.metrics,
        fetch=partial(services.checkpoint_bytes, settings.database_url),
        deployed=partial(services.deployed_serving_keys, settings.database_url),
    )
    install_error_handlers(app)

    def limit_for(method: str, path: str) -> int:
        if method == "POST" and path.rstrip("/") == "/models":
            return settings.max_model_bytes + settings.max_card_bytes + UPLOAD_OVERHEAD
        if method == "POST" and path.rstrip("/") == "/datasets":
            return settings.max_dataset_bytes + UPLOAD_OVERHEAD
        if method == "POST" and path.rstrip("/") == "/detect":
            return settings.max_detect_bytes + UPLOAD_OVERHEAD
        return settings.max_request_bytes

    app.middleware("http")(app.state.metrics.middleware)
    app.add_middleware(BodySizeLimit, limit_for=limit_for)
    app.include_router(health.router)
    for module in (architectures, models, datasets, jobs, checkpoints, deployment, detect):
        app.include_router(module.router, responses=COMMON_ERRORS)

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    def dashboard() -> FileResponse:
        """The dashboard (static files; it signs in with an API key kept in sessionStorage)."""
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    return app

"""Request-body size limits, enforced while the body streams in (before multipart parsing
spools a huge upload to disk): over the limit answers 413."""
from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from fastapi import HTTPException, status

Scope = dict[str, Any]
Message = dict[str, Any]


class BodySizeLimit:
    """Pure ASGI middleware; `limit_for(method, path)` gives the byte limit of a request."""

    def __init__(self, app: Any, limit_for: Callable[[str, str], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["method"], scope["path"])
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _reject(send, f"request body of {int(declared)} bytes exceeds the limit of {limit} bytes")
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # FastAPI re-raises HTTPException from body parsing; the app answers 413.
                    raise HTTPException(
                        status.HTTP_413_CONTENT_TOO_LARGE,
                        detail=f"request body exceeds the limit of {limit} bytes",
                    )
            return message

        await self.app(scope, limited_receive, send)


async def _reject(send: Callable[..., Any], detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({
        "type": "http.response.start",
        "status": status.HTTP_413_CONTENT_TOO_LARGE,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close")],
    })
    await send({"type": "http.response.body", "body": body})

"""Request-body size limits, enforced while the body streams in (before multipart parsing
spools a huge upload to disk): over the limit answers 413."""
from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from fastapi import status

Scope = dict[str, Any]
Message = dict[str, Any]


class BodyTooLarge(Exception):
    """Raised from `receive` when the body passes its limit."""


class BodySizeLimit:
    """Pure ASGI middleware; `limit_for(method, path)` gives the byte limit of a request.

    A declared Content-Length over the limit is refused before reading anything. A body that
    streams past the limit (chunked uploads) makes `receive` raise; whatever the app then
    answers (FastAPI turns body-parsing errors into 400) is replaced by the 413.
    """

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
        exceeded = False
        rejected = False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    raise BodyTooLarge()
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal rejected
            if not exceeded:
                await send(message)
            elif not rejected:
                rejected = True
                await _reject(send, f"request body exceeds the limit of {limit} bytes")

        try:
            await self.app(scope, limited_receive, guarded_send)
        except BodyTooLarge:
            if not rejected:
                rejected = True
                await _reject(send, f"request body exceeds the limit of {limit} bytes")


async def _reject(send: Callable[..., Any], detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({
        "type": "http.response.start",
        "status": status.HTTP_413_CONTENT_TOO_LARGE,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close")],
    })
    await send({"type": "http.response.body", "body": body})

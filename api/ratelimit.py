"""Per-API-key rate limits: over the limit answers 429 with a `Retry-After` header.

Built on the `limits` library with its *moving window* strategy: a request is allowed when
fewer than N requests of the same API key were allowed in the last period (so no burst of 2N
across a fixed window's boundary); refused requests are not counted. Each authenticated
request counts against `FLEXBIN_RATE_LIMIT`, and `POST /detect` also against
`FLEXBIN_RATE_LIMIT_DETECT`, under the sha256 digest of its API key (the key itself is never
stored, not even in Redis). Checked in `api.deps.get_tenant` after the key is authenticated:
requests without a valid key count against no one, and `/healthz`, `/readyz`, `/metrics` and
the static files take no key and are never limited.

The counts live in `FLEXBIN_RATE_LIMIT_STORAGE_URL`: `memory://` (per process) or
`redis://host:6379/2` (one budget shared by every API replica). When the storage fails
(Redis down) the request is allowed - the limit never takes the API down - a warning is
logged at most once a minute, and the storage is left alone for a few seconds.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastapi import HTTPException, Request, status
from limits import RateLimitItem, parse_many
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from service.settings import Settings

if TYPE_CHECKING:
    from api.prometheus import Metrics

log = logging.getLogger(__name__)

WARN_EVERY_S = 60.0  # at most one "storage failed" warning this often
STORAGE_BACKOFF_S = 5.0  # after a storage failure, allow without asking it for this long
STORAGE_TIMEOUT_S = 1.0  # Redis connect / read timeout: a hung Redis must not hang requests
ALL, DETECT = "requests", "detect"  # the budgets (part of the storage key and a metrics label)


@dataclass(frozen=True)
class Refusal:
    limit: str  # e.g. "5 per 1 minute"
    retry_after: int  # whole seconds, >= 1

    @property
    def detail(self) -> str:
        return f"rate limit of {self.limit} exceeded for this API key; retry in {self.retry_after} s"


def parse_limit(value: str) -> list[RateLimitItem]:
    """A `limits` string ("600/minute", "10/second;600/minute"); empty or "0": no limit."""
    value = value.strip()
    return [] if not value or value == "0" else list(parse_many(value))


def _storage_options(url: str) -> dict[str, float]:
    if url.startswith(("redis://", "rediss://", "redis+unix://")):
        return {"socket_connect_timeout": STORAGE_TIMEOUT_S, "socket_timeout": STORAGE_TIMEOUT_S}
    return {}


class RateLimiter:
    """Counts hits per (budget, API-key digest); `check` answers None (allowed) or a Refusal."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limits: dict[str, list[RateLimitItem]] = {
            ALL: parse_limit(settings.rate_limit),
            DETECT: parse_limit(settings.rate_limit_detect),
        }
        self.enabled = any(self.limits.values())
        self.storage_scheme = settings.rate_limit_storage_url.split("://", 1)[0]
        self.metrics = metrics
        self.clock = clock
        self._strategy: MovingWindowRateLimiter | None = None
        if self.enabled:  # a malformed URL or an unknown scheme is a configuration error: raise
            storage = storage_from_string(settings.rate_limit_storage_url,
                                          **_storage_options(settings.rate_limit_storage_url))
            self._strategy = MovingWindowRateLimiter(storage)
        self._lock = threading.Lock()
        self._skip_until = -math.inf
        self._last_warning = -math.inf

    def describe(self) -> str:
        if not self.enabled:
            return "rate limits off"
        parts = [f"{name}: {', '.join(map(str, items))}" for name, items in self.limits.items() if items]
        return f"rate limits per API key ({'; '.join(parts)}; moving window, {self.storage_scheme} storage)"

    def check(self, key_digest: str, budgets: Sequence[str] = (ALL,)) -> Refusal | None:
        """Count one request of `key_digest` against each of `budgets`; the first limit it
        exceeds is refused (limits checked before it have counted the request)."""
        if self._strategy is None or self.clock() < self._skip_until:
            return None
        for budget in budgets:
            for item in self.limits.get(budget, ()):
                try:
                    if self._strategy.hit(item, budget, key_digest):
                        continue
                    reset_at, _ = self._strategy.get_window_stats(item, budget, key_digest)
                except Exception as exc:  # noqa: BLE001 - any storage failure: fail open
                    self._storage_failed(exc)
                    return None
                if self.metrics is not None:
                    self.metrics.rate_limited.labels(budget).inc()
                return Refusal(str(item), max(1, math.ceil(reset_at - time.time())))
        return None

    def _storage_failed(self, exc: Exception) -> None:
        now = self.clock()
        with self._lock:
            self._skip_until = now + STORAGE_BACKOFF_S
            warn = now - self._last_warning >= WARN_EVERY_S
            if warn:
                self._last_warning = now
        if self.metrics is not None:
            self.metrics.rate_limit_storage_errors.inc()
        if warn:
            log.warning("rate-limit storage (%s) failed: %s: %s; allowing requests unlimited (fail open; "
                        "this warning at most once a minute)", self.storage_scheme, type(exc).__name__, exc)


def enforce_rate_limit(request: Request, key_digest: str) -> None:
    """Raise 429 + Retry-After when the API key behind `key_digest` is over its limit."""
    limiter: RateLimiter | None = getattr(request.app.state, "rate_limiter", None)
    if limiter is None or not limiter.enabled:
        return
    path = getattr(request.scope.get("route"), "path", request.url.path)
    budgets = (ALL, DETECT) if request.method == "POST" and path == "/detect" else (ALL,)
    refusal = limiter.check(key_digest, budgets)
    if refusal is not None:
        raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, detail=refusal.detail,
                            headers={"Retry-After": str(refusal.retry_after)})

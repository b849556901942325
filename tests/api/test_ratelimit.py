"""The per-API-key rate limiter (api/ratelimit.py): budgets per key digest, the /detect budget,
Retry-After, off when empty, fail-open when its storage is unreachable; the /detect client
waits out a 429."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Annotated

import httpx
import pytest
from fastapi import Depends, FastAPI, Request
from fastapi.testclient import TestClient
from pydantic import ValidationError

from api import client as detect_client
from api.app import create_app
from api.prometheus import Metrics
from api.ratelimit import ALL, DETECT, RateLimiter, enforce_rate_limit
from service.settings import Settings


def _settings(**kw: str) -> Settings:
    return Settings(database_url="sqlite:///:memory:", **kw)


def test_budget_per_key_with_retry_after() -> None:
    limiter = RateLimiter(_settings(rate_limit="3/minute", rate_limit_detect="0"))
    assert limiter.enabled and "3 per 1 minute" in limiter.describe()
    assert [limiter.check("digest-a") for _ in range(3)] == [None, None, None]
    refusal = limiter.check("digest-a")
    assert refusal is not None and refusal.limit == "3 per 1 minute"
    assert 55 <= refusal.retry_after <= 60, refusal
    assert refusal.detail == f"rate limit of 3 per 1 minute exceeded for this API key; retry in {refusal.retry_after} s"
    assert limiter.check("digest-a") is not None  # refused requests keep being refused
    assert limiter.check("digest-b") is None  # another key has its own budget


def test_detect_budget_counts_on_top_of_the_general_one() -> None:
    metrics = Metrics(_settings())
    limiter = RateLimiter(_settings(rate_limit="3/minute", rate_limit_detect="1/minute"), metrics)
    assert limiter.check("k", (ALL, DETECT)) is None
    refusal = limiter.check("k", (ALL, DETECT))
    assert refusal is not None and refusal.limit == "1 per 1 minute"
    assert limiter.check("k") is None  # the general budget had 2 of 3 used
    assert limiter.check("k") is not None
    assert metrics.rate_limited.labels(DETECT)._value.get() == 1
    assert metrics.rate_limited.labels(ALL)._value.get() == 1


@pytest.mark.parametrize("value", ["", "0", " "])
def test_empty_or_zero_disables(value: str) -> None:
    limiter = RateLimiter(_settings(rate_limit=value, rate_limit_detect=value))
    assert not limiter.enabled and limiter.describe() == "rate limits off"
    assert all(limiter.check("k", (ALL, DETECT)) is None for _ in range(50))


def test_malformed_limit_is_a_settings_error() -> None:
    with pytest.raises(ValidationError, match="rate limit string"):
        _settings(rate_limit="lots per hour")
    assert _settings(rate_limit="10/second;600/minute").rate_limit == "10/second;600/minute"


def test_unreachable_storage_fails_open_and_warns_once_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    now = [1000.0]
    metrics = Metrics(_settings())
    # nothing listens on port 1: every storage call fails at once (connection refused)
    limiter = RateLimiter(_settings(rate_limit="1/minute", rate_limit_storage_url="redis://127.0.0.1:1/0"),
                          metrics, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="api.ratelimit"):
        assert all(limiter.check("k") is None for _ in range(5))  # allowed, over the limit of 1
        assert metrics.rate_limit_storage_errors._value.get() == 1  # then left alone for a few seconds
        now[0] += 10
        assert limiter.check("k") is None
        assert metrics.rate_limit_storage_errors._value.get() == 2  # asked again, failed again...
        assert len(caplog.records) == 1  # ...but warned about once
        now[0] += 61
        assert limiter.check("k") is None
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2 and "fail open" in warnings[0], warnings


def _keyed(request: Request) -> str:
    enforce_rate_limit(request, request.headers["x-key"])
    return request.headers["x-key"]


def test_429_answer_and_openapi() -> None:
    app = FastAPI()
    app.state.rate_limiter = RateLimiter(_settings(rate_limit="2/minute"))

    @app.get("/thing")
    def thing(key: Annotated[str, Depends(_keyed)]) -> dict[str, str]:
        return {"key": key}

    with TestClient(app) as client:
        assert [client.get("/thing", headers={"x-key": "a"}).status_code for _ in range(2)] == [200, 200]
        r = client.get("/thing", headers={"x-key": "a"})
        assert r.status_code == 429, r.text
        assert r.json()["detail"].startswith("rate limit of 2 per 1 minute exceeded for this API key; retry in ")
        assert 1 <= int(r.headers["retry-after"]) <= 60
        assert client.get("/thing", headers={"x-key": "b"}).status_code == 200

    spec = create_app(_settings(), run_bootstrap=False).openapi()
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            if path in ("/healthz", "/readyz", "/metrics"):
                assert "429" not in op["responses"], (method, path)
                continue
            assert "Retry-After" in op["responses"]["429"]["headers"], (method, path)
            assert op["responses"]["429"]["content"]["application/json"]["schema"]["$ref"].endswith("/Message")


def test_detect_client_waits_out_a_429(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a.png").write_bytes(b"png")
    answers = iter([httpx.Response(429, json={"detail": "rate limit"}, headers={"Retry-After": "3"}),
                    httpx.Response(200, json={"checkpoint_id": "c", "results": []})])
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    transport = httpx.MockTransport(lambda request: next(answers))
    with httpx.Client(base_url="http://api", transport=transport) as c:
        assert detect_client._post(c, [tmp_path / "a.png"], {})["checkpoint_id"] == "c"
    assert slept == [3]


def test_detect_client_gives_up_after_its_retries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a.png").write_bytes(b"png")
    calls: list[int] = []

    def always_429(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(429, json={"detail": "rate limit"}, headers={"Retry-After": "soon"})

    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    with httpx.Client(base_url="http://api", transport=httpx.MockTransport(always_429)) as c, \
            pytest.raises(detect_client.DetectError, match="HTTP 429: rate limit"):
        detect_client._post(c, [tmp_path / "a.png"], {})
    assert len(calls) == 1 + detect_client.RATE_LIMIT_RETRIES and slept == [1] * detect_client.RATE_LIMIT_RETRIES

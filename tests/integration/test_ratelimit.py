"""Per-API-key rate limits over real HTTP: API processes (`python -m api.run`) started with
`FLEXBIN_RATE_LIMIT=5/minute` answer 429 + Retry-After to the sixth request of a key while
another key is still served; with Redis storage two processes share one budget; with the
storage unreachable the API fails open.

These processes run on a database of their own with API keys made for this run (unique
digests: a concurrent run of this file, or a run a few seconds ago, counts against other
keys), so FLEXBIN_API_KEYS does not revoke the session API's keys."""
from __future__ import annotations

import hashlib
import os
import re
import secrets
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import redis

from testkit.servers import free_port
from testkit.stack import Proc, fresh_database, wait_until

pytestmark = pytest.mark.timeout(300)  # four API processes start; well under a minute when idle
LIMIT = "5/minute"
DETAIL = re.compile(r"^rate limit of 5 per 1 minute exceeded for this API key; retry in (\d+) s$")


class Api:
    def __init__(self, name: str, env: dict[str, str], log_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = Proc(name, [sys.executable, "-m", "api.run"], {**env, "FLEXBIN_PORT": str(self.port)}, log_dir)

    def wait_up(self) -> Api:
        def up() -> bool:
            assert self.proc.alive(), self.proc.tail()
            try:
                return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(up, 120, f"{self.proc.name} to answer /healthz")
        return self

    def get(self, path: str, key: str | None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.get(f"{self.url}{path}", headers=headers, timeout=30)


@pytest.fixture(scope="module")
def keys() -> dict[str, str]:
    return {t: f"key-{t}-{secrets.token_hex(8)}" for t in ("alpha", "beta")}


@pytest.fixture(scope="module")
def limits_redis(broker_url: str, keys: dict[str, str]) -> Iterator[str]:
    """Redis DB 14 (15 when it is this session's broker). Not flushed: another test session
    may have its broker there; the counts are this run's keys' own, and only they are deleted."""
    index = 15 if broker_url.endswith("/14") else 14
    url = f"redis://127.0.0.1:6379/{index}"
    yield url
    digests = [hashlib.sha256(k.encode()).hexdigest() for k in keys.values()]
    client = redis.Redis.from_url(url)
    try:
        for key in client.scan_iter(match="LIMITS*"):
            if any(d.encode() in key for d in digests):
                client.delete(key)
    finally:
        client.close()


@pytest.fixture(scope="module")
def apis(service_env: dict[str, str], log_dir: Path, keys: dict[str, str],
         limits_redis: str) -> Iterator[dict[str, Api]]:
    with fresh_database(f"flexbin_ratelimit_{os.getpid()}") as db_url:
        env = {**service_env, "DATABASE_URL": db_url, "FLEXBIN_RATE_LIMIT": LIMIT,
               "FLEXBIN_API_KEYS": ",".join(f"{t}:{k}" for t, k in keys.items())}
        shared = {**env, "FLEXBIN_RATE_LIMIT_STORAGE_URL": limits_redis}
        started: dict[str, Api] = {}
        try:
            # the first creates the keys; the others start in parallel once they exist
            started["memory"] = Api("api-rl-memory", env, log_dir).wait_up()
            started["redis1"] = Api("api-rl-redis1", shared, log_dir)
            started["redis2"] = Api("api-rl-redis2", shared, log_dir)
            # nothing listens on port 1: the storage fails on every call
            started["down"] = Api("api-rl-down", {**env, "FLEXBIN_RATE_LIMIT": "1/minute",
                                                  "FLEXBIN_RATE_LIMIT_STORAGE_URL": "redis://127.0.0.1:1/0"},
                                  log_dir)
            with ThreadPoolExecutor(3) as pool:
                list(pool.map(Api.wait_up, [started["redis1"], started["redis2"], started["down"]]))
            yield started
        finally:
            with ThreadPoolExecutor(4) as pool:
                list(pool.map(lambda api: api.proc.stop(), started.values()))


def _assert_refused(r: httpx.Response) -> int:
    assert r.status_code == 429, r.text
    match = DETAIL.match(r.json()["detail"])
    assert match, r.text
    retry_after = int(r.headers["Retry-After"])
    assert 1 <= retry_after <= 60 and retry_after == int(match.group(1)), (r.headers, r.text)
    return retry_after


def test_limit_is_per_api_key(apis: dict[str, Api], keys: dict[str, str]) -> None:
    api = apis["memory"]
    # requests without a valid key count against no one; health, metrics and static files take no key
    for _ in range(3):
        assert api.get("/jobs", None).status_code == 401
        assert api.get("/jobs", "not-a-key").status_code == 401
    for path in ("/healthz", "/metrics", "/", "/static/app.js") * 3:
        assert api.get(path, None).status_code == 200, path
    assert api.get("/readyz", None).status_code in (200, 503)
    assert [api.get("/jobs", keys["alpha"]).status_code for _ in range(5)] == [200] * 5
    _assert_refused(api.get("/jobs", keys["alpha"]))
    _assert_refused(api.get("/architectures", keys["alpha"]))  # every authenticated endpoint
    assert api.get("/jobs", keys["beta"]).status_code == 200  # beta's budget is its own
    assert api.get("/healthz", None).status_code == 200
    metrics = api.get("/metrics", None).text
    assert 'flexbin_rate_limited_total{budget="requests"} 2.0' in metrics, metrics
    assert 'flexbin_http_requests_total{method="GET",route="/jobs",status="429"} 1.0' in metrics


def test_redis_storage_shares_one_budget_between_processes(apis: dict[str, Api], keys: dict[str, str],
                                                           limits_redis: str) -> None:
    first, second = apis["redis1"], apis["redis2"]
    codes = [api.get("/jobs", keys["alpha"]).status_code for api in (first, second, first, second, first)]
    assert codes == [200] * 5
    _assert_refused(second.get("/jobs", keys["alpha"]))
    _assert_refused(first.get("/jobs", keys["alpha"]))
    assert second.get("/jobs", keys["beta"]).status_code == 200
    # the counts are under the key's sha256, never the key itself
    client = redis.Redis.from_url(limits_redis)
    try:
        stored = [k.decode() for k in client.scan_iter(match="LIMITS*")]
    finally:
        client.close()
    digest = hashlib.sha256(keys["alpha"].encode()).hexdigest()
    assert any(digest in k for k in stored), (digest, stored)
    assert not any(keys["alpha"] in k or keys["beta"] in k for k in stored), stored


def test_unreachable_storage_fails_open(apis: dict[str, Api], keys: dict[str, str]) -> None:
    api = apis["down"]  # limit 1/minute, storage on a closed port
    assert [api.get("/jobs", keys["alpha"]).status_code for _ in range(4)] == [200] * 4
    log = api.proc.log_path.read_text(errors="replace")
    assert log.count("fail open") == 1, api.proc.tail()
    assert "flexbin_rate_limit_storage_errors_total 1.0" in api.get("/metrics", None).text

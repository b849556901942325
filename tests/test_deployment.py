"""docker-compose.yml and its loopback override, as `docker compose config` resolves them (the
fast part of `make compose-check`; skipped where the Compose v2 plugin is not installed)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.conftest import REPO_ROOT

# the machine's own PostgreSQL, Redis and `make run`
MACHINE_PORTS = {5432, 6379, 8000}


def _compose_available() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "compose", "version"], capture_output=True, check=False).returncode == 0


pytestmark = pytest.mark.skipif(not _compose_available(),
                                reason="no `docker compose` (tools/compose_check.sh installs it)")


def _config(*files: str) -> dict[str, Any]:
    # only the compose files' own defaults: no FLEXBIN_* or port overrides from this shell
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLEXBIN_", "POSTGRES_"))}
    env |= {"FLEXBIN_API_KEYS": "acme:a-long-random-key", "POSTGRES_PASSWORD": "a-long-random-password"}
    argv = ["docker", "compose", *(a for f in files for a in ("-f", f)), "config", "--format", "json"]
    done = subprocess.run(argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def test_the_operator_must_set_the_api_keys_and_the_database_password() -> None:
    """No default secrets in the compose file: without them `docker compose` refuses, naming them."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLEXBIN_", "POSTGRES_"))}
    for missing in ("FLEXBIN_API_KEYS", "POSTGRES_PASSWORD"):
        given = {"FLEXBIN_API_KEYS": "acme:k", "POSTGRES_PASSWORD": "p"}
        del given[missing]
        done = subprocess.run(["docker", "compose", "config", "--format", "json"], cwd=REPO_ROOT, env=env | given,
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode != 0 and f"set {missing}" in done.stderr


def test_the_main_file_keeps_the_official_images_and_the_gpu_reservation() -> None:
    services = _config("docker-compose.yml")["services"]
    assert services["postgres"]["image"].startswith("postgres:")
    assert services["redis"]["image"].startswith("redis:")
    assert "--appendonly" in services["redis"]["command"]
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert services["migrate"]["healthcheck"]["disable"] is True
    assert services["api"]["environment"]["FLEXBIN_EMBEDDED_WORKER"] == "false"
    assert {s["image"] for n, s in services.items() if n in ("api", "worker", "migrate")} == {"flexbin:latest"}


def test_the_loopback_override_uses_host_networking_on_loopback_ports_of_its_own() -> None:
    config = _config("docker-compose.yml", "docker-compose.loopback.yml")
    services = config["services"]
    assert {s.get("network_mode") for s in services.values()} == {"host"}
    assert not any(s.get("ports") for s in services.values())
    assert not config.get("networks")  # compose creates no network when no service joins one
    api_env = services["api"]["environment"]
    database, broker = urlsplit(api_env["DATABASE_URL"]), urlsplit(api_env["CELERY_BROKER_URL"])
    assert database.hostname == broker.hostname == "127.0.0.1"
    assert api_env["FLEXBIN_HOST"] == "127.0.0.1"
    api_port = int(api_env["FLEXBIN_PORT"])
    assert not {database.port, broker.port, api_port} & MACHINE_PORTS
    # every service talks to the same loopback servers, and the servers listen where they point
    for name in ("migrate", "worker"):
        assert services[name]["environment"]["DATABASE_URL"] == api_env["DATABASE_URL"]
    assert services["worker"]["environment"]["CELERY_BROKER_URL"] == api_env["CELERY_BROKER_URL"]
    postgres = services["postgres"]
    assert int(postgres["environment"]["PGPORT"]) == database.port
    assert "listen_addresses=127.0.0.1" in postgres["command"]
    redis = services["redis"]["command"]
    assert redis[redis.index("--port") + 1] == str(broker.port) and redis[redis.index("--bind") + 1] == "127.0.0.1"
    assert redis[redis.index("--appendonly") + 1] == "yes"
    assert str(broker.port) in services["redis"]["healthcheck"]["test"]
    # a CPU worker here; the image builds on the host network (a loopback wheelhouse)
    assert "deploy" not in services["worker"]
    assert services["worker"]["environment"]["FLEXBIN_TORCH_THREADS"] == "1"
    assert services["migrate"]["build"]["network"] == "host"

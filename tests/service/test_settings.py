"""Settings parse the documented environment; the embedded defaults need no server."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from core.paths import REPO_ROOT
from service.settings import Settings


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://u@h/db")
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://h:6379/0")
    monkeypatch.setenv("FLEXBIN_API_KEYS", " acme:k1 , globex:k2,")
    monkeypatch.setenv("FLEXBIN_PORT", "9000")
    s = Settings()
    assert (s.database_url, s.celery_broker_url, s.port) == ("postgresql+psycopg://u@h/db", "redis://h:6379/0", 9000)
    assert s.parsed_api_keys() == [("acme", "k1"), ("globex", "k2")] and s.demo_tenant() == "acme"
    assert not s.embedded and not s.run_embedded_worker and not s.is_sqlite
    monkeypatch.setenv("FLEXBIN_API_KEYS", "no-colon-here")
    with pytest.raises(ValueError, match="tenant:key"):
        Settings().parsed_api_keys()


def test_embedded_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("DATABASE_URL", "CELERY_BROKER_URL", "FLEXBIN_API_KEYS", "FLEXBIN_EMBEDDED_WORKER"):
        monkeypatch.delenv(var, raising=False)
    s = Settings()
    assert s.database_url == f"sqlite:///{REPO_ROOT}/var/flexbin.db"
    assert s.celery_broker_url == f"sqla+sqlite:///{REPO_ROOT}/var/broker.db"
    assert s.embedded and s.run_embedded_worker and s.demo_tenant() == "dev"


def test_a_postgresql_deployment_refuses_known_default_secrets() -> None:
    pg = "postgresql+psycopg://flexbin:{}@db:5432/flexbin"
    Settings(database_url=pg.format("9f2c-long-random"), api_keys="acme:Zq81-random").check_secrets()
    for api_keys, password, named in (("acme:change-me", "9f2c-long-random", "API key of tenant 'acme'"),
                                      ("acme:Zq81-random", "flexbin", "database password"),
                                      ("acme:Zq81-random,demo:DEV", "9f2c", "API key of tenant 'demo'")):
        settings = Settings(database_url=pg.format(password), api_keys=api_keys)
        with pytest.raises(ValueError, match=f"refusing to start: the {named}") as raised:
            settings.check_secrets()
        assert "Zq81" not in str(raised.value)  # names the secret's owner, never a real key
        Settings(database_url=pg.format(password), api_keys=api_keys, allow_default_secrets=True).check_secrets()
    # the embedded default (SQLite, the `dev` key) is a local run: allowed
    Settings(database_url="sqlite:///var/x.db", api_keys="").check_secrets()
    Settings(database_url="sqlite:///var/x.db", api_keys="dev:dev").check_secrets()


@pytest.mark.parametrize("process", ["api.run", "worker.main"])
def test_the_api_and_the_worker_refuse_to_start_with_a_default_secret(process: str) -> None:
    env = {**os.environ, "DATABASE_URL": "postgresql+psycopg://flexbin:flexbin@127.0.0.1:9/flexbin",
           "FLEXBIN_API_KEYS": "acme:change-me", "CELERY_BROKER_URL": "redis://127.0.0.1:9/0"}
    env.pop("FLEXBIN_ALLOW_DEFAULT_SECRETS", None)
    done = subprocess.run([sys.executable, "-m", process], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode != 0
    assert "refusing to start: the API key of tenant 'acme', the database password in DATABASE_URL" in done.stderr

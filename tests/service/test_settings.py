"""Settings parse the documented environment; the embedded defaults need no server."""
from __future__ import annotations

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

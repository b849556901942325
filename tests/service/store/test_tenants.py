"""API keys (service.store.tenants, api.bootstrap) on a migrated SQLite database: stored as sha256
digests only, compared in constant time, and FLEXBIN_API_KEYS is the full set of valid keys."""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytest
from sqlalchemy import select

from service.store import ApiKey, Tenant, get_sessionmaker
from service.store import tenants as tenants_mod
from service.store.migrate import upgrade_head
from service.store.tenants import (
    ensure_api_key,
    hash_key,
    sync_api_keys,
    tenant_for_key,
)

KEY_A = "acme-key-0c5f7e1d9b"
KEY_B = "globex-key-4a2e8b61f3"
KEY_C = "initech-key-97d3c0a5e2"


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path}/tenants.db"
    upgrade_head(url)
    return url


def _stored_hashes(url: str) -> set[str]:
    with get_sessionmaker(url)() as s:
        return set(s.scalars(select(ApiKey.key_hash)))


def test_keys_are_stored_as_sha256_digests_only(db_url: str) -> None:
    with get_sessionmaker(db_url)() as s:
        ensure_api_key(s, "acme", KEY_A)
        ensure_api_key(s, "acme", KEY_A)  # idempotent
        ensure_api_key(s, "globex", KEY_B)
        s.commit()
    assert _stored_hashes(db_url) == {hashlib.sha256(k.encode()).hexdigest() for k in (KEY_A, KEY_B)}
    with get_sessionmaker(db_url)() as s, pytest.raises(ValueError, match="another tenant"):
        ensure_api_key(s, "globex", KEY_A)


def test_tenant_for_key_compares_digests_in_constant_time(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    real = tenants_mod.hmac.compare_digest
    calls: list[tuple[str, str]] = []

    def counting(a: str, b: str) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(tenants_mod.hmac, "compare_digest", counting)
    with get_sessionmaker(db_url)() as s:
        ensure_api_key(s, "acme", KEY_A)
        s.commit()
        tenant = tenant_for_key(s, KEY_A)
        assert tenant is not None and tenant.name == "acme"
        # the stored digest was checked against the presented key's digest with hmac.compare_digest
        assert calls == [(hash_key(KEY_A), hash_key(KEY_A))]
        # keys whose digest differs (one character, case, whitespace, a prefix, empty) are rejected
        for wrong in (KEY_A[:-1] + "x", KEY_A.upper(), f" {KEY_A}", KEY_A[:8], "", KEY_B):
            assert tenant_for_key(s, wrong) is None, wrong
        # the answer depends on the constant-time comparison: a row found by the lookup whose
        # digest does not compare equal is still refused
        monkeypatch.setattr(tenants_mod.hmac, "compare_digest", lambda a, b: False)
        assert tenant_for_key(s, KEY_A) is None


def test_sync_api_keys_revokes_keys_not_listed(db_url: str) -> None:
    with get_sessionmaker(db_url)() as s:
        for tenant, key in (("acme", KEY_A), ("globex", KEY_B), ("initech", KEY_C)):
            ensure_api_key(s, tenant, key)
        s.commit()
        assert sync_api_keys(s, [("acme", KEY_A), ("globex", KEY_B)]) == 1
        s.commit()
        assert tenant_for_key(s, KEY_C) is None
        assert tenant_for_key(s, KEY_A).name == "acme" and tenant_for_key(s, KEY_B).name == "globex"  # type: ignore[union-attr]
        # the tenant stays (its data is not deleted with its key)
        assert s.scalars(select(Tenant).where(Tenant.name == "initech")).one_or_none() is not None
        assert sync_api_keys(s, [("acme", KEY_A), ("globex", KEY_B)]) == 0  # idempotent
        # rotation: a new key for globex replaces the old one
        assert sync_api_keys(s, [("acme", KEY_A), ("globex", KEY_C)]) == 1
        s.commit()
        assert tenant_for_key(s, KEY_B) is None and tenant_for_key(s, KEY_C).name == "globex"  # type: ignore[union-attr]
        # an empty list would lock everybody out: refused, nothing deleted
        with pytest.raises(ValueError, match="no keys"):
            sync_api_keys(s, [])
    assert _stored_hashes(db_url) == {hash_key(KEY_A), hash_key(KEY_C)}


def test_bootstrap_treats_configured_keys_as_the_full_set(db_url: str, caplog: pytest.LogCaptureFixture) -> None:
    from api.bootstrap import bootstrap
    from service.settings import DEV_KEY, Settings

    def valid(key: str) -> str | None:
        with get_sessionmaker(db_url)() as s:
            tenant = tenant_for_key(s, key)
            return tenant.name if tenant else None

    caplog.set_level(logging.INFO)
    bootstrap(Settings(database_url=db_url, api_keys=f"acme:{KEY_A},globex:{KEY_B}"))
    assert (valid(KEY_A), valid(KEY_B)) == ("acme", "globex")

    # globex's key removed from the configuration: revoked at the next start, the count logged
    caplog.clear()
    bootstrap(Settings(database_url=db_url, api_keys=f"acme:{KEY_A}"))
    assert (valid(KEY_A), valid(KEY_B)) == ("acme", None)
    assert "revoked 1 API key(s)" in caplog.text
    assert KEY_A not in caplog.text and KEY_B not in caplog.text

    # nothing configured: nothing is revoked (the embedded `dev` key is added as before)
    caplog.clear()
    bootstrap(Settings(database_url=db_url, api_keys=""))
    assert (valid(KEY_A), valid(DEV_KEY)) == ("acme", "dev")
    assert "revoked" not in caplog.text
    assert _stored_hashes(db_url) == {hash_key(KEY_A), hash_key(DEV_KEY)}

"""Start-up work shared by every way of running the API: wait for the database, migrate,
create the configured API keys (revoking keys no longer configured), and queue the demo on
an empty database."""
from __future__ import annotations

import logging

from api import queue
from service import demo
from service.settings import DEV_KEY, DEV_TENANT, Settings
from service.store import session_scope
from service.store.migrate import upgrade_head
from service.store.tenants import ensure_api_key, sync_api_keys

log = logging.getLogger(__name__)


def bootstrap(settings: Settings) -> None:
    upgrade_head(settings.database_url)
    configured = settings.parsed_api_keys()
    pairs = configured
    if not pairs and settings.is_sqlite:
        pairs = [(DEV_TENANT, DEV_KEY)]
        log.warning("FLEXBIN_API_KEYS is not set: embedded default for a local run on %s, API key %r for "
                    "tenant %r (send `Authorization: Bearer %s`); a PostgreSQL deployment must set its own keys",
                    settings.host, DEV_KEY, DEV_TENANT, DEV_KEY)
    elif not pairs:
        log.warning("FLEXBIN_API_KEYS is not set: only keys already in the database work")
    with session_scope(settings.database_url) as s:
        if configured:  # FLEXBIN_API_KEYS is the full set: keys no longer listed are revoked
            revoked = sync_api_keys(s, configured)
            if revoked:
                log.warning("revoked %d API key(s) not listed in FLEXBIN_API_KEYS", revoked)
        else:
            for tenant, key in pairs:
                ensure_api_key(s, tenant, key)
    if pairs:
        log.info("API keys ready for tenants: %s", ", ".join(sorted({t for t, _ in pairs})))


def maybe_seed_demo(settings: Settings) -> None:
    """Queue the demo (`demo.seed`) when `service.demo.wants_seeding` says so."""
    if not demo.wants_seeding(settings):
        return
    queue.enqueue_demo(settings)
    log.info("demo: database is empty; queued the demo (%s, then a binarization job) for tenant %r",
             settings.demo_model, settings.demo_tenant())

"""`alembic upgrade head` from code (the API's start-up and `python -m service.store.migrate`)."""
from __future__ import annotations

import logging

from alembic import command
from alembic.config import Config

from core.paths import REPO_ROOT
from service.store.session import wait_for_database

log = logging.getLogger(__name__)


def alembic_config(database_url: str) -> Config:
    cfg = Config(str(REPO_ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(REPO_ROOT / "migrations"))
    cfg.attributes["database_url"] = database_url
    return cfg


def upgrade_head(database_url: str) -> None:
    wait_for_database(database_url)
    log.info("alembic upgrade head")
    command.upgrade(alembic_config(database_url), "head")


if __name__ == "__main__":
    from service.settings import get_settings

    logging.basicConfig(level=logging.INFO)
    upgrade_head(get_settings().database_url)

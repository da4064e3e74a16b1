"""Apply Alembic migrations programmatically (`python run.py migrate`)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from agent.db.engine import prepare_sqlite_path

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["database_url"] = url  # not set_main_option: URLs may hold '%'
    return config


def upgrade(url: str, revision: str = "head") -> None:
    prepare_sqlite_path(url)
    command.upgrade(alembic_config(url), revision)

"""Schema migrations with Alembic, run in-process (`stratus serve` upgrades on start)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from stratus.catalog.db import Database

MIGRATIONS = Path(__file__).with_name("migrations")


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def upgrade(db: Database, revision: str = "head") -> None:
    cfg = alembic_config()
    with db.write_engine.connect() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
        conn.commit()
    analyze(db)


def analyze(db: Database) -> None:
    """Refresh the planner's statistics. Without them SQLite picks the first plausible index, which made
    DescribeImages scan a whole region (bench/profile_paths.py --describe-only)."""
    with db.write_engine.connect() as conn:
        if db.is_sqlite:
            conn.exec_driver_sql("PRAGMA analysis_limit=1000")  # bounded: a sample per index is enough
        conn.exec_driver_sql("ANALYZE")
        conn.commit()


def revision(db: Database, message: str) -> None:
    """Developer helper: autogenerate a new migration against an up-to-date database."""
    cfg = alembic_config()
    with db.write_engine.connect() as conn:
        cfg.attributes["connection"] = conn
        command.revision(cfg, message=message, autogenerate=True)

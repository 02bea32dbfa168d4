"""Migrations up and down on a fresh database, and no drift from the models."""

from __future__ import annotations

import secrets

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.engine import make_url

from app.models import Base
from tests.conftest import DATABASE_URL, run_alembic

EXPECTED_TABLES = {
    "customers",
    "users",
    "chatbots",
    "documents",
    "chat_history",
    "billing",
    "usage_tokens",
}


@pytest.fixture
def fresh_url(is_postgres, tmp_path):  # type: ignore[no-untyped-def]
    if not is_postgres:
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    admin = make_url(DATABASE_URL).set(database="postgres")
    name = f"cbp_mig_{secrets.token_hex(5)}"
    engine = sa.create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(DATABASE_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with engine.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()


def _tables(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade(fresh_url):
    run_alembic(fresh_url, "upgrade", "head")
    assert EXPECTED_TABLES <= _tables(fresh_url)
    run_alembic(fresh_url, "downgrade", "base")
    assert _tables(fresh_url) == set()
    run_alembic(fresh_url, "upgrade", "head")
    assert EXPECTED_TABLES <= _tables(fresh_url)


def test_models_and_migrations_do_not_drift(fresh_url):
    run_alembic(fresh_url, "upgrade", "head")
    engine = sa.create_engine(fresh_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()
    assert diff == []


def test_unique_constraints_exist(fresh_url):
    run_alembic(fresh_url, "upgrade", "head")
    engine = sa.create_engine(fresh_url)
    try:
        inspector = sa.inspect(engine)
        uniques = {
            table: {tuple(u["column_names"]) for u in inspector.get_unique_constraints(table)}
            for table in ("users", "customers", "chatbots", "billing", "usage_tokens")
        }
    finally:
        engine.dispose()
    assert ("username",) in uniques["users"]
    assert ("contact_email",) in uniques["customers"]
    assert ("api_key",) in uniques["chatbots"]
    assert ("invoice_number",) in uniques["billing"]
    assert ("customer_id",) in uniques["usage_tokens"]

"""Migrations up and down on a fresh database, and no drift from the models."""

from __future__ import annotations

import secrets

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.engine import make_url

from app.models import Base
from app.models.base import comparison_filters
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
            filters = comparison_filters(conn.dialect.name)
            context = MigrationContext.configure(conn, opts={"compare_type": True, **filters})
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


def _seed_before_billing(url: str) -> tuple[str, str]:
    """A customer, chatbot, document and two answers (one demo) written at revision 0003."""
    import uuid
    from datetime import UTC, datetime

    customer, chatbot = uuid.uuid4(), uuid.uuid4()
    now = datetime.now(UTC)
    ids = {"id": sa.Uuid(), "customer_id": sa.Uuid(), "chatbot_id": sa.Uuid()}
    columns = {
        "customers": ["id", "name", "contact_email", "billing_info"],
        "chatbots": ["id", "customer_id", "name", "api_key", "allowed_origins"],
        "documents": [
            "id",
            "chatbot_id",
            "filename",
            "file_path",
            "file_type",
            "metadata_json",
            "uploaded_at",
        ],
        "chat_history": [
            "id",
            "chatbot_id",
            "question",
            "answer",
            "timestamp",
            "input_tokens",
            "output_tokens",
            "is_demo",
        ],
    }
    json_columns = {"billing_info", "allowed_origins", "metadata_json"}
    t = {
        name: sa.table(
            name,
            *[sa.column(c, ids.get(c) or (sa.JSON() if c in json_columns else None)) for c in cols],
        )
        for name, cols in columns.items()
    }
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(
                t["customers"].insert(),
                {"id": customer, "name": "A", "contact_email": "a@x.example", "billing_info": {}},
            )
            conn.execute(
                t["chatbots"].insert(),
                {
                    "id": chatbot,
                    "customer_id": customer,
                    "name": "B",
                    "api_key": "k",
                    "allowed_origins": [],
                },
            )
            conn.execute(
                t["documents"].insert(),
                {
                    "id": uuid.uuid4(),
                    "chatbot_id": chatbot,
                    "filename": "f.txt",
                    "file_path": "p",
                    "file_type": "txt",
                    "metadata_json": {},
                    "uploaded_at": now,
                },
            )
            for tokens, demo in ((12, False), (40, True)):
                conn.execute(
                    t["chat_history"].insert(),
                    {
                        "id": uuid.uuid4(),
                        "chatbot_id": chatbot,
                        "question": "q",
                        "answer": "a",
                        "timestamp": now,
                        "input_tokens": tokens // 2,
                        "output_tokens": tokens // 2,
                        "is_demo": demo,
                    },
                )
    finally:
        engine.dispose()
    return str(customer), str(chatbot)


@pytest.mark.parametrize("backend", ["sqlite", "configured"])
def test_upgrading_keeps_rows_and_starts_the_monthly_counters(backend, fresh_url, tmp_path):
    # SQLite rebuilds an altered table; with foreign keys on, dropping the old `chatbots`
    # would cascade into documents and history. The migration must keep every row.
    url = f"sqlite:///{tmp_path / 'kept.db'}" if backend == "sqlite" else fresh_url
    run_alembic(url, "upgrade", "0003")
    _, chatbot = _seed_before_billing(url)
    run_alembic(url, "upgrade", "head")
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            counts = {
                table: conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar()
                for table in ("customers", "chatbots", "documents", "chat_history")
            }
            month = conn.execute(sa.text("SELECT tokens FROM chatbot_monthly_usage")).all()
    finally:
        engine.dispose()
    assert counts == {"customers": 1, "chatbots": 1, "documents": 1, "chat_history": 2}
    assert [row[0] for row in month] == [12]  # this month's non-demo tokens

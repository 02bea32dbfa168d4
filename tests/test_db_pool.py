"""The PostgreSQL pool's liveness check: a pooled connection is pinged before reuse only when
it may be dead, and one the server closed while it was idle is replaced without an error."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from app.core import db as db_module
from app.core.config import Settings
from app.core.db import Database
from tests.waiting import eventually


@pytest.fixture
def own_database(database: str, is_postgres: bool) -> Iterator[Database]:
    """A Database of its own (its own pool), so the app's connections are left alone."""
    if not is_postgres:
        pytest.skip("the liveness check is PostgreSQL's (SQLite keeps the pool's pre-ping)")
    db = Database(Settings(DATABASE_URL=database))
    try:
        yield db
    finally:
        db.dispose()


def _backend_pid(db: Database) -> int:
    with db.session() as session:
        return int(session.scalar(sa.text("SELECT pg_backend_pid()")) or 0)


def _count_pings(db: Database, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    pings: list[int] = []
    real_ping = db.engine.dialect.do_ping

    def counting_ping(dbapi_conn: Any) -> bool:
        pings.append(1)
        return bool(real_ping(dbapi_conn))

    monkeypatch.setattr(db.engine.dialect, "do_ping", counting_ping)
    return pings


def test_a_connection_reused_at_once_is_not_pinged(
    own_database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _backend_pid(own_database)  # a new connection: not pinged either
    pings = _count_pings(own_database, monkeypatch)
    assert [_backend_pid(own_database) for _ in range(3)] == [first] * 3
    with own_database.statement() as session:
        assert session.scalar(sa.text("SELECT pg_backend_pid()")) == first
    assert pings == []
    # Idle for longer than PING_AFTER_IDLE_SECONDS: pinged before reuse (then reused).
    monkeypatch.setattr(db_module, "PING_AFTER_IDLE_SECONDS", 0.0)
    assert _backend_pid(own_database) == first
    assert pings == [1]


def test_a_connection_the_server_closed_while_idle_is_replaced(
    own_database: Database, database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    victim = _backend_pid(own_database)
    pings = _count_pings(own_database, monkeypatch)
    admin = sa.create_engine(database, isolation_level="AUTOCOMMIT")  # fresh statistics
    try:
        with admin.connect() as conn:
            assert conn.scalar(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": victim})
            eventually(
                lambda: conn.scalar(
                    sa.text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid"),
                    {"pid": victim},
                ),
                lambda n: n == 0,
                "the backend gone",
            )
    finally:
        admin.dispose()
    # The pooled connection's socket now has the server's goodbye: pinged, found dead,
    # replaced; the caller only sees its query answered.
    replacement = _backend_pid(own_database)
    assert replacement != victim
    assert pings == [1]
    assert _backend_pid(own_database) == replacement
    assert pings == [1]

"""Engine, sessions and the request-scoped session dependency."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from select import POLLERR, POLLHUP, POLLIN, POLLNVAL, poll
from time import monotonic
from typing import Annotated, Any, TypeVar

from fastapi import Depends
from sqlalchemy import Engine, Select, create_engine, event, func, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

from app.core.config import Settings, get_settings
from app.core.schemas import PageParams

T = TypeVar("T")

# A pooled PostgreSQL connection is pinged (one round trip) before reuse only when it may be
# dead: the server wrote to it while it was idle (a restart or a terminated backend sends an
# error and closes it) or it sat unused this long. Busy connections are reused unpinged.
PING_AFTER_IDLE_SECONDS = 5.0


def build_engine(settings: Settings) -> Engine:
    url = make_url(settings.DATABASE_URL)
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            pool_size=settings.DB_POOL_SIZE,
            max_overflow=settings.DB_MAX_OVERFLOW,
            pool_pre_ping=True,
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    postgres = url.get_backend_name() == "postgresql"
    engine = create_engine(
        url,
        connect_args={"options": "-c timezone=utc"} if postgres else {},
        pool_size=settings.DB_POOL_SIZE,
        max_overflow=settings.DB_MAX_OVERFLOW,
        pool_pre_ping=not postgres,
    )
    if postgres:
        event.listen(engine, "connect", _note_checkin)
        event.listen(engine, "checkin", _note_checkin)
        event.listen(engine, "checkout", functools.partial(_ping_if_suspect, engine))
    return engine


def _note_checkin(_dbapi_conn: Any, record: Any) -> None:
    record.info["checked_in"] = monotonic()


def _ping_if_suspect(engine: Engine, dbapi_conn: Any, record: Any, _proxy: Any) -> None:
    """The pool's pre-ping, for the connections that need it (PING_AFTER_IDLE_SECONDS).
    Raising DisconnectionError makes the pool replace the connection and check out again."""
    idle = monotonic() - record.info.get("checked_in", float("-inf"))
    if idle < PING_AFTER_IDLE_SECONDS and not _has_input(dbapi_conn):
        return
    try:
        engine.dialect.do_ping(dbapi_conn)
    except Exception as exc:
        raise DisconnectionError(f"pooled connection is gone: {exc}") from exc


def _has_input(dbapi_conn: Any) -> bool:
    """Whether an idle connection's socket has something to read (or is closed): nothing
    is owed to a client between statements, so anything there means trouble."""
    if dbapi_conn.closed:
        return True
    poller = poll()
    poller.register(dbapi_conn.fileno(), POLLIN | POLLERR | POLLHUP)
    return any(mask & (POLLIN | POLLERR | POLLHUP | POLLNVAL) for _, mask in poller.poll(0))


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    # With WAL, NORMAL stays consistent after a crash and skips an fsync per commit.
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


class Database:
    """The process's engine and session factories, built once."""

    def __init__(self, settings: Settings):
        self.engine = build_engine(settings)
        self.postgres = self.engine.dialect.name == "postgresql"
        self.sessionmaker = sessionmaker(self.engine, expire_on_commit=False)
        # The same pool, without BEGIN and COMMIT round trips: see `statement()`.
        self.autocommit_sessionmaker = sessionmaker(
            self.engine.execution_options(isolation_level="AUTOCOMMIT"), expire_on_commit=False
        )

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A unit of work: commits on success, rolls back on any error."""
        session = self.sessionmaker()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    @contextmanager
    def statement(self) -> Iterator[Session]:
        """For work that is a single statement (atomic by itself) or reads that need no
        common snapshot: each statement commits on its own, which saves the BEGIN and COMMIT
        round trips of `session()`. Never for several writes that must happen together."""
        session = self.autocommit_sessionmaker()
        try:
            yield session
            session.flush()  # what was added: each statement commits itself
        finally:
            session.close()

    def dispose(self) -> None:
        self.engine.dispose()


_database: Database | None = None


def get_database() -> Database:
    global _database
    if _database is None:
        _database = Database(get_settings())
    return _database


def reset_database() -> None:
    """Forget the process's engine (tests switching databases)."""
    global _database
    if _database is not None:
        _database.dispose()
    _database = None


async def database_dep() -> Database:
    # async: a trivial dependency must not cost a trip through the threadpool.
    return get_database()


# For code that opens its own short transactions (the query path, whose answers outlive a
# request-scoped session's welcome).
DatabaseDep = Annotated[Database, Depends(database_dep)]


def get_session() -> Iterator[Session]:
    """The request's unit of work: committed when the endpoint succeeds, else rolled back."""
    with get_database().session() as session:
        yield session


def insert_for(session: Session) -> Callable[[Any], Any]:
    """The dialect's INSERT, which has ON CONFLICT (upserts) on PostgreSQL and SQLite."""
    from sqlalchemy.dialects import postgresql, sqlite

    dialect = session.get_bind().dialect.name
    return postgresql.insert if dialect == "postgresql" else sqlite.insert


def after_commit(session: Session, action: Callable[[], None]) -> None:
    """Run `action` once the session's transaction has committed (e.g. delete files)."""
    event.listen(session, "after_commit", lambda _s: action(), once=True)


# scope="function": commit before the response is sent, so a client never sees a change
# that then fails to commit (or reads before it is visible).
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


def paginate(
    session: Session, scope: Select[T], page: PageParams, *order_by: Any
) -> tuple[list[T], int]:
    """One page of `scope` in the given order, and how many rows it has in all."""
    total = session.scalar(select(func.count()).select_from(scope.subquery())) or 0
    rows = session.scalars(scope.order_by(*order_by).limit(page.limit).offset(page.offset)).all()
    return list(rows), total

"""Engine, sessions and the request-scoped session dependency."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

from fastapi import Depends
from sqlalchemy import Engine, Select, create_engine, event, func, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from app.core.config import Settings, get_settings
from app.core.schemas import PageParams

T = TypeVar("T")


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
    connect_args = {"options": "-c timezone=utc"} if url.get_backend_name() == "postgresql" else {}
    return create_engine(
        url,
        connect_args=connect_args,
        pool_size=settings.DB_POOL_SIZE,
        max_overflow=settings.DB_MAX_OVERFLOW,
        pool_pre_ping=True,
    )


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    # With WAL, NORMAL stays consistent after a crash and skips an fsync per commit.
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


class Database:
    """The process's engine and session factory, built once."""

    def __init__(self, settings: Settings):
        self.engine = build_engine(settings)
        self.sessionmaker = sessionmaker(self.engine, expire_on_commit=False)

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

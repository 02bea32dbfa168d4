"""Test setup: a fresh PostgreSQL database per run (SQLite when none is reachable), built by
`alembic upgrade head`; the real app with its lifespan."""

from __future__ import annotations

import os
import secrets
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

# Everything the app reads must be set before it is imported.
_TMP = Path(tempfile.mkdtemp(prefix="cbp-tests-"))
os.environ.update(
    {
        "ENVIRONMENT": "test",
        "SECRET_KEY": secrets.token_urlsafe(48),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "UPLOAD_DIR": str(_TMP / "uploads"),
        "CHROMA_PATH": str(_TMP / "chroma"),
        "EMBEDDING_MODEL": os.environ.get("TEST_EMBEDDING_MODEL", "minilm"),
        # torch's vectors for the suite (servers in subprocesses too); the other backends are
        # built and compared with it in tests/rag/test_embedding_backends.py.
        "EMBEDDING_BACKEND": os.environ.get("TEST_EMBEDDING_BACKEND", "torch"),
        "EMBEDDING_QUANTIZE": os.environ.get("TEST_EMBEDDING_QUANTIZE", "none"),
        "EMBEDDING_CACHE_DIR": str(_TMP / "embedding_cache"),
        "LOG_LEVEL": "WARNING",
        "RATE_LIMIT_STORAGE_URL": "memory://",
        # Tests sign up many customers from one address; the throttle has its own test.
        "RATE_LIMIT_REGISTRATIONS_PER_IP": "100000/hour",
    }
)
os.environ.pop("FIREWORKS_API_KEY", None)

import pytest  # noqa: E402
import sqlalchemy as sa  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared"


def _postgres_admin_url() -> str | None:
    url = os.environ.get(
        "TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
    )
    try:
        engine = sa.create_engine(
            url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3}
        )
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        engine.dispose()
        return url
    except Exception:
        return None


def _create_database() -> tuple[str, str | None]:
    admin_url = _postgres_admin_url()
    if admin_url is None:
        if os.environ.get("REQUIRE_POSTGRES") == "1":
            raise RuntimeError("REQUIRE_POSTGRES=1 but PostgreSQL is not reachable")
        warnings.warn(
            "PostgreSQL is not reachable: running the tests on SQLite instead. "
            "Set TEST_POSTGRES_URL to use a PostgreSQL server.",
            stacklevel=1,
        )
        return f"sqlite:///{_TMP / 'test.db'}", None
    name = f"cbp_test_{secrets.token_hex(6)}"
    engine = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False), admin_url


DATABASE_URL, _ADMIN_URL = _create_database()
os.environ["DATABASE_URL"] = DATABASE_URL


def _drop_database() -> None:
    if _ADMIN_URL is None:
        return
    name = make_url(DATABASE_URL).database
    engine = sa.create_engine(_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


def run_alembic(url: str, *args: str) -> None:
    from alembic import command
    from alembic.config import Config

    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "alembic"))
    cfg.attributes["configure_logger"] = False
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            getattr(command, args[0])(cfg, *args[1:])
    finally:
        engine.dispose()


def pytest_report_header(config: pytest.Config) -> str:
    backend = "PostgreSQL" if _ADMIN_URL else "SQLite (PostgreSQL not reachable)"
    return f"database: {backend} {make_url(DATABASE_URL).database}"


@pytest.fixture(scope="session", autouse=True)
def database() -> Iterator[str]:
    run_alembic(DATABASE_URL, "upgrade", "head")
    yield DATABASE_URL
    from app.core.db import reset_database

    reset_database()
    _drop_database()


@pytest.fixture(scope="session")
def is_postgres() -> bool:
    return _ADMIN_URL is not None


@pytest.fixture(scope="session")
def app(database: str):  # type: ignore[no-untyped-def]
    from app.core.config import get_settings

    get_settings.cache_clear()
    from app.main import create_app

    return create_app(get_settings())


@pytest.fixture(scope="session")
def client(app):  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture(autouse=True)
def _fresh_rate_limits(request: pytest.FixtureRequest) -> None:
    """Rate-limit counters are process state; each test starts with none."""
    if "client" in request.fixturenames:
        app = request.getfixturevalue("app")
        runtime = getattr(app.state, "runtime", None)
        if runtime is not None:
            runtime.limiter.reset()


@pytest.fixture
def db_session(database: str):  # type: ignore[no-untyped-def]
    """A session for checking the database state after a call."""
    from app.core.db import get_database

    session = get_database().sessionmaker()
    try:
        yield session
    finally:
        session.rollback()
        session.close()


@pytest.fixture(scope="session")
def settings(app):  # type: ignore[no-untyped-def]
    return app.state.settings


@pytest.fixture(scope="session")
def runtime(client):  # type: ignore[no-untyped-def]
    """The app's process-wide clients (model, vector store, workers), model loaded."""
    runtime = client.app.state.runtime
    runtime.embedder.load()
    return runtime


@pytest.fixture
def paused_workers(runtime):  # type: ignore[no-untyped-def]
    """Stop the app's embedded ingest workers for the test (they are restarted after), with
    an empty queue: what earlier tests left queued is processed first, so the test's own
    claims find its own documents."""
    from app.core.db import get_database
    from app.ingest.worker import IngestWorker

    runtime.workers.stop()
    leftovers = IngestWorker(
        runtime.settings,
        get_database(),
        runtime.embedder,
        runtime.store,
        runtime.sandbox,
        "test-drain",
    )
    while leftovers.run_once():
        pass
    yield runtime
    runtime.start_workers(get_database())


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def chroma_server(tmp_path_factory):  # type: ignore[no-untyped-def]
    """A real Chroma server (`chroma run`) on loopback, for server mode and multi-process
    workers."""
    import shutil
    import subprocess
    import time
    import urllib.request

    exe = shutil.which("chroma") or str(Path(sys.executable).parent / "chroma")
    port = free_port()
    proc = subprocess.Popen(
        [exe, "run", "--path", str(tmp_path_factory.mktemp("chroma-server")), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/v2/heartbeat", timeout=1).read()
            break
        except OSError:
            assert proc.poll() is None, "chroma server exited"
            assert time.monotonic() < deadline, "chroma server did not start"
            time.sleep(0.2)
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="session")
def live_server(client):  # type: ignore[no-untyped-def]
    """The same app served by a real uvicorn on loopback (its lifespan already ran in
    `client`), for concurrency, streaming and disconnects over real HTTP."""
    import asyncio
    import threading
    import time

    import uvicorn

    port = free_port()
    config = uvicorn.Config(
        client.app, host="127.0.0.1", port=port, lifespan="off", log_level="warning"
    )
    server = uvicorn.Server(config)
    loop = asyncio.new_event_loop()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.serve())

    thread = threading.Thread(target=run, name="live-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "live server did not start"
        time.sleep(0.05)
    server.loop = loop  # type: ignore[attr-defined]
    yield server
    server.should_exit = True
    thread.join(10)


@pytest.fixture
def live_url(live_server) -> str:  # type: ignore[no-untyped-def]
    return f"http://127.0.0.1:{live_server.config.port}"


@pytest.fixture
def fake_llm(runtime, live_server):  # type: ignore[no-untyped-def]
    """A loopback Fireworks-compatible server, and the app's LLM client pointed at it for
    the test (used only through `live_url`, whose event loop owns the client)."""
    import asyncio

    from app.rag.llm import LLMClient
    from tests.fake_llm import FakeLLMServer

    server = FakeLLMServer().start()
    settings = runtime.settings.model_copy(
        update={
            "FIREWORKS_API_KEY": "test-key",
            "LLM_BASE_URL": server.base_url,
            "LLM_TIMEOUT_SECONDS": 2.0,
            "LLM_MAX_RETRIES": 1,
        }
    )
    original = runtime.llm
    runtime.llm = LLMClient(settings)
    yield server
    llm, runtime.llm = runtime.llm, original
    asyncio.run_coroutine_threadsafe(llm.aclose(), live_server.loop).result(10)
    server.stop()

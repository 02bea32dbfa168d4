"""Run the real API server for a benchmark: a subprocess on a free loopback port.

Shared by the bench scripts. Everything the server writes (SQLite database, uploads, Chroma
folder, its log) lives in a temporary folder that is removed on exit; with ``postgres=True`` a
fresh PostgreSQL database ``bench_<hex>`` is created for the run and dropped afterwards.

    with BenchServer(model="minilm") as server:
        tenant = server.register_tenant()
        bot = server.create_chatbot(tenant)
        server.upload(tenant, bot["id"], Path("guide.pdf"))
        documents = server.wait_for_documents(tenant, bot["id"])
    # the server is stopped here; ``server.chroma_path`` stays readable until ``cleanup()``

The server runs with the temporary folder as its working directory, so a ``.env`` in the
repository is not read: every setting comes from the environment built here (``extra_env``
wins over the defaults).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests import factories  # noqa: E402 - the tests' factories, over a plain httpx.Client
from tests.factories import Tenant  # noqa: E402

VENV_BIN = REPO / ".venv" / "bin"
DEFAULT_POSTGRES_ADMIN_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
ACTIVE = ("queued", "processing")
PASSWORD = "bench-password-123"


class ServerError(RuntimeError):
    """The server did not start, died, or answered something unexpected."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def offline_env() -> dict[str, str]:
    """Environment for anything that loads a model in this machine (no network)."""
    return {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


# --- CPU accounting (to tell a slow pipeline from a busy machine) ----------------------------

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU-seconds all cores have spent busy since boot (from /proc/stat)."""
    with open("/proc/stat") as handle:
        values = [int(v) for v in handle.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values[:8]) - idle) / _CLK_TCK


def process_group_cpu_seconds(pgid: int) -> float:
    """CPU-seconds used by the live processes of a process group, with their reaped children."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # field 5: pgrp; 14-17: utime stime cutime cstime
            total += sum(int(v) for v in fields[11:15])
    return total / _CLK_TCK


def self_cpu_seconds() -> float:
    """CPU-seconds of this process (all threads) and its reaped children."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


class CpuMeter:
    """CPU used during a span: by the processes we watch, and by everything else."""

    def __init__(self, server: BenchServer | None = None):
        self.server = server
        self.cores = os.cpu_count() or 1

    def _ours(self) -> float:
        ours = self_cpu_seconds()
        if self.server is not None and self.server.process is not None:
            ours += process_group_cpu_seconds(self.server.process.pid)
        return ours

    def __enter__(self) -> CpuMeter:
        self._wall = time.perf_counter()
        self._busy = machine_busy_seconds()
        self._ours0 = self._ours()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._wall
        self.ours = self._ours() - self._ours0
        self.others = max(0.0, machine_busy_seconds() - self._busy - self.ours)

    @property
    def others_share(self) -> float:
        """Share of the machine's CPU capacity used by other processes during the span."""
        return self.others / (self.wall * self.cores) if self.wall > 0 else 0.0

    def as_dict(self) -> dict[str, float]:
        return {
            "wall_seconds": self.wall,
            "our_cpu_seconds": self.ours,
            "other_cpu_seconds": self.others,
            "other_share": self.others_share,
        }


def install_sigterm_handler() -> None:
    """Turn SIGTERM into SystemExit so ``finally`` blocks (and BenchServer.__exit__) run, and
    make sure Ctrl-C raises KeyboardInterrupt even when started with SIGINT ignored (a
    background job of a non-interactive shell)."""

    def _exit(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)
    signal.signal(signal.SIGINT, signal.default_int_handler)


# --- PostgreSQL: a throwaway database per run ------------------------------------------------


def _psycopg2_dsn(url: str) -> str:
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    parts = {
        "host": parsed.host,
        "port": parsed.port,
        "user": parsed.username,
        "password": parsed.password,
        "dbname": parsed.database,
    }
    return " ".join(f"{k}={v}" for k, v in parts.items() if v not in (None, ""))


def create_postgres_database(admin_url: str = DEFAULT_POSTGRES_ADMIN_URL) -> tuple[str, str]:
    """Create ``bench_<hex>``; returns (its name, its SQLAlchemy URL)."""
    import psycopg2
    from sqlalchemy.engine import make_url

    name = f"bench_{secrets.token_hex(6)}"
    conn = psycopg2.connect(_psycopg2_dsn(admin_url))
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
    finally:
        conn.close()
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    return name, url


def drop_postgres_database(name: str, admin_url: str = DEFAULT_POSTGRES_ADMIN_URL) -> None:
    import psycopg2

    conn = psycopg2.connect(_psycopg2_dsn(admin_url))
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        conn.close()


# --- the server ------------------------------------------------------------------------------


class BenchServer:
    """The API server (``alembic upgrade head`` then uvicorn) in a temporary folder.

    ``start()``/``stop()``/``cleanup()``, or use it as a context manager (which stops the
    server and removes the folder and the throwaway database even on Ctrl-C or an error).
    ``stop()`` alone keeps the folder, so the Chroma data can be read after the server is gone.
    """

    def __init__(
        self,
        *,
        model: str = "minilm",
        database_url: str | None = None,
        postgres: bool = False,
        postgres_admin_url: str = DEFAULT_POSTGRES_ADMIN_URL,
        extra_env: Mapping[str, str] | None = None,
        keep: bool = False,
        ready_timeout: float = 300.0,
        quiet: bool = False,
    ):
        if database_url and postgres:
            raise ValueError("give either database_url or postgres, not both")
        self.model = model
        self._database_url = database_url
        self._postgres = postgres
        self._postgres_admin_url = postgres_admin_url
        self.extra_env = dict(extra_env or {})
        self.keep = keep
        self.ready_timeout = ready_timeout
        self.quiet = quiet
        self.workdir: Path | None = None
        self.port: int | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.database_url: str | None = None
        self._pg_name: str | None = None
        self._client: httpx.Client | None = None
        self._log_handle: Any = None

    # --- paths ---
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _dir(self, name: str) -> Path:
        if self.workdir is None:
            raise ServerError("the server has not been started")
        return self.workdir / name

    @property
    def chroma_path(self) -> Path:
        return self._dir("chroma")

    @property
    def upload_dir(self) -> Path:
        return self._dir("uploads")

    @property
    def log_path(self) -> Path:
        return self._dir("server.log")

    @property
    def client(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(base_url=self.base_url, timeout=120.0)
        return self._client

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(offline_env())
        env.update(
            {
                "PYTHONPATH": os.pathsep.join(
                    p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p
                ),
                "ENVIRONMENT": "development",
                "DATABASE_URL": str(self.database_url),
                "UPLOAD_DIR": str(self.upload_dir),
                "CHROMA_PATH": str(self.chroma_path),
                "CHROMA_URL": "",
                "EMBEDDING_MODEL": self.model,
                # The repository's exports, built once (the server runs in a temporary folder).
                "EMBEDDING_CACHE_DIR": os.environ.get(
                    "EMBEDDING_CACHE_DIR", str(REPO / "embedding_cache")
                ),
                "INGEST_WORKERS": "1",
                "LOG_LEVEL": "WARNING",
                "FIREWORKS_API_KEY": "",
                "RATE_LIMIT_STORAGE_URL": "memory://",
                "PUBLIC_BASE_URL": self.base_url,
            }
        )
        env.update(self.extra_env)
        return env

    # --- lifecycle ---
    def __enter__(self) -> BenchServer:
        try:
            self.start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def start(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="bench-server-"))
        for name in ("uploads", "chroma"):
            self._dir(name).mkdir()
        if self._postgres:
            self._pg_name, self.database_url = create_postgres_database(self._postgres_admin_url)
        else:
            self.database_url = self._database_url or f"sqlite:///{self._dir('app.db')}"
        self.port = free_port()
        env = self.env()
        self._log_handle = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        migrate = subprocess.run(
            [str(VENV_BIN / "alembic"), "-c", str(REPO / "alembic.ini"), "upgrade", "head"],
            cwd=self.workdir,
            env=env,
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
            check=False,
        )
        if migrate.returncode != 0:
            raise ServerError(f"alembic upgrade head failed:\n{self.log_tail()}")
        # A session of its own: Ctrl-C in the terminal reaches only us, and we stop the server
        # (and the extraction processes it spawned) ourselves.
        self.process = subprocess.Popen(
            [
                str(VENV_BIN / "uvicorn"),
                "app.main:app",
                "--app-dir",
                str(REPO),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--log-level",
                "warning",
                "--no-access-log",
            ],
            cwd=self.workdir,
            env=env,
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.wait_ready()

    def wait_ready(self) -> dict[str, Any]:
        """Poll GET /ready until 200 (the model loads in the background after start-up)."""
        deadline = time.monotonic() + self.ready_timeout
        last: Any = None
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise ServerError(
                    f"the server exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            try:
                response = self.client.get("/ready", timeout=5.0)
                last = response.json()
                if response.status_code == 200:
                    return dict(last)
            except (httpx.HTTPError, ValueError) as exc:
                last = repr(exc)
            time.sleep(0.25)
        raise ServerError(f"not ready after {self.ready_timeout:.0f} s: {last}\n{self.log_tail()}")

    def stop(self, timeout: float = 30.0) -> None:
        """Stop uvicorn (SIGINT, like Ctrl-C: the lifespan stops the workers), then kill
        whatever is left of its process group (extraction children)."""
        if self._client is not None:
            self._client.close()
            self._client = None
        process, self.process = self.process, None
        if process is not None:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGINT)
                try:
                    process.wait(timeout)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(process.pid, signal.SIGKILL)
                    process.wait(10)
            # The group is ours (start_new_session): its id is the pid we started.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None

    def cleanup(self) -> None:
        """Stop the server, drop the throwaway database, remove the folder (unless keep)."""
        try:
            self.stop()
        finally:
            if self._pg_name is not None:
                name, self._pg_name = self._pg_name, None
                try:
                    drop_postgres_database(name, self._postgres_admin_url)
                except Exception as exc:  # report, but go on removing the folder
                    print(f"warning: could not drop database {name}: {exc}", file=sys.stderr)
            if self.workdir is not None and self.workdir.exists():
                if self.keep:
                    print(f"kept {self.workdir}", file=sys.stderr)
                else:
                    shutil.rmtree(self.workdir, ignore_errors=True)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except (OSError, ServerError):
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # --- API helpers ---
    def _check(self, response: httpx.Response, *expected: int) -> Any:
        if response.status_code not in expected:
            raise ServerError(
                f"{response.request.method} {response.request.url.path} -> "
                f"{response.status_code}: {response.text[:500]}"
            )
        return response.json() if response.content else None

    def register_tenant(self, username: str | None = None) -> Tenant:
        return factories.register(
            self.client, username=username or f"bench_{secrets.token_hex(4)}", password=PASSWORD
        )

    def create_chatbot(self, tenant: Tenant, **fields: Any) -> dict[str, Any]:
        return factories.create_chatbot(self.client, tenant, **fields)

    def upload(
        self, tenant: Tenant, chatbot_id: str, path: Path, filename: str | None = None
    ) -> httpx.Response:
        """POST the file; returns the response whatever its status (202, or 409/413/415...)."""
        with open(path, "rb") as handle:
            return self.client.post(
                f"/api/upload/{chatbot_id}",
                files={"file": (filename or path.name, handle, "application/octet-stream")},
                headers=tenant.headers,
            )

    def list_documents(self, tenant: Tenant, chatbot_id: str) -> list[dict[str, Any]]:
        """Every document of the chatbot (pages of 200)."""
        items: list[dict[str, Any]] = []
        while True:
            response = self.client.get(
                f"/api/chatbots/{chatbot_id}/documents",
                params={"limit": 200, "offset": len(items)},
                headers=tenant.headers,
            )
            page = self._check(response, 200)
            items.extend(page["items"])
            if not page["items"] or len(items) >= page["total"]:
                return items

    def wait_for_documents(
        self,
        tenant: Tenant,
        chatbot_id: str,
        *,
        timeout: float = 1800.0,
        poll: float = 0.25,
        on_poll: Any = None,
    ) -> list[dict[str, Any]]:
        """Poll until no document is queued or processing; returns them all.
        ``on_poll(documents)`` is called after every poll (e.g. to show progress)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise ServerError(f"the server died:\n{self.log_tail()}")
            documents = self.list_documents(tenant, chatbot_id)
            if on_poll is not None:
                on_poll(documents)
            if not any(d["status"] in ACTIVE for d in documents):
                return documents
            if time.monotonic() > deadline:
                active = [d["filename"] for d in documents if d["status"] in ACTIVE]
                raise ServerError(f"documents still active after {timeout:.0f} s: {active}")
            time.sleep(poll)


@contextlib.contextmanager
def running_server(**kwargs: Any) -> Iterator[BenchServer]:
    """``with running_server(model=...) as server:`` — same as ``with BenchServer(...)``."""
    with BenchServer(**kwargs) as server:
        yield server


# --- what every bench script's command line has -------------------------------------------


def add_run_options(parser: argparse.ArgumentParser, env_example: str = "CHUNK_SIZE=200") -> None:
    """--json, --keep and --env, the same in every script."""
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    parser.add_argument("--keep", action="store_true", help="keep the server's temp folder")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"extra server setting (repeatable), e.g. --env {env_example}",
    )


def server_env(
    parser: argparse.ArgumentParser, items: list[str], base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The server's extra settings: `base`, then each --env KEY=VALUE."""
    env = dict(base or {})
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"--env wants KEY=VALUE, not {item!r}")
        env[key] = value
    return env


def write_figures(path: Path | None, figures: Mapping[str, Any]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(figures, indent=2, default=str) + "\n")
    print(f"wrote {path}")

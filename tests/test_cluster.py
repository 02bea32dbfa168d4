"""The distributed layout, run for real: `scripts/cluster` starts a Chroma server, two API
processes that do not ingest and two standalone ingest workers on the machine's PostgreSQL and
Redis, and everything is checked through HTTP (plus the queue's lease owner, read from the
database, to know which worker holds a document).

The run gets its own database, its own Redis database index and key prefix (only its keys are
deleted), its own folders, the loopback fake LLM and the packaged MiniLM. The tests share one
cluster and run in file order: the last one stops it.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import chromadb
import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from tests import docgen
from tests.conftest import _ADMIN_URL, ROOT, free_port
from tests.factories import PASSWORD, create_chatbot, login, register, upload, wait_for_document
from tests.fake_llm import FakeLLMServer
from tests.redisdb import REDIS_SERVER, delete_keys, requires_redis

SCRIPT = ROOT / "scripts" / "cluster"
REDIS_DB = 13  # this test's own database index on the machine's Redis
LOGIN_MAX_FAILURES = 4
PUBLIC_PER_CHATBOT = 4
LEASE_SECONDS = 8

pytestmark = requires_redis(
    "the standalone workers need PostgreSQL" if _ADMIN_URL is None else None
)


# --- processes, identified by pid and start time (a pid can be reused) ---


def _stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    return [raw[: raw.index(" ")], *raw[raw.rindex(")") + 2 :].split()]


def _identity(pid: int) -> tuple[int, str] | None:
    fields = _stat(pid)
    return None if fields is None else (pid, fields[20])  # starttime: field 22


def _running(process: tuple[int, str]) -> bool:
    fields = _stat(process[0])
    return fields is not None and fields[20] == process[1] and fields[1] != "Z"


def descendants(root: int) -> set[tuple[int, str]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None:
            children.setdefault(int(fields[2]), []).append(int(entry.name))
    found: set[tuple[int, str]] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if (identity := _identity(child)) is not None:
                found.add(identity)
                todo.append(child)
    return found


# --- the cluster ---


@dataclass
class Cluster:
    proc: subprocess.Popen[bytes]
    state: dict[str, Any]
    output: Path
    state_file: Path
    local_chroma: Path
    database_url: str
    llm: FakeLLMServer
    engine: sa.Engine
    clients: list[httpx.Client] = field(default_factory=list)
    seen: set[tuple[int, str]] = field(default_factory=set)

    @property
    def api1(self) -> httpx.Client:
        return self.clients[0]

    @property
    def api2(self) -> httpx.Client:
        return self.clients[1]

    @property
    def worker_pids(self) -> dict[int, str]:
        return {int(w["pid"]): w["name"] for w in self.state["workers"]}

    def remember_processes(self) -> None:
        """Every process the script has started so far, grandchildren included (the
        extraction sandbox's), so the shutdown check can find any left behind."""
        self.seen |= descendants(self.proc.pid)

    def document_row(self, document_id: str) -> dict[str, Any]:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.text(
                    "SELECT status, lease_owner, progress, attempts, chunk_count "
                    "FROM documents WHERE id = :id"
                ),
                {"id": document_id},
            ).one()
        return dict(row._mapping)

    def log_tail(self, lines: int = 60) -> str:
        text = self.output.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(text)


def _owner_pid(lease_owner: str) -> int:
    """Workers name themselves host:pid:random."""
    return int(lease_owner.rsplit(":", 2)[1])


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    assert _ADMIN_URL is not None
    tmp = tmp_path_factory.mktemp("cluster")
    run = secrets.token_hex(4)
    database = f"cbp_cluster_{run}"
    prefix = f"cbp-cluster-{run}"
    server = make_url(_ADMIN_URL).set(database="").render_as_string(hide_password=False)
    llm = FakeLLMServer().start()
    state_file = tmp / "state.json"
    output = tmp / "cluster.out"
    local_chroma = tmp / "local-chroma"
    ports: set[int] = set()
    while len(ports) < 5:
        ports.add(free_port())
    api1_port, api2_port, chroma_port, metrics1_port, metrics2_port = sorted(ports)
    env = {
        **os.environ,
        "CLUSTER_DIR": str(tmp / "data"),
        "CLUSTER_DB": database,
        "CLUSTER_POSTGRES_URL": server.rstrip("/"),
        "CLUSTER_REDIS_URL": f"{REDIS_SERVER}/{REDIS_DB}",
        "CLUSTER_API1_PORT": str(api1_port),
        "CLUSTER_API2_PORT": str(api2_port),
        "CLUSTER_CHROMA_PORT": str(chroma_port),
        "CLUSTER_WORKER1_METRICS_PORT": str(metrics1_port),
        "CLUSTER_WORKER2_METRICS_PORT": str(metrics2_port),
        "CLUSTER_READY_SECONDS": "150",
        "CLUSTER_STOP_SECONDS": "20",
        "RATE_LIMIT_KEY_PREFIX": prefix,
        # Must stay unused: every process talks to the Chroma server.
        "CHROMA_PATH": str(local_chroma),
        "FIREWORKS_API_KEY": "test-key",
        "LLM_BASE_URL": llm.base_url,
        "LLM_TIMEOUT_SECONDS": "10",
        "EMBEDDING_MODEL": "minilm",
        "LOG_LEVEL": "INFO",
        "LOGIN_MAX_FAILURES": str(LOGIN_MAX_FAILURES),
        "RATE_LIMIT_PUBLIC_PER_CHATBOT": f"{PUBLIC_PER_CHATBOT}/minute",
        "INGEST_LEASE_SECONDS": str(LEASE_SECONDS),
        "INGEST_POLL_SECONDS": "0.2",
        # A worker that is slow to renew may lose a lease to the other before the kill.
        "INGEST_MAX_ATTEMPTS": "5",
        "EMBEDDING_BATCH_SIZE": "8",
    }
    with open(output, "wb") as out:
        proc = subprocess.Popen(
            [str(SCRIPT), "--state-file", str(state_file)],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    database_url = f"{server.rstrip('/')}/{database}"
    engine = sa.create_engine(database_url)
    cluster = Cluster(proc, {}, output, state_file, local_chroma, database_url, llm, engine)
    try:
        deadline = time.monotonic() + 200
        while not state_file.exists():
            assert proc.poll() is None, f"scripts/cluster exited:\n{cluster.log_tail()}"
            assert time.monotonic() < deadline, f"no ready cluster:\n{cluster.log_tail()}"
            time.sleep(0.2)
        cluster.state = json.loads(state_file.read_text())
        # The same layout was printed, on one line, before the file was written.
        ready_lines = [
            json.loads(line.removeprefix("CLUSTER_READY "))
            for line in output.read_text().splitlines()
            if line.startswith("CLUSTER_READY ")
        ]
        assert ready_lines == [cluster.state], cluster.log_tail()
        cluster.clients = [
            httpx.Client(base_url=api["url"], timeout=30) for api in cluster.state["apis"]
        ]
        cluster.remember_processes()
        yield cluster
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        for client in cluster.clients:
            client.close()
        engine.dispose()
        llm.stop()
        admin = sa.create_engine(_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        admin.dispose()
        delete_keys(REDIS_DB, prefix)


def ask(client: httpx.Client, chatbot_id: str, api_key: str, question: str) -> httpx.Response:
    return client.post(
        f"/api/public/{chatbot_id}/query",
        headers={"X-API-Key": api_key},
        json={"question": question},
    )


def api_key_of(client: httpx.Client, tenant: Any, chatbot_id: str) -> str:
    response = client.get(f"/api/chatbots/{chatbot_id}", headers=tenant.headers)
    assert response.status_code == 200, response.text
    return str(response.json()["api_key"])


# --- the tests (in order: the last one stops the cluster) ---


def test_upload_on_one_api_is_ingested_by_a_standalone_worker_and_answered_by_both(
    cluster: Cluster, tmp_path: Path
) -> None:
    tenant = register(cluster.api1)  # its token is honoured by the other API too
    bot = create_chatbot(cluster.api1, tenant)
    path = docgen.make_txt(
        tmp_path / "harbour.txt",
        "The harbour office opens at 7:30 and closes at 18:00 on weekdays.\n\n"
        "Ferries to the island leave every ninety minutes from pier 4.\n",
    )
    document = upload(cluster.api2, tenant, bot["id"], path)
    assert document["status"] == "queued"

    done = wait_for_document(cluster.api1, tenant, bot["id"], document["id"], timeout=60)
    assert done["status"] == "ready", done
    assert done["chunk_count"] >= 1
    owner = cluster.document_row(document["id"])["lease_owner"]
    assert _owner_pid(owner) in cluster.worker_pids, owner  # not an API process
    stored = Path(cluster.state["upload_dir"]) / tenant.customer_id / bot["id"]
    assert len(list(stored.iterdir())) == 1  # the shared upload folder

    key = api_key_of(cluster.api2, tenant, bot["id"])
    question = "When does the harbour office open?"
    answers = [ask(client, bot["id"], key, question) for client in cluster.clients]
    for response in answers:
        assert response.status_code == 200, response.text
    first, second = (response.json() for response in answers)
    assert first["mode"] == second["mode"] == "llm"
    assert first["answer"] == second["answer"] != ""
    assert first["sources"] and {s["document_id"] for s in first["sources"]} == {document["id"]}
    for one, other in zip(first["sources"], second["sources"], strict=True):
        assert {k: v for k, v in one.items() if k != "score"} == {
            k: v for k, v in other.items() if k != "score"
        }
        assert one["score"] == pytest.approx(other["score"], abs=1e-5)
    prompts = [request["messages"] for request in cluster.llm.requests[-2:]]
    assert prompts[0] == prompts[1] and "7:30" in json.dumps(prompts[0])

    # The vectors are in the Chroma server, and no process made a local Chroma folder.
    chroma = chromadb.HttpClient(host="127.0.0.1", port=cluster.state["chroma"]["port"])
    collection = chroma.get_collection(f"chatbot_{uuid.UUID(bot['id']).hex}")
    assert collection.count() == done["chunk_count"]
    assert not cluster.local_chroma.exists()

    # The worker that ingested it counts the document on its own /metrics.
    worker = next(w for w in cluster.state["workers"] if w["pid"] == _owner_pid(owner))
    metrics = httpx.get(worker["metrics_url"], timeout=10)
    assert metrics.status_code == 200
    assert re.search(r'^ingest_documents_total\{status="ready"\} [1-9]', metrics.text, re.M)


def test_login_throttle_is_shared_by_both_apis(cluster: Cluster) -> None:
    tenant = register(cluster.api1)
    for attempt in range(LOGIN_MAX_FAILURES):
        client = cluster.clients[attempt % 2]
        response = client.post(
            "/auth/token", data={"username": tenant.username, "password": "wrong-password"}
        )
        assert response.status_code == 401, (attempt, response.text)
    for client, password in ((cluster.api1, "wrong-password"), (cluster.api2, PASSWORD)):
        response = client.post(
            "/auth/token", data={"username": tenant.username, "password": password}
        )
        assert response.status_code == 429, response.text
        assert response.json()["code"] == "too_many_attempts"
        assert int(response.headers["Retry-After"]) >= 1
    # The limit is this username's: another account signs in on either API.
    other = register(cluster.api2)
    for client in cluster.clients:
        assert login(client, other.username, PASSWORD)


def test_public_rate_limit_is_shared_by_both_apis(cluster: Cluster) -> None:
    tenant = register(cluster.api2)
    bot = create_chatbot(cluster.api2, tenant)
    key = api_key_of(cluster.api1, tenant, bot["id"])
    for attempt in range(PUBLIC_PER_CHATBOT):
        response = ask(cluster.clients[attempt % 2], bot["id"], key, f"Question {attempt}?")
        assert response.status_code == 200, (attempt, response.text)
        assert response.json()["mode"] == "fallback"  # no documents: nothing to cite
    for client in cluster.clients:
        response = ask(client, bot["id"], key, "One too many?")
        assert response.status_code == 429, response.text
        assert response.json()["code"] == "rate_limited"
    # Another chatbot's counter is its own.
    fresh = create_chatbot(cluster.api2, tenant)
    response = ask(cluster.api1, fresh["id"], api_key_of(cluster.api1, tenant, fresh["id"]), "Hi?")
    assert response.status_code == 200, response.text


def test_worker_killed_mid_document_loses_nothing(cluster: Cluster, tmp_path: Path) -> None:
    tenant = register(cluster.api1)
    bot = create_chatbot(cluster.api1, tenant)
    text = "\n\n".join(
        f"Section {i}: the harbour master logs ship number {i} with its cargo and crew. " * 6
        for i in range(160)
    )
    document = upload(cluster.api2, tenant, bot["id"], docgen.make_txt(tmp_path / "log.txt", text))

    # Freeze whichever worker holds the document, check it is mid-way, then kill it: the
    # kill cannot land after the document is done.
    deadline = time.monotonic() + 60
    while True:
        row = cluster.document_row(document["id"])
        if row["status"] == "processing" and row["lease_owner"]:
            break
        assert row["status"] == "queued", row
        assert time.monotonic() < deadline, f"never claimed: {row}\n{cluster.log_tail()}"
        time.sleep(0.05)
    victim = _owner_pid(row["lease_owner"])
    assert victim in cluster.worker_pids, row
    cluster.remember_processes()  # with the victim's extraction sandbox
    os.kill(victim, signal.SIGSTOP)
    try:
        frozen = cluster.document_row(document["id"])
        assert frozen["status"] == "processing", frozen
        assert frozen["lease_owner"] == row["lease_owner"] and frozen["progress"] < 1
    finally:
        os.kill(victim, signal.SIGKILL)

    done = wait_for_document(cluster.api2, tenant, bot["id"], document["id"], timeout=120)
    assert done["status"] == "ready", done
    final = cluster.document_row(document["id"])
    survivor = _owner_pid(final["lease_owner"])
    assert survivor in cluster.worker_pids and survivor != victim, final
    assert final["attempts"] >= 2
    chroma = chromadb.HttpClient(host="127.0.0.1", port=cluster.state["chroma"]["port"])
    collection = chroma.get_collection(f"chatbot_{uuid.UUID(bot['id']).hex}")
    assert collection.count() == done["chunk_count"] == final["chunk_count"] > 50
    stored = collection.get(where={"document_id": document["id"]}, include=[])
    assert sorted(stored["ids"]) == sorted(
        f"{document['id']}:{i}" for i in range(done["chunk_count"])
    )
    victim_name = cluster.worker_pids[victim]
    deadline = time.monotonic() + 10
    while f"{victim_name} (pid {victim}) exited" not in cluster.output.read_text():
        assert time.monotonic() < deadline, cluster.log_tail()
        time.sleep(0.1)


def test_stopping_one_api_leaves_the_other_serving_and_sigterm_ends_every_process(
    cluster: Cluster,
) -> None:
    cluster.remember_processes()
    tenant = register(cluster.api1)
    bot = create_chatbot(cluster.api1, tenant)
    key = api_key_of(cluster.api1, tenant, bot["id"])
    api1 = _identity(int(cluster.state["apis"][0]["pid"]))
    assert api1 is not None and _running(api1)

    os.kill(api1[0], signal.SIGTERM)
    deadline = time.monotonic() + 30
    while _running(api1):
        assert time.monotonic() < deadline, "api1 did not stop"
        time.sleep(0.1)
    with pytest.raises(httpx.TransportError):
        cluster.api1.get("/health")
    ready = cluster.api2.get("/ready")
    assert ready.status_code == 200 and ready.json()["status"] == "ready", ready.text
    assert login(cluster.api2, tenant.username, PASSWORD)
    response = ask(cluster.api2, bot["id"], key, "Still there?")
    assert response.status_code == 200, response.text
    assert cluster.proc.poll() is None  # the script keeps the others running

    cluster.remember_processes()
    assert len(cluster.seen) >= 4  # chroma, api2, two workers (and what they started)
    cluster.proc.send_signal(signal.SIGTERM)
    assert cluster.proc.wait(60) == 143, cluster.log_tail()
    left = sorted(p for p in cluster.seen if _running(p))
    assert left == [], f"still running after the script stopped: {left}\n{cluster.log_tail()}"
    output = cluster.output.read_text()
    assert "api1 (pid" in output and "stopped (PostgreSQL and Redis keep running)" in output
    assert not cluster.state_file.exists()
    with pytest.raises(httpx.TransportError):
        cluster.api2.get("/health")

"""Faults of the services around the API, with real parts: PostgreSQL and a Chroma server
reached through TCP proxies the tests cut and restore, a separate API server process (as in
production) and the loopback LLM answering garbage or cutting its stream. Requests fail with a
clear 503 while a dependency is gone, and the same process recovers without a restart."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import chromadb
import httpx
import pytest
from chromadb.config import Settings as ChromaSettings
from sqlalchemy.engine import make_url

from bench._server import BenchServer, create_postgres_database, drop_postgres_database
from tests.conftest import DATABASE_URL
from tests.factories import Tenant, create_chatbot, register, wait_for_document
from tests.fake_llm import FakeLLMServer
from tests.tcp_proxy import TcpProxy
from tests.waiting import eventually

FACTS = "Acme support is open Monday to Friday.\n\nReturns are accepted within 30 days.\n"


class Proxied:
    def __init__(self, server: BenchServer, db: TcpProxy, chroma: TcpProxy, chroma_url: str):
        self.server, self.db, self.chroma, self.chroma_url = server, db, chroma, chroma_url
        self.http = server.client


@pytest.fixture(scope="module")
def proxied(is_postgres, chroma_server) -> Iterator[Proxied]:  # type: ignore[no-untyped-def]
    if not is_postgres:
        pytest.skip("the database-restart faults need PostgreSQL (CI runs them)")
    admin = make_url(DATABASE_URL).set(database="postgres").render_as_string(hide_password=False)
    name, url = create_postgres_database(admin)
    real_chroma = urlsplit(chroma_server)
    fake = FakeLLMServer().start()
    with (
        TcpProxy("127.0.0.1", 5432) as db,
        TcpProxy(real_chroma.hostname or "127.0.0.1", real_chroma.port or 8000) as chroma,
    ):
        proxied_url = make_url(url).set(port=db.port).render_as_string(hide_password=False)
        env = {
            "CHROMA_URL": f"http://127.0.0.1:{chroma.port}",
            "FIREWORKS_API_KEY": "faults",
            "LLM_BASE_URL": fake.base_url,
            "LLM_MAX_RETRIES": "0",
            "LLM_TIMEOUT_SECONDS": "5",
            "RATE_LIMIT_REGISTRATIONS_PER_IP": "100000/hour",
            "RATE_LIMIT_PUBLIC_PER_CLIENT": "100000/minute",
        }
        try:
            with BenchServer(database_url=proxied_url, extra_env=env, quiet=True) as server:
                yield Proxied(server, db, chroma, chroma_server)
        finally:
            fake.stop()
            drop_postgres_database(name, admin)


@pytest.fixture(scope="module")
def asking(proxied: Proxied, tmp_path_factory) -> tuple[Tenant, dict[str, Any]]:  # type: ignore[no-untyped-def]
    tenant = register(proxied.http)
    chatbot = create_chatbot(proxied.http, tenant)
    path = Path(tmp_path_factory.mktemp("faults")) / "faq.txt"
    path.write_text(FACTS)
    doc = proxied.server.upload(tenant, chatbot["id"], path).json()
    ready = wait_for_document(proxied.http, tenant, chatbot["id"], doc["id"])
    assert ready["status"] == "ready", ready
    return tenant, chatbot


def _ask(proxied: Proxied, chatbot: dict[str, Any]) -> httpx.Response:
    return proxied.http.post(
        f"/api/public/{chatbot['id']}/query",
        json={"question": "When is support open?"},
        headers={"X-API-Key": chatbot["api_key"]},
    )


def test_database_restarting_under_traffic_gives_503_then_recovers(proxied, asking):  # type: ignore[no-untyped-def]
    tenant, chatbot = asking
    seen: list[tuple[float, int, str]] = []
    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(base_url=proxied.server.base_url, timeout=60) as http:
            while not stop.is_set():
                for response in (
                    http.get("/api/chatbots", headers=tenant.headers),
                    http.post(
                        f"/api/public/{chatbot['id']}/query",
                        json={"question": "When is support open?"},
                        headers={"X-API-Key": chatbot["api_key"]},
                    ),
                ):
                    code = response.json().get("code", "") if response.status_code != 200 else ""
                    seen.append((time.monotonic(), response.status_code, code))

    thread = threading.Thread(target=traffic)
    thread.start()
    try:
        eventually(lambda: sum(1 for _, s, _ in seen if s == 200) >= 4, bool, "traffic", timeout=60)
        proxied.db.cut()  # PostgreSQL goes away: every pooled connection dies
        cut_at = time.monotonic()
        eventually(
            lambda: any(s == 503 and t > cut_at for t, s, _ in seen), bool, "503", timeout=60
        )
        proxied.db.restore()
        back_at = time.monotonic()
        eventually(
            lambda: any(s == 200 and t > back_at for t, s, _ in seen), bool, "recovery", timeout=60
        )
        recovered = [s for t, s, _ in seen if t > back_at]
    finally:
        stop.set()
        thread.join(60)
        if not proxied.db.is_open:
            proxied.db.restore()
    assert {s for _, s, _ in seen} <= {200, 503}, sorted({s for _, s, _ in seen})
    assert {c for _, s, c in seen if s == 503} == {"database_unavailable"}
    assert recovered.count(200) >= 1
    # The same server process answers normally again.
    assert proxied.http.get("/ready").json()["checks"]["database"] == "ok"


def test_vector_store_down_during_a_question_is_a_503(proxied, asking):  # type: ignore[no-untyped-def]
    _, chatbot = asking
    assert _ask(proxied, chatbot).status_code == 200
    proxied.chroma.cut()
    try:
        down = _ask(proxied, chatbot)
        ready = proxied.http.get("/ready")
    finally:
        proxied.chroma.restore()
    assert down.status_code == 503
    assert down.json() == {
        "detail": "This chatbot cannot answer right now; please try again later.",
        "code": "vector_store_unavailable",
    }
    assert ready.status_code == 503 and ready.json()["checks"]["vector_store"] == "error"
    assert eventually(
        lambda: _ask(proxied, chatbot).status_code == 200, bool, "recovery", timeout=60
    )


def test_vectors_of_a_document_deleted_while_the_store_is_down_go_once_it_is_back(  # type: ignore[no-untyped-def]
    proxied, asking, tmp_path
):
    tenant, chatbot = asking
    path = tmp_path / "gone.txt"
    path.write_text("The Acme Turbo blender has a 1200 watt motor.\n")
    doc = proxied.server.upload(tenant, chatbot["id"], path).json()
    assert wait_for_document(proxied.http, tenant, chatbot["id"], doc["id"])["status"] == "ready"
    real = urlsplit(proxied.chroma_url)
    direct = chromadb.HttpClient(
        host=real.hostname, port=real.port, settings=ChromaSettings(anonymized_telemetry=False)
    )
    collection = direct.get_collection(f"chatbot_{uuid.UUID(chatbot['id']).hex}")

    def vectors() -> int:
        return len(collection.get(where={"document_id": doc["id"]}, include=[])["ids"])

    assert vectors() > 0
    proxied.chroma.cut()
    try:
        deleted = proxied.http.delete(
            f"/api/chatbots/{chatbot['id']}/documents/{doc['id']}", headers=tenant.headers
        )
        assert deleted.status_code == 204
        assert vectors() > 0  # the store was out of reach: the vectors are still there
    finally:
        proxied.chroma.restore()
    # The workers' sweep deletes them once the store answers again (with its back-off).
    eventually(lambda: vectors() == 0, bool, "the pending deletion", timeout=180)
    gone = proxied.http.get(
        f"/api/chatbots/{chatbot['id']}/documents/{doc['id']}", headers=tenant.headers
    )
    assert gone.status_code == 404


def test_llm_garbage_and_a_cut_stream_charge_nothing(bot_for_faults, fake_llm, live_url):  # type: ignore[no-untyped-def]
    tenant, chatbot, usage = bot_for_faults
    before = usage()
    fake_llm.fail_next(5, status=200)  # an HTML page where an answer should be
    garbage = httpx.post(
        f"{live_url}/api/public/{chatbot['id']}/query",
        json={"question": "When is support open?"},
        headers={"X-API-Key": chatbot["api_key"]},
        timeout=60,
    )
    assert garbage.status_code == 503 and garbage.json()["code"] == "llm_unavailable"
    fake_llm.fail_next(0)
    fake_llm.break_stream_after(2)  # the LLM drops the connection mid-answer (no retry then)
    streamed = httpx.post(
        f"{live_url}/api/public/{chatbot['id']}/query",
        json={"question": "When is support open?", "stream": True},
        headers={"X-API-Key": chatbot["api_key"]},
        timeout=60,
    )
    assert streamed.status_code == 200
    assert "event: token" in streamed.text  # the visitor saw the start of an answer
    assert "event: error" in streamed.text and '"code": "llm_unavailable"' in streamed.text
    assert "event: done" not in streamed.text
    assert usage() == before  # nothing charged for either


@pytest.fixture
def bot_for_faults(client, runtime, tmp_path, db_session):  # type: ignore[no-untyped-def]
    from sqlalchemy import select

    from app.models import UsageToken
    from tests import docgen
    from tests.factories import upload

    tenant = register(client)
    chatbot = create_chatbot(client, tenant)
    doc = upload(client, tenant, chatbot["id"], docgen.make_txt(tmp_path / "f.txt", FACTS))
    assert wait_for_document(client, tenant, chatbot["id"], doc["id"])["status"] == "ready"

    def usage() -> tuple[int, int]:
        db_session.expire_all()
        row = db_session.scalar(
            select(UsageToken).where(UsageToken.customer_id == uuid.UUID(tenant.customer_id))
        )
        db_session.commit()
        return row.tokens_remaining, row.tokens_used

    return tenant, chatbot, usage

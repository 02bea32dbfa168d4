"""The vector store down: deletions and failures are still recorded at once, and the vectors
are deleted by a worker once it is back. A real Chroma server, stopped and started again."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from app.core.db import get_database
from app.ingest.worker import IngestWorker
from app.models import Document, DocumentStatus, PendingDeletion
from app.models.base import utcnow
from app.rag.vector_store import VectorStore
from tests import docgen
from tests.conftest import free_port
from tests.factories import create_chatbot, register, upload


class ChromaServer:
    """`chroma run` on loopback that a test can stop and start again (same port, same data)."""

    def __init__(self, path: Path):
        self.path = path
        self.url = f"http://127.0.0.1:{free_port()}"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        exe = shutil.which("chroma") or str(Path(sys.executable).parent / "chroma")
        port = self.url.rsplit(":", 1)[1]
        self.proc = subprocess.Popen(
            [exe, "run", "--path", str(self.path), "--port", port],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while True:  # polls for readiness; no step of a test is ordered by this
            try:
                urllib.request.urlopen(f"{self.url}/api/v2/heartbeat", timeout=1).read()
                return
            except OSError:
                assert self.proc.poll() is None, "chroma server exited"
                assert time.monotonic() < deadline, "chroma server did not start"
                time.sleep(0.2)

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture(scope="module")
def chroma(tmp_path_factory):  # type: ignore[no-untyped-def]
    server = ChromaServer(tmp_path_factory.mktemp("chroma-outage"))
    server.start()
    yield server
    if server.running:
        server.stop()


@pytest.fixture
def store(chroma, paused_workers, monkeypatch) -> VectorStore:  # type: ignore[no-untyped-def]
    """The app's vector store (its requests and the test's worker) is the server the test
    stops."""
    if not chroma.running:
        chroma.start()
    store = VectorStore(url=chroma.url)
    monkeypatch.setattr(paused_workers, "store", store)
    return store


def _worker(runtime, store: VectorStore, name: str) -> IngestWorker:  # type: ignore[no-untyped-def]
    return IngestWorker(
        runtime.settings, get_database(), runtime.embedder, store, runtime.sandbox, name
    )


def _pending(db_session, *chatbot_ids: uuid.UUID) -> list[PendingDeletion]:  # type: ignore[no-untyped-def]
    db_session.expire_all()
    return list(
        db_session.scalars(
            select(PendingDeletion)
            .where(PendingDeletion.chatbot_id.in_(chatbot_ids))
            .order_by(PendingDeletion.requested_at)
        )
    )


def _make_due(*pending: PendingDeletion) -> None:
    """The back-off is over (instead of waiting for it)."""
    with get_database().session() as session:
        session.execute(
            update(PendingDeletion)
            .where(PendingDeletion.id.in_([p.id for p in pending]))
            .values(not_before=utcnow() - timedelta(seconds=1))
        )


def test_deletions_while_the_store_is_down_are_finished_by_a_worker(
    client, paused_workers, store, chroma, tmp_path, db_session
):
    runtime = paused_workers
    tenant = register(client)
    bot, other = create_chatbot(client, tenant), create_chatbot(client, tenant)
    bot_id, other_id = uuid.UUID(bot["id"]), uuid.UUID(other["id"])
    keep = upload(client, tenant, bot["id"], docgen.make_txt(tmp_path / "k.txt", "Keep this one."))
    gone = upload(client, tenant, bot["id"], docgen.make_txt(tmp_path / "g.txt", "Delete it."))
    upload(client, tenant, other["id"], docgen.make_txt(tmp_path / "o.txt", "Whole bot goes."))
    keep_id, gone_id = uuid.UUID(keep["id"]), uuid.UUID(gone["id"])
    worker = _worker(runtime, store, "outage")
    while worker.run_once():
        pass
    assert store.count(bot_id, gone_id) > 0 and store.count(other_id) > 0

    chroma.stop()
    try:
        doc_url = f"/api/chatbots/{bot['id']}/documents/{gone['id']}"
        assert client.delete(doc_url, headers=tenant.headers).status_code == 204
        assert client.get(doc_url, headers=tenant.headers).status_code == 404
        bot_url = f"/api/chatbots/{other['id']}"
        assert client.delete(bot_url, headers=tenant.headers).status_code == 204
        assert client.get(bot_url, headers=tenant.headers).status_code == 404
        pending = _pending(db_session, bot_id, other_id)
        assert [(p.chatbot_id, p.document_id) for p in pending] == [
            (bot_id, gone_id),
            (other_id, None),
        ]
        # A sweep while the store is still down counts the attempt and backs off.
        assert worker.run_once() is False
        first = _pending(db_session, bot_id)[0]
        assert first.attempts == 1 and first.not_before > utcnow()
        assert "connect" in (first.last_error or "").lower(), first.last_error
    finally:
        chroma.start()
    # Nothing was deleted meanwhile.
    assert store.count(bot_id, gone_id) > 0 and store.count(other_id) > 0

    _make_due(*pending)
    assert worker.run_once() is True
    assert _pending(db_session, bot_id, other_id) == []
    assert store.count(bot_id, gone_id) == 0
    assert store.count(bot_id, keep_id) > 0
    assert store.count(other_id) == 0 and store.stored_model(other_id) is None


def test_a_document_failing_while_the_store_is_down_does_not_stay_processing(
    client, paused_workers, store, chroma, tmp_path, db_session
):
    runtime = paused_workers
    tenant = register(client)
    bot = create_chatbot(client, tenant)
    bot_id = uuid.UUID(bot["id"])
    broken = upload(client, tenant, bot["id"], docgen.make_corrupt_pdf(tmp_path / "broken.pdf"))
    fine = upload(client, tenant, bot["id"], docgen.make_txt(tmp_path / "f.txt", "Fine text."))
    broken_id, fine_id = uuid.UUID(broken["id"]), uuid.UUID(fine["id"])
    worker = _worker(runtime, store, "outage-fail")

    chroma.stop()
    try:
        # One turn claims both: the broken PDF is a permanent failure; the text's vectors
        # cannot be written, so it is retried. Neither holds the other up.
        assert worker.run_once() is True
    finally:
        chroma.start()
    failed = db_session.get(Document, broken_id)
    assert failed.status == DocumentStatus.failed and failed.lease_owner is None
    assert "damaged" in (failed.error or "").lower(), failed.error
    retried = db_session.get(Document, fine_id)
    assert retried.status == DocumentStatus.queued and retried.attempts == 1
    assert "unexpectedly" in (retried.error or ""), retried.error
    assert retried.lease_expires_at > utcnow()  # retried after a pause, not at once
    # The failed document's leftovers await deletion; the retry clears its own.
    assert [(p.document_id, p.attempts) for p in _pending(db_session, bot_id)] == [(broken_id, 0)]

    with get_database().session() as session:
        session.execute(
            update(Document)
            .where(Document.id == fine_id)
            .values(lease_expires_at=utcnow() - timedelta(seconds=1))
        )
    while worker.run_once():
        pass
    db_session.expire_all()
    assert db_session.get(Document, fine_id).status == DocumentStatus.ready
    assert db_session.get(Document, broken_id).status == DocumentStatus.failed
    assert _pending(db_session, bot_id) == []
    assert store.count(bot_id, fine_id) > 0 and store.count(bot_id, broken_id) == 0
    assert client.delete(f"/api/chatbots/{bot['id']}", headers=tenant.headers).status_code == 204

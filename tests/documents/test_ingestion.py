"""Upload -> queue -> extract -> chunk -> embed -> Chroma, through the real API and worker."""

from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path

import pytest
from sqlalchemy import select

from app.core.db import get_database
from app.ingest.worker import IngestWorker, lower_thread_priority
from app.models import Document, DocumentStatus
from tests import docgen
from tests.factories import create_chatbot, register, upload, wait_for_document

SENTENCES = {
    "pdf": "The lighthouse keeper counted seventeen gulls on the northern pier every morning.",
    "docx": "Our warranty covers accidental damage to the blender for three full years.",
    "html": "Volcanic soil on the island makes the vanilla orchids grow unusually fragrant.",
    "csv": "Saturn rings maintenance",
    "md": "The submarine cable between the two harbours was repaired by divers in winter.",
    "txt": "Penguins at the zoo are fed herring twice a day by the keepers.",
    "utf16": "Die Bergbahn fährt im Sommer alle zwanzig Minuten zum Gipfel hinauf.",
    "latin1": "Le café près de la gare ouvre à six heures et ferme très tard le soir.",
}


def _make(kind: str, folder: Path) -> Path:
    sentence = SENTENCES[kind]
    if kind == "pdf":
        return docgen.make_pdf(folder / "guide.pdf", ["Intro page.", sentence])
    if kind == "docx":
        return docgen.make_docx(
            folder / "warranty.docx",
            ["Warranty terms", sentence],
            [["Item", "Years"], ["Blender", "3"]],
        )
    if kind == "html":
        return docgen.make_html(folder / "island.html", sentence)
    if kind == "csv":
        return docgen.make_csv(
            folder / "tasks.csv",
            ["task", "owner"],
            [[sentence, "Cassini team"], ["Moon survey", "Apollo"]],
        )
    if kind == "md":
        return docgen.make_md(folder / "cable.md", sentence)
    if kind == "txt":
        return docgen.make_txt(folder / "zoo.txt", sentence)
    if kind == "utf16":
        return docgen.make_utf16_txt(folder / "bahn.txt", sentence)
    return docgen.make_latin1_txt(folder / "cafe.txt", sentence)


def test_every_supported_type_is_ingested_and_searchable(client, runtime, tmp_path, db_session):
    tenant = register(client)
    bot = create_chatbot(client, tenant)
    uploaded = {}
    for kind in SENTENCES:
        path = _make(kind, tmp_path)
        uploaded[kind] = upload(client, tenant, bot["id"], path)
        assert uploaded[kind]["status"] == "queued"
    expected_types = {"utf16": "txt", "latin1": "txt"}
    for kind, doc in uploaded.items():
        done = wait_for_document(client, tenant, bot["id"], doc["id"])
        assert done["status"] == "ready", (kind, done)
        assert done["file_type"] == expected_types.get(kind, kind)
        assert done["chunk_count"] >= 1 and done["progress"] == 1.0
        assert done["error"] is None
    pdf = client.get(
        f"/api/chatbots/{bot['id']}/documents/{uploaded['pdf']['id']}", headers=tenant.headers
    ).json()
    assert pdf["pages"] == 2

    chatbot_id = uuid.UUID(bot["id"])
    model = runtime.embedder.model_name
    for kind, sentence in SENTENCES.items():
        hits = runtime.store.query(chatbot_id, model, runtime.embedder.embed_query(sentence), 3)
        assert hits, kind
        top = hits[0]
        assert top.metadata["document_id"] == uploaded[kind]["id"], (kind, top)
        assert sentence.split()[1] in top.text, (kind, top.text)
        assert top.metadata["filename"] == uploaded[kind]["filename"]
        assert top.metadata["chunk_index"] >= 0
    pdf_hit = runtime.store.query(
        chatbot_id, model, runtime.embedder.embed_query(SENTENCES["pdf"]), 1
    )[0]
    assert pdf_hit.metadata["page"] == 2

    rows = db_session.scalars(select(Document).where(Document.chatbot_id == chatbot_id)).all()
    assert {r.status for r in rows} == {DocumentStatus.ready}
    assert all(len(r.content_hash or "") == 64 for r in rows)


@pytest.mark.parametrize(
    ("maker", "reason"),
    [
        (
            lambda p: docgen.make_encrypted_pdf(p / "secret.pdf", "Top secret", "hunter2"),
            "password",
        ),
        (lambda p: docgen.make_image_only_pdf(p / "scan.pdf"), "OCR"),
        (lambda p: docgen.make_corrupt_pdf(p / "broken.pdf"), "damaged"),
        (lambda p: docgen.make_zip_bomb_docx(p / "bomb.docx"), "zip bomb"),
    ],
    ids=["encrypted", "image-only", "corrupt", "zip-bomb"],
)
def test_hostile_documents_end_failed_with_reason(client, runtime, tmp_path, maker, reason):
    tenant = register(client)
    bot = create_chatbot(client, tenant)
    doc = upload(client, tenant, bot["id"], maker(tmp_path))
    done = wait_for_document(client, tenant, bot["id"], doc["id"])
    assert done["status"] == "failed"
    assert reason.lower() in done["error"].lower(), done["error"]
    assert done["chunk_count"] == 0
    assert runtime.store.count(uuid.UUID(bot["id"])) == 0


def _folder_files(settings, tenant, bot) -> list[Path]:  # type: ignore[no-untyped-def]
    folder = settings.UPLOAD_DIR / tenant.customer_id / bot["id"]
    return list(folder.iterdir()) if folder.exists() else []


def test_oversize_upload_refused_without_leftovers(client, settings, tmp_path, db_session):
    tenant = register(client)
    bot = create_chatbot(client, tenant)
    big = tmp_path / "big.txt"
    big.write_bytes(b"a" * (settings.max_upload_bytes + 1))
    response = client.post(
        f"/api/upload/{bot['id']}",
        files={"file": ("big.txt", big.read_bytes(), "text/plain")},
        headers=tenant.headers,
    )
    assert response.status_code == 413
    assert response.json()["code"] == "file_too_large"
    assert _folder_files(settings, tenant, bot) == []
    count = db_session.scalars(select(Document).where(Document.chatbot_id == uuid.UUID(bot["id"])))
    assert count.all() == []


def test_oversize_with_lying_content_length_is_counted(app, client, settings, tmp_path):
    """A client that streams more than it declared is stopped by the byte count."""
    import httpx

    tenant = register(client)
    bot = create_chatbot(client, tenant)
    boundary = "xyzBOUNDARY"

    def body():  # type: ignore[no-untyped-def]
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.txt"\r\n'
            "Content-Type: text/plain\r\n\r\n"
        ).encode()
        chunk = b"b" * (1024 * 1024)
        for _ in range(settings.MAX_UPLOAD_MB + 2):
            yield chunk
        yield f"\r\n--{boundary}--\r\n".encode()

    transport = httpx.ASGITransport(app=app)

    async def send() -> httpx.Response:
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:

            async def agen():  # type: ignore[no-untyped-def]
                for piece in body():
                    yield piece

            return await http.post(
                f"/api/upload/{bot['id']}",
                content=agen(),
                headers={
                    **tenant.headers,
                    "Content-Type": f"multipart/form-data; boundary={boundary}",
                    "Content-Length": "1000",
                },
            )

    import asyncio

    response = asyncio.run(send())
    assert response.status_code == 413
    assert _folder_files(settings, tenant, bot) == []


@pytest.mark.parametrize(
    ("name", "content", "status", "code"),
    [
        ("photo.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 200, 415, "unsupported_file_type"),
        ("report.pdf", b"this is plain text pretending to be a pdf", 415, "unsupported_file_type"),
        ("archive.docx", b"PK\x03\x04" + b"\x00" * 100, 415, "unsupported_file_type"),
        ("program.exe", b"MZ\x90\x00\x03" + bytes(range(256)) * 4, 415, "unsupported_file_type"),
        ("empty.txt", b"", 422, "empty_file"),
    ],
)
def test_unsupported_and_empty_uploads_refused(client, settings, name, content, status, code):
    tenant = register(client)
    bot = create_chatbot(client, tenant)
    response = client.post(
        f"/api/upload/{bot['id']}", files={"file": (name, content)}, headers=tenant.headers
    )
    assert response.status_code == status, response.text
    assert response.json()["code"] == code
    assert _folder_files(settings, tenant, bot) == []
    listing = client.get(f"/api/chatbots/{bot['id']}/documents", headers=tenant.headers).json()
    assert listing["total"] == 0


def test_malformed_upload_requests(client, settings):
    tenant = register(client)
    bot = create_chatbot(client, tenant)
    no_file = client.post(f"/api/upload/{bot['id']}", data={"other": "x"}, headers=tenant.headers)
    assert no_file.status_code == 422 and no_file.json()["code"] == "invalid_upload"
    as_json = client.post(f"/api/upload/{bot['id']}", json={"file": "x"}, headers=tenant.headers)
    assert as_json.status_code == 422 and as_json.json()["code"] == "invalid_upload"
    assert _folder_files(settings, tenant, bot) == []


def test_same_content_upload_is_detected(client, runtime, tmp_path, db_session):
    tenant = register(client)
    bot = create_chatbot(client, tenant)
    path = docgen.make_txt(tmp_path / "faq.txt", "Returns are accepted within thirty days.")
    first = upload(client, tenant, bot["id"], path)
    again = client.post(
        f"/api/upload/{bot['id']}",
        files={"file": ("renamed.txt", path.read_bytes())},
        headers=tenant.headers,
    )
    assert again.status_code == 409
    assert again.json()["code"] == "duplicate_document"
    assert first["id"] in again.json()["detail"]
    rows = db_session.scalars(
        select(Document).where(Document.chatbot_id == uuid.UUID(bot["id"]))
    ).all()
    assert len(rows) == 1
    # The same file for another chatbot is a different document.
    other = create_chatbot(client, tenant)
    assert upload(client, tenant, other["id"], path)["status"] == "queued"


def test_delete_document_removes_file_and_vectors(client, runtime, settings, tmp_path, db_session):
    tenant = register(client)
    bot = create_chatbot(client, tenant)
    keep = upload(client, tenant, bot["id"], docgen.make_txt(tmp_path / "k.txt", "Keep this one."))
    gone = upload(client, tenant, bot["id"], docgen.make_txt(tmp_path / "g.txt", "Delete me soon."))
    for doc in (keep, gone):
        assert wait_for_document(client, tenant, bot["id"], doc["id"])["status"] == "ready"
    chatbot_id = uuid.UUID(bot["id"])
    assert runtime.store.count(chatbot_id, uuid.UUID(gone["id"])) >= 1
    row = db_session.get(Document, uuid.UUID(gone["id"]))
    stored = settings.UPLOAD_DIR / row.file_path
    assert stored.exists()

    response = client.delete(
        f"/api/chatbots/{bot['id']}/documents/{gone['id']}", headers=tenant.headers
    )
    assert response.status_code == 204
    assert runtime.store.count(chatbot_id, uuid.UUID(gone["id"])) == 0
    assert runtime.store.count(chatbot_id, uuid.UUID(keep["id"])) >= 1
    assert not stored.exists()
    db_session.expire_all()
    assert db_session.get(Document, uuid.UUID(gone["id"])) is None
    missing = client.get(
        f"/api/chatbots/{bot['id']}/documents/{gone['id']}", headers=tenant.headers
    )
    assert missing.status_code == 404


class GatedStore:
    """The real store; the worker's second write waits until the test lets it go."""

    def __init__(self, store) -> None:  # type: ignore[no-untyped-def]
        self.store = store
        self.writes = 0
        self.second_write_due = threading.Event()
        self.go = threading.Event()
        self.count_after_writes: list[int] = []

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self.store, name)

    def add(self, chatbot_id, *args):  # type: ignore[no-untyped-def]
        self.writes += 1
        if self.writes == 2:
            self.second_write_due.set()
            assert self.go.wait(120)
        self.store.add(chatbot_id, *args)
        self.count_after_writes.append(self.store.count(chatbot_id))


def test_delete_while_processing_leaves_no_vectors(client, paused_workers, tmp_path, db_session):
    runtime = paused_workers
    tenant = register(client)
    bot = create_chatbot(client, tenant)
    text = "\n\n".join(
        f"Paragraph {i} talks about topic {i} with several more words to fill it." * 8
        for i in range(400)
    )
    doc = upload(client, tenant, bot["id"], docgen.make_txt(tmp_path / "long.txt", text))
    chatbot_id = uuid.UUID(bot["id"])
    gated = GatedStore(runtime.store)
    worker = IngestWorker(
        runtime.settings, get_database(), runtime.embedder, gated, runtime.sandbox, "gated"
    )
    thread = threading.Thread(target=worker.run_once)
    thread.start()
    # The worker has written its first batch and is about to write the second.
    assert gated.second_write_due.wait(120)
    assert runtime.store.count(chatbot_id) > 0
    response = client.delete(
        f"/api/chatbots/{bot['id']}/documents/{doc['id']}", headers=tenant.headers
    )
    assert response.status_code == 204
    assert runtime.store.count(chatbot_id) == 0  # the request removed what was there
    gated.go.set()  # the worker writes its second batch now, after the delete
    thread.join(120)
    assert not thread.is_alive()
    assert gated.count_after_writes[-1] > 0  # so the late write landed...
    assert runtime.store.count(chatbot_id) == 0  # ...and the worker's cleanup removed it
    assert db_session.get(Document, uuid.UUID(doc["id"])) is None


def test_reindex_rebuilds_the_collection(client, runtime, tmp_path):
    tenant = register(client)
    bot = create_chatbot(client, tenant)
    doc = upload(client, tenant, bot["id"], docgen.make_md(tmp_path / "a.md", "Reindex me please."))
    first = wait_for_document(client, tenant, bot["id"], doc["id"])
    assert first["status"] == "ready"
    response = client.post(f"/api/chatbots/{bot['id']}/reindex", headers=tenant.headers)
    assert response.status_code == 202
    assert response.json()["documents_queued"] == 1
    assert response.json()["embedding_model"] == runtime.embedder.model_name
    again = wait_for_document(client, tenant, bot["id"], doc["id"])
    assert again["status"] == "ready" and again["chunk_count"] == first["chunk_count"]
    assert runtime.store.count(uuid.UUID(bot["id"])) == first["chunk_count"]


def test_delete_chatbot_removes_collection_and_files(client, runtime, settings, tmp_path):
    tenant = register(client)
    bot = create_chatbot(client, tenant)
    doc = upload(client, tenant, bot["id"], docgen.make_txt(tmp_path / "x.txt", "Short lived."))
    assert wait_for_document(client, tenant, bot["id"], doc["id"])["status"] == "ready"
    chatbot_id = uuid.UUID(bot["id"])
    assert runtime.store.count(chatbot_id) >= 1
    assert client.delete(f"/api/chatbots/{bot['id']}", headers=tenant.headers).status_code == 204
    assert runtime.store.count(chatbot_id) == 0
    assert runtime.store.stored_model(chatbot_id) is None
    assert not (settings.UPLOAD_DIR / tenant.customer_id / bot["id"]).exists()


def test_documents_of_another_tenant_are_invisible(client, runtime, tmp_path, db_session):
    a = register(client)
    b = register(client)
    bot = create_chatbot(client, a)
    doc = upload(client, a, bot["id"], docgen.make_txt(tmp_path / "a.txt", "Tenant A only."))
    base = f"/api/chatbots/{bot['id']}"
    path = docgen.make_txt(tmp_path / "b.txt", "Tenant B sneaking in.")
    sneaky = client.post(
        f"/api/upload/{bot['id']}", files={"file": ("b.txt", path.read_bytes())}, headers=b.headers
    )
    assert sneaky.status_code == 404 and sneaky.json()["code"] == "not_found"
    for method, url in (
        ("GET", f"{base}/documents"),
        ("GET", f"{base}/documents/{doc['id']}"),
        ("DELETE", f"{base}/documents/{doc['id']}"),
        ("POST", f"{base}/reindex"),
    ):
        response = client.request(method, url, headers=b.headers)
        assert response.status_code == 404, (method, url)
    rows = db_session.scalars(
        select(Document).where(Document.chatbot_id == uuid.UUID(bot["id"]))
    ).all()
    assert [str(r.id) for r in rows] == [doc["id"]]
    own = client.get(f"{base}/documents/{doc['id']}", headers=a.headers)
    assert own.status_code == 200


def test_document_listing_paginates_and_filters(client, runtime, tmp_path):
    tenant = register(client)
    bot = create_chatbot(client, tenant)
    ids = [
        upload(
            client, tenant, bot["id"], docgen.make_txt(tmp_path / f"{i}.txt", f"Doc number {i}.")
        )["id"]
        for i in range(3)
    ]
    for doc_id in ids:
        wait_for_document(client, tenant, bot["id"], doc_id)
    page = client.get(
        f"/api/chatbots/{bot['id']}/documents?limit=2&offset=0", headers=tenant.headers
    ).json()
    assert page["total"] == 3 and len(page["items"]) == 2 and page["limit"] == 2
    ready = client.get(
        f"/api/chatbots/{bot['id']}/documents?status=ready", headers=tenant.headers
    ).json()
    assert ready["total"] == 3
    failed = client.get(
        f"/api/chatbots/{bot['id']}/documents?status=failed", headers=tenant.headers
    ).json()
    assert failed["total"] == 0
    bad = client.get(f"/api/chatbots/{bot['id']}/documents?status=nope", headers=tenant.headers)
    assert bad.status_code == 422


def test_ready_checks_vector_store_and_model(client, runtime):
    body = client.get("/ready").json()
    assert body["checks"] == {"database": "ok", "vector_store": "ok", "embedding_model": "ok"}


def test_failed_document_can_be_uploaded_again(client, runtime, tmp_path, db_session):
    tenant = register(client)
    bot = create_chatbot(client, tenant)
    path = docgen.make_encrypted_pdf(tmp_path / "locked.pdf", "Locked text", "pw")
    first = upload(client, tenant, bot["id"], path)
    assert wait_for_document(client, tenant, bot["id"], first["id"])["status"] == "failed"
    again = upload(client, tenant, bot["id"], path)
    assert again["id"] != first["id"] and again["status"] == "queued"
    db_session.expire_all()
    assert db_session.get(Document, uuid.UUID(first["id"])) is None
    assert wait_for_document(client, tenant, bot["id"], again["id"])["status"] == "failed"


class PolicyRecordingStore:
    """The runtime's store, noting the scheduling of the thread that writes each batch."""

    def __init__(self, store, stop: threading.Event):  # type: ignore[no-untyped-def]
        self.store, self.stop, self.seen = store, stop, []

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self.store, name)

    def add(self, *args):  # type: ignore[no-untyped-def]
        self.seen.append((os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, 0)))
        self.store.add(*args)
        self.stop.set()


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux's")
@pytest.mark.parametrize("idle", [False, True], ids=["nice-only", "sched-idle"])
def test_the_worker_embeds_at_its_lowered_priority_and_leaves_other_threads_alone(
    client, paused_workers, tmp_path, idle
):
    runtime = paused_workers
    settings = runtime.settings.model_copy(update={"INGEST_SCHED_IDLE": idle})
    assert settings.INGEST_NICE == 10
    tenant = register(client)
    bot = create_chatbot(client, tenant)
    doc = upload(client, tenant, bot["id"], docgen.make_md(tmp_path / "a.md", "Idle CPU only."))
    stop = threading.Event()
    store = PolicyRecordingStore(runtime.store, stop)
    worker = IngestWorker(
        settings, get_database(), runtime.embedder, store, runtime.sandbox, "lowered"
    )
    thread = threading.Thread(target=worker.run, args=(stop,))
    thread.start()
    thread.join(120)
    assert not thread.is_alive()
    policy = os.SCHED_IDLE if idle else os.SCHED_OTHER
    assert store.seen and all(seen == (policy, 10) for seen in store.seen)
    # Only the worker's thread (and what it starts) was lowered.
    assert os.sched_getscheduler(0) == os.SCHED_OTHER
    assert os.getpriority(os.PRIO_PROCESS, 0) == 0
    assert wait_for_document(client, tenant, bot["id"], doc["id"])["status"] == "ready"


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux's")
def test_threads_started_by_a_lowered_thread_inherit_its_scheduling() -> None:
    seen: dict[str, tuple[int, int]] = {}

    def child() -> None:
        seen["child"] = (os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, 0))

    def parent() -> None:
        lower_thread_priority(7, idle=True)
        seen["parent"] = (os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, 0))
        inner = threading.Thread(target=child)
        inner.start()
        inner.join()

    outer = threading.Thread(target=parent)
    outer.start()
    outer.join()
    assert seen == {"parent": (os.SCHED_IDLE, 7), "child": (os.SCHED_IDLE, 7)}
    assert os.sched_getscheduler(0) == os.SCHED_OTHER

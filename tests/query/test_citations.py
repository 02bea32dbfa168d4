"""Answers cite only documents that exist and are `ready`: vectors a deletion left behind (the
vector store was down) or a failed ingestion wrote are never cited."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import update

from app.core.db import get_database
from app.models import Document, DocumentStatus
from app.rag.vector_store import ChunkRecord
from app.runtime import Runtime
from tests import docgen
from tests.factories import create_chatbot, register, upload, wait_for_document
from tests.fake_llm import FakeLLMServer
from tests.query.money import Bot, money

GHOST = (
    "Ghost passage: Acme support is open Monday to Friday from 9:00 to 17:00, says a deleted file."
)


def _public(live_url: str, chatbot: dict[str, Any], question: str) -> httpx.Response:
    return httpx.post(
        f"{live_url}/api/public/{chatbot['id']}/query",
        json={"question": question},
        headers={"X-API-Key": chatbot["api_key"]},
        timeout=30,
    )


def _add_ghost(runtime: Runtime, customer_id: str, chatbot_id: str, document_id: uuid.UUID) -> None:
    vector = runtime.embedder.embed_passages([GHOST])[0]
    runtime.store.add(
        uuid.UUID(chatbot_id),
        uuid.UUID(customer_id),
        runtime.embedder.model_name,
        len(vector),
        [
            ChunkRecord(
                f"{document_id}:0",
                GHOST,
                vector,
                {"document_id": str(document_id), "filename": "deleted.txt", "chunk_index": 0},
            )
        ],
    )


def test_vectors_without_a_ready_document_are_never_cited(
    bot: Bot,
    fake_llm: FakeLLMServer,
    live_url: str,
    runtime: Runtime,
    client: httpx.Client,
    tmp_path: Path,
) -> None:
    tenant, chatbot, doc = bot
    ghost = uuid.uuid4()  # no row: deleted while the store was down
    _add_ghost(runtime, tenant.customer_id, chatbot["id"], ghost)
    second = upload(
        client,
        tenant,
        chatbot["id"],
        docgen.make_txt(tmp_path / "hours.txt", "Acme support hours: Monday to Friday, 9 to 5."),
    )
    assert wait_for_document(client, tenant, chatbot["id"], second["id"])["status"] == "ready"
    with get_database().session() as session:  # its vectors stay; the row says failed
        session.execute(
            update(Document)
            .where(Document.id == uuid.UUID(second["id"]))
            .values(status=DocumentStatus.failed)
        )

    response = _public(live_url, chatbot, "When is support open?")
    assert response.status_code == 200, response.text
    cited = {source["document_id"] for source in response.json()["sources"]}
    assert cited == {doc["id"]}
    prompt = str(fake_llm.requests[-1]["messages"])
    assert "Ghost passage" not in prompt and "support hours" not in prompt


def test_only_stale_vectors_mean_nothing_relevant_was_found(
    client: httpx.Client, fake_llm: FakeLLMServer, live_url: str, runtime: Runtime
) -> None:
    tenant = register(client)
    chatbot = create_chatbot(client, tenant)
    _add_ghost(runtime, tenant.customer_id, chatbot["id"], uuid.uuid4())
    before = money(tenant.customer_id, chatbot["id"])
    response = _public(live_url, chatbot, "When is support open?")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["mode"] == "fallback" and body["sources"] == []
    assert body["usage"]["total_tokens"] == 0 and fake_llm.requests == []
    after = money(tenant.customer_id, chatbot["id"])
    assert after.tokens_remaining == before.tokens_remaining and after.history == 1

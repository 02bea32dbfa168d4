"""Hybrid retrieval through the API: the lexical index follows the documents (ingest,
delete, reindex), stays inside its chatbot, and finds what only an exact code matches."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
from sqlalchemy import Row, func, select, text
from sqlalchemy.orm import Session

from app.core.db import get_database
from app.ingest.worker import IngestWorker
from app.models import Passage
from app.runtime import Runtime
from tests import docgen
from tests.factories import Tenant, create_chatbot, register, upload, wait_for_document

# A manual whose spare parts all have look-alike numbers, which an embedding blurs together;
# only the exact code tells QX-48213-B's line apart.
MANUAL = [
    "The blender has a 1200 watt motor and comes with a two year warranty.",
    "The spare blade assembly is part RT-55102-K.",
    "The lid locks with a quarter turn; the motor stops when it is opened.",
    "Replacement gasket for the jug: order part QX-48213-B from the service desk.",
    "Order a new glass jug as part ZP-90871-M.",
    "The motor brush kit is part LM-30457-T.",
]


def _ask(client: httpx.Client, chatbot: dict, question: str) -> httpx.Response:
    return client.post(
        f"/api/public/{chatbot['id']}/query",
        json={"question": question},
        headers={"X-API-Key": chatbot["api_key"]},
    )


def _passages(session: Session, **where: object) -> list[Row]:
    """(id, chatbot_id, chunk_index, text) of the passages, read now."""
    session.rollback()
    query = select(Passage.id, Passage.chatbot_id, Passage.chunk_index, Passage.text).order_by(
        Passage.document_id, Passage.chunk_index
    )
    for column, value in where.items():
        query = query.where(getattr(Passage, column) == value)
    return list(session.execute(query))


def _ready(client: httpx.Client, tenant: Tenant, chatbot: dict, path: Path) -> dict:
    doc = upload(client, tenant, chatbot["id"], path)
    done = wait_for_document(client, tenant, chatbot["id"], doc["id"])
    assert done["status"] == "ready", done
    return done


def test_passages_are_written_on_ingest_and_removed_with_the_document(
    client, runtime, tmp_path, db_session
):
    tenant = register(client)
    chatbot = create_chatbot(client, tenant)
    doc = _ready(client, tenant, chatbot, docgen.make_txt(tmp_path / "m.txt", "\n\n".join(MANUAL)))
    rows = _passages(db_session, document_id=uuid.UUID(doc["id"]))
    assert len(rows) == doc["chunk_count"] >= 1
    assert [r.chunk_index for r in rows] == list(range(doc["chunk_count"]))
    assert all(r.chatbot_id == uuid.UUID(chatbot["id"]) for r in rows)
    assert "QX-48213-B" in " ".join(r.text for r in rows)
    # Each passage is the text of the vector with the same chunk index.
    stored = runtime.store.count(uuid.UUID(chatbot["id"]), uuid.UUID(doc["id"]))
    assert stored == len(rows)

    response = client.delete(
        f"/api/chatbots/{chatbot['id']}/documents/{doc['id']}", headers=tenant.headers
    )
    assert response.status_code == 204
    assert _passages(db_session, document_id=uuid.UUID(doc["id"])) == []
    lexical = client.patch(
        f"/api/chatbots/{chatbot['id']}", json={"retrieval_mode": "lexical"}, headers=tenant.headers
    )
    assert lexical.status_code == 200 and lexical.json()["retrieval_mode"] == "lexical"
    answer = _ask(client, chatbot, "QX-48213-B")
    assert answer.status_code == 200 and answer.json()["sources"] == []


def test_reindex_empties_the_lexical_index_and_the_worker_rebuilds_it(
    client, paused_workers, tmp_path, db_session
):
    runtime: Runtime = paused_workers
    tenant = register(client)
    chatbot = create_chatbot(client, tenant, retrieval_mode="lexical")
    doc = upload(client, tenant, chatbot["id"], docgen.make_txt(tmp_path / "m.txt", MANUAL[3]))
    worker = IngestWorker(
        runtime.settings, get_database(), runtime.embedder, runtime.store, runtime.sandbox, "t"
    )
    assert worker.run_once()
    before = _passages(db_session, chatbot_id=uuid.UUID(chatbot["id"]))
    assert [r.text for r in before] == [MANUAL[3]]

    response = client.post(f"/api/chatbots/{chatbot['id']}/reindex", headers=tenant.headers)
    assert response.status_code == 202
    assert _passages(db_session, chatbot_id=uuid.UUID(chatbot["id"])) == []
    assert _ask(client, chatbot, "gasket QX-48213-B").json()["sources"] == []

    assert worker.run_once()
    after = _passages(db_session, chatbot_id=uuid.UUID(chatbot["id"]))
    assert [r.text for r in after] == [MANUAL[3]]
    sources = _ask(client, chatbot, "gasket QX-48213-B").json()["sources"]
    assert [s["document_id"] for s in sources] == [doc["id"]]
    assert sources[0]["retrievers"] == ["lexical", "exact"]


def test_hybrid_returns_the_document_only_an_exact_code_matches(client, runtime, tmp_path):
    tenant = register(client)
    chatbot = create_chatbot(client, tenant, top_k=1, retrieval_mode="hybrid")
    documents = {}
    for i, line in enumerate(MANUAL):
        documents[line] = _ready(
            client, tenant, chatbot, docgen.make_txt(tmp_path / f"{i}.txt", line)
        )
    coded = documents[MANUAL[3]]

    response = _ask(client, chatbot, "QX-48213-B")
    assert response.status_code == 200, response.text
    (source,) = response.json()["sources"]
    assert source["document_id"] == coded["id"]
    # Both retrievers ranked it (dense ranks all six), lexical first, and it holds the
    # question's code, which no other passage holds (the exact ranking's only passage):
    # 1/(60+r) + 1/(60+1) + 1/(60+1).
    assert source["retrievers"] == ["dense", "lexical", "exact"]
    assert round(2 / 61 + 1 / 66, 4) <= source["score"] <= round(3 / 61, 4)

    dense = client.patch(
        f"/api/chatbots/{chatbot['id']}", json={"retrieval_mode": "dense"}, headers=tenant.headers
    )
    assert dense.status_code == 200
    (source,) = _ask(client, chatbot, "QX-48213-B").json()["sources"]
    assert source["retrievers"] == ["dense"] and -1.0 <= source["score"] <= 1.0
    lexical = client.patch(
        f"/api/chatbots/{chatbot['id']}",
        json={"retrieval_mode": "lexical", "top_k": 5},
        headers=tenant.headers,
    )
    assert lexical.status_code == 200
    # No other document shares a word with the code.
    sources = _ask(client, chatbot, "QX-48213-B").json()["sources"]
    assert [(s["document_id"], s["retrievers"]) for s in sources] == [
        (coded["id"], ["lexical", "exact"])
    ]


def test_a_chatbot_never_matches_another_tenants_words(client, runtime, tmp_path):
    a, b = register(client), register(client)
    bot_a = create_chatbot(client, a, retrieval_mode="lexical")
    bot_b = create_chatbot(client, b, retrieval_mode="lexical")
    _ready(client, a, bot_a, docgen.make_txt(tmp_path / "a.txt", MANUAL[0]))
    doc_b = _ready(
        client, b, bot_b, docgen.make_txt(tmp_path / "b.txt", "Quokkafrost sorbet is sold out.")
    )

    own = _ask(client, bot_b, "quokkafrost").json()["sources"]
    assert [s["document_id"] for s in own] == [doc_b["id"]]
    foreign = _ask(client, bot_a, "quokkafrost")
    assert foreign.status_code == 200
    assert foreign.json()["sources"] == []
    hybrid = client.patch(
        f"/api/chatbots/{bot_a['id']}", json={"retrieval_mode": "hybrid"}, headers=a.headers
    )
    assert hybrid.status_code == 200
    sources = _ask(client, bot_a, "quokkafrost sorbet").json()["sources"]
    assert doc_b["id"] not in {s["document_id"] for s in sources}
    assert all(s["retrievers"] == ["dense"] for s in sources)


def test_retrieval_fields_are_validated_and_a_new_language_reindexes_words(
    client, runtime, tmp_path, db_session, is_postgres
):
    tenant = register(client)
    for body in ({"retrieval_mode": "bm25"}, {"language": "klingon"}, {"language": 7}):
        response = client.post("/api/chatbots", json={"name": "x", **body}, headers=tenant.headers)
        assert response.status_code == 422, body
        assert response.json()["code"] == "validation_error"
    chatbot = create_chatbot(client, tenant, language="english", retrieval_mode="lexical")
    assert (chatbot["language"], chatbot["retrieval_mode"]) == ("english", "lexical")
    doc = _ready(
        client, tenant, chatbot, docgen.make_txt(tmp_path / "r.txt", "The keepers were running.")
    )
    # English stems "runs" to the word the document holds; "simple" does not.
    found = _ask(client, chatbot, "runs").json()["sources"]
    if is_postgres:
        assert [s["document_id"] for s in found] == [doc["id"]]
    response = client.patch(
        f"/api/chatbots/{chatbot['id']}", json={"language": None}, headers=tenant.headers
    )
    assert response.status_code == 200 and response.json()["language"] is None
    assert _ask(client, chatbot, "runs").json()["sources"] == []
    if is_postgres:
        (row,) = _passages(db_session, chatbot_id=uuid.UUID(chatbot["id"]))
        lexemes = db_session.scalar(
            text("SELECT CAST(tsv AS text) FROM passages WHERE id = :i"), {"i": row.id}
        )
        assert "'running'" in lexemes and "'run'" not in lexemes
    count = db_session.scalar(
        select(func.count()).select_from(Passage).where(Passage.document_id == uuid.UUID(doc["id"]))
    )
    assert count == 1


def test_a_rare_code_lifts_its_passage_above_look_alikes_both_retrievers_rank(
    client, runtime, tmp_path
):
    # Every line talks about the pump; one holds the error code. The question's other words
    # ("pump", "stop", "blinking") match the look-alike lines in both retrievers, which the
    # fusion of those two alone ranks above the line only the code matches (checked: with
    # RETRIEVAL_EXACT_MAX_PASSAGES=0 the code's line is not first).
    tenant = register(client)
    chatbot = create_chatbot(client, tenant, top_k=3, retrieval_mode="hybrid")
    lines = [
        f"The pump stops and the light keeps blinking when setting {n} is wrong." for n in range(6)
    ] + ["E-7731 means the filter is blocked."]
    docs = [
        _ready(client, tenant, chatbot, docgen.make_txt(tmp_path / f"{i}.txt", line))
        for i, line in enumerate(lines)
    ]
    doc = docs[-1]
    response = _ask(client, chatbot, "Why does the pump stop with the light blinking E-7731?")
    assert response.status_code == 200, response.text
    first = response.json()["sources"][0]
    assert first["document_id"] == doc["id"]
    assert first["text"] == "E-7731 means the filter is blocked."
    assert "exact" in first["retrievers"]


def test_sources_carry_the_heading_path_of_structured_documents(client, runtime, tmp_path):
    tenant = register(client)
    chatbot = create_chatbot(client, tenant, top_k=1, retrieval_mode="lexical")
    path = tmp_path / "faq.md"
    path.write_text(
        "# Returns\n\n## Refunds\n\nMoney goes back to the card within 14 days.\n\n"
        "# Shipping\n\nParcels leave the warehouse every weekday.\n",
        encoding="utf-8",
    )
    doc = _ready(client, tenant, chatbot, path)
    assert doc["chunk_count"] == 2
    (source,) = _ask(client, chatbot, "when is my money back on the card").json()["sources"]
    assert source["heading"] == "Returns > Refunds"
    assert source["text"] == "Returns > Refunds\n\nMoney goes back to the card within 14 days."
    # The vector store keeps the heading beside the vector too.
    dense = client.patch(
        f"/api/chatbots/{chatbot['id']}", json={"retrieval_mode": "dense"}, headers=tenant.headers
    )
    assert dense.status_code == 200
    (source,) = _ask(client, chatbot, "parcels warehouse weekday").json()["sources"]
    assert source["heading"] == "Shipping" and source["retrievers"] == ["dense"]

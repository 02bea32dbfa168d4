"""The lexical index on both databases: PostgreSQL (tsvector + GIN) and SQLite (FTS5, the
zero-setup default), built by the migrations, through the domain functions the worker, the
query path and reindex use."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import delete, text, update

from app.chatbots.schemas import ChatbotUpdate
from app.chatbots.service import update_chatbot
from app.core.config import Settings
from app.core.db import Database, get_database
from app.documents.passages import (
    Lookup,
    PassageText,
    count_passages,
    exact_matches,
    exact_terms,
    lexical_index_problem,
    lookup,
    replace_passages,
    search,
)
from app.documents.service import reindex
from app.models import Chatbot, Customer, Document, DocumentStatus
from tests.conftest import run_alembic


@pytest.fixture(params=["postgresql", "sqlite"])
def db(request: pytest.FixtureRequest, tmp_path: Path, is_postgres: bool) -> Iterator[Database]:
    """The suite's database for "postgresql" (skipped when the suite runs on SQLite, which
    the other parameter covers), or a fresh SQLite file built by `alembic upgrade head`."""
    if request.param == "postgresql":
        if not is_postgres:
            pytest.skip("the suite runs on SQLite")
        yield get_database()
        return
    url = f"sqlite:///{tmp_path / 'lexical.db'}"
    run_alembic(url, "upgrade", "head")
    database = Database(Settings(DATABASE_URL=url, _env_file=None))  # type: ignore[call-arg]
    try:
        yield database
    finally:
        database.dispose()


def _chatbot(db: Database, **fields: object) -> uuid.UUID:
    with db.session() as session:
        customer = Customer(name="c", contact_email=f"{uuid.uuid4().hex}@example.com")
        session.add(customer)
        session.flush()
        chatbot = Chatbot(customer_id=customer.id, name="b", api_key=uuid.uuid4().hex, **fields)
        session.add(chatbot)
        session.flush()
        return chatbot.id


def _document(
    db: Database, chatbot_id: uuid.UUID, texts: list[str], ready: bool = True
) -> uuid.UUID:
    with db.session() as session:
        document = Document(
            chatbot_id=chatbot_id,
            filename="manual.txt",
            file_path="x",
            file_type="txt",
            status=DocumentStatus.ready if ready else DocumentStatus.processing,
            chunk_count=len(texts),
        )
        session.add(document)
        session.flush()
        replace_passages(
            session,
            chatbot_id,
            document.id,
            [PassageText(i, None, t) for i, t in enumerate(texts)],
        )
        return document.id


def _found(db: Database, chatbot_id: uuid.UUID, question: str, limit: int = 10) -> list[str]:
    with db.session() as session:
        return [hit.text for hit in search(session, chatbot_id, question, None, limit)]


def test_database_has_a_working_lexical_engine(db: Database) -> None:
    assert lexical_index_problem(db) is None


def test_search_ranks_matches_inside_the_chatbot_only(db: Database) -> None:
    a, b = _chatbot(db), _chatbot(db)
    doc = _document(
        db,
        a,
        [
            "Replacement gasket: order part QX-48213-B.",
            "The motor has 1200 watts.",
            "Clean the jug, the lid and the gasket with warm water.",
        ],
    )
    _document(db, b, ["Quokkafrost sorbet and a gasket QX-48213-B of tenant B."])

    assert (
        _found(db, a, "Which gasket is QX-48213-B?")[0]
        == "Replacement gasket: order part QX-48213-B."
    )
    assert _found(db, a, "quokkafrost sorbet") == []
    assert _found(db, b, "quokkafrost") == [
        "Quokkafrost sorbet and a gasket QX-48213-B of tenant B."
    ]
    # Punctuation and query syntax in a question are words, not operators.
    assert _found(db, a, 'motor" OR NOT * (watts') == ["The motor has 1200 watts."]
    assert _found(db, a, "?!") == []
    with db.session() as session:
        (hit,) = search(session, a, "1200 watts", None, 10)
    assert hit.id == f"{doc}:1" and hit.retrievers == ("lexical",)
    assert hit.metadata == {
        "document_id": str(doc),
        "chatbot_id": str(a),
        "filename": "manual.txt",
        "chunk_index": 1,
    }


def test_passages_are_replaced_removed_with_their_document_and_emptied_by_reindex(
    db: Database,
) -> None:
    chatbot_id = _chatbot(db)
    doc = _document(db, chatbot_id, ["Old text about zebras."])
    with db.session() as session:  # a retried job writes again
        replace_passages(session, chatbot_id, doc, [PassageText(0, 2, "New text about okapis.")])
    assert _found(db, chatbot_id, "zebras") == []
    assert _found(db, chatbot_id, "okapis") == ["New text about okapis."]
    pending = _document(db, chatbot_id, ["Okapis in a document still processing."], ready=False)
    assert _found(db, chatbot_id, "okapis") == ["New text about okapis."]

    with db.session() as session:
        chatbot = session.get(Chatbot, chatbot_id)
        assert chatbot is not None
        assert reindex(session, chatbot) == 2
    with db.session() as session:
        assert count_passages(session, chatbot_id) == 0
        replace_passages(session, chatbot_id, doc, [PassageText(0, None, "Rebuilt okapis.")])
        session.execute(
            update(Document)
            .where(Document.chatbot_id == chatbot_id)
            .values(status=DocumentStatus.ready)
        )
    assert _found(db, chatbot_id, "okapis") == ["Rebuilt okapis."]

    with db.session() as session:
        session.execute(delete(Document).where(Document.id.in_([doc, pending])))
    assert _found(db, chatbot_id, "okapis") == []
    with db.session() as session:
        assert count_passages(session, chatbot_id) == 0
        if db.engine.dialect.name == "sqlite":
            # The FTS5 index agrees with its content table after the cascaded deletes.
            session.execute(
                text("INSERT INTO passages_fts(passages_fts) VALUES ('integrity-check')")
            )


def test_the_chatbots_language_stems_on_postgresql(db: Database) -> None:
    chatbot_id = _chatbot(db, language="german")
    _document(db, chatbot_id, ["Die Bergbahnen fahren im Sommer zum Gipfel."])
    german = _found(db, chatbot_id, "Bergbahn")
    with db.session() as session:
        chatbot = session.get(Chatbot, chatbot_id)
        assert chatbot is not None
        update_chatbot(session, chatbot, ChatbotUpdate(language=None))
    simple = _found(db, chatbot_id, "Bergbahn")
    if db.engine.dialect.name == "postgresql":
        assert german == ["Die Bergbahnen fahren im Sommer zum Gipfel."]
        assert simple == []
    else:  # FTS5's unicode61 tokenizer does not stem, whatever the language
        assert german == simple == []
    assert _found(db, chatbot_id, "bergbahnen") == ["Die Bergbahnen fahren im Sommer zum Gipfel."]


def test_a_rare_word_outweighs_common_ones(db: Database) -> None:
    # Without inverse document frequency, the passages repeating "entry" would come first.
    a = _chatbot(db)
    common = [f"Entry {n}: entry entry entry, one more entry of the register." for n in range(8)]
    _document(db, a, [*common, "Geoname 2029969 belongs to Hokkaido."])
    assert _found(db, a, "Which entry has 2029969?")[0] == ("Geoname 2029969 belongs to Hokkaido.")


def test_a_document_still_processing_neither_matches_nor_weighs(db: Database) -> None:
    # "zeta" is the rarer word in the ready document. A document being embedded that repeats
    # it must not make it common: its passages are not searched at all (on PostgreSQL; on
    # SQLite FTS5 counts its statistics over the whole table, so only the first check holds).
    a = _chatbot(db)
    _document(db, a, ["Zeta valves are inspected yearly.", "Omega pumps run.", "Omega pumps."])
    _document(db, a, [f"Zeta zeta zeta, note {n}." for n in range(12)], ready=False)
    found = _found(db, a, "zeta omega")
    assert len(found) == 3 and not any("note" in t for t in found)
    if db.engine.dialect.name == "postgresql":
        assert found[0] == "Zeta valves are inspected yearly."


def test_stop_words_do_not_bury_a_name(db: Database) -> None:
    a = _chatbot(db)
    filler = [
        f"Who is what it is: that is what it was, and who or what it is {n}." for n in range(8)
    ]
    _document(db, a, [*filler, "Kevin repairs the boats."])
    assert _found(db, a, "Who or what is Kevin?")[0] == "Kevin repairs the boats."
    # A question of stop words alone is still searched.
    assert len(_found(db, a, "who is it")) == 8


def test_exact_terms_are_codes_numbers_and_names() -> None:
    assert exact_terms("Which entry has Geoname ID 2029969?") == ["geoname", "id", "2029969"]
    assert exact_terms("what does error e1234 mean") == ["e1234"]
    assert exact_terms("Kevin, who is he?") == []  # a capital at the start says nothing
    assert exact_terms("how do I reset the machine?") == []


def test_exact_matches_are_the_passages_of_rare_exact_terms(db: Database) -> None:
    a, b = _chatbot(db), _chatbot(db)
    common = [f"Setting {n} of the Pump menu changes the flow." for n in range(5)]
    doc = _document(db, a, [*common, "Error E4711 means the Pump filter is blocked."])
    _document(db, b, ["Error E4711 of tenant B."])
    with db.session() as session:
        (hit,) = exact_matches(session, a, "What does the Pump say with E4711?", None)
        # "pump" is in six passages: not rare, no passage of it comes first.
        assert exact_matches(session, a, "Why does the Pump stop?", None) == []
        assert exact_matches(session, a, "what is e4711", None) == [hit]
    assert hit.id == f"{doc}:5" and hit.text == "Error E4711 means the Pump filter is blocked."


def test_one_lookup_gives_the_ranking_the_exact_terms_and_the_ready_documents(
    db: Database,
) -> None:
    a, b = _chatbot(db), _chatbot(db)
    common = [f"Setting {n} of the Pump menu changes the flow." for n in range(5)]
    doc = _document(db, a, [*common, "Error E4711 means the Pump filter is blocked."])
    waiting = _document(db, a, ["Error E4711 in a document still processing."], ready=False)
    other = _document(db, b, ["Error E4711 of tenant B."])
    unknown = uuid.uuid4()
    question = "What does the Pump say with E4711?"
    with db.session() as session:
        found = lookup(session, a, question, None, 10, 3, {doc, waiting, other, unknown})
        # The same as the three separate reads.
        assert found.ranked == search(session, a, question, None, 10)
        assert found.exact == exact_matches(session, a, question, None, 3)
        assert found.ready == {doc}
        assert [h.id for h in found.exact] == [f"{doc}:5"]
        assert len(found.ranked) == 6 and found.ranked[0].id == f"{doc}:5"
        # Parts left out: no exact term, nothing to check, no word at all.
        plain = lookup(session, a, "how does the flow change", None, 10, 3, set())
        assert plain.exact == [] and plain.ready == set() and len(plain.ranked) == 5
        assert lookup(session, a, "E4711", None, 10, 0, set()).exact == []
        assert lookup(session, a, "?!", None, 10, 3, {doc}) == Lookup([], [], {doc})
        assert lookup(session, a, "?!", None, 10, 3, set()) == Lookup([], [], set())


def test_a_passage_keeps_its_heading(db: Database) -> None:
    a = _chatbot(db)
    with db.session() as session:
        document = Document(
            chatbot_id=a, filename="faq.md", file_path="x", file_type="md", status="ready"
        )
        session.add(document)
        session.flush()
        replace_passages(
            session,
            a,
            document.id,
            [
                PassageText(
                    0, None, "Returns > Refunds\n\nMoney back in 14 days.", "Returns > Refunds"
                )
            ],
        )
    with db.session() as session:
        (hit,) = search(session, a, "refunds", None, 5)
    assert hit.metadata["heading"] == "Returns > Refunds"


def test_quotes_and_backslashes_in_a_question_are_words(db: Database) -> None:
    a = _chatbot(db)
    _document(db, a, ["O'Brien keeps the spare keys.", "The path is C:\\Tools\\pump."])
    assert _found(db, a, "Where does O'Brien keep the 'keys'?")[0] == (
        "O'Brien keeps the spare keys."
    )
    assert _found(db, a, "C:\\Tools\\pump \\' \\\\ ''")[0] == "The path is C:\\Tools\\pump."
    with db.session() as session:
        assert exact_matches(session, a, "What is \\'QX\\'?", None) == []


def test_exact_matches_can_be_turned_off(db: Database) -> None:
    a = _chatbot(db)
    _document(db, a, ["Error E4711 means the filter is blocked."])
    with db.session() as session:
        assert len(exact_matches(session, a, "what is E4711", None)) == 1
        assert exact_matches(session, a, "what is E4711", None, max_passages=0) == []

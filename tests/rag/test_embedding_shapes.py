"""The shapes an exported model is run on: batches cut into powers of two, padded to a multiple
of LENGTH_STEP tokens, so a long-lived process sees a bounded set of input shapes; and the
passages' own compiled model, so questions never queue behind ingestion."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from app.rag.embedding_backends import (
    LENGTH_STEP,
    ExportedEncoder,
    Variant,
    pad_length,
    power_of_two_batches,
)
from app.rag.embeddings import Embedder


@pytest.mark.parametrize(
    ("count", "batch_size", "expected"),
    [
        (0, 32, []),
        (1, 32, [1]),
        (27, 32, [16, 8, 2, 1]),
        (32, 32, [32]),
        (70, 32, [32, 32, 4, 2]),
        (30, 24, [16, 8, 4, 2]),
        (5, 1, [1, 1, 1, 1, 1]),
    ],
)
def test_batches_are_powers_of_two_within_the_batch_size(count, batch_size, expected):
    assert power_of_two_batches(count, batch_size) == expected


def test_padding_rounds_up_to_the_step_and_never_past_the_maximum():
    ids = np.array([[101, 7, 8, 102], [101, 9, 102, 0]], dtype=np.int64)
    inputs = {"input_ids": ids, "attention_mask": (ids != 0).astype(np.int64)}
    padded = pad_length(inputs, 32, 256, pad_id=0)
    assert padded["input_ids"].shape == padded["attention_mask"].shape == (2, 32)
    assert (padded["input_ids"][:, :4] == ids).all() and (padded["input_ids"][:, 4:] == 0).all()
    assert padded["attention_mask"].sum() == inputs["attention_mask"].sum()
    assert pad_length(inputs, 32, 20, pad_id=0)["input_ids"].shape == (2, 20)
    # Already at a step, or longer than the maximum: unchanged.
    assert pad_length(inputs, 4, 256, pad_id=0) is inputs
    assert pad_length(inputs, 32, 3, pad_id=0) is inputs


@pytest.fixture(scope="module")
def sentence_model():  # type: ignore[no-untyped-def]
    return Embedder("minilm").model


def test_texts_of_every_length_reach_the_model_in_few_shapes(sentence_model):
    shapes: set[tuple[int, int]] = set()

    def runner(inputs: dict[str, np.ndarray]) -> np.ndarray:
        shapes.add(inputs["input_ids"].shape)
        assert inputs["attention_mask"].shape == inputs["input_ids"].shape
        # Each row's vector says how many real tokens it had (padding is masked out).
        tokens = inputs["attention_mask"].sum(axis=1).astype(np.float32)
        return np.stack([tokens, np.full_like(tokens, 1000.0)], axis=1)

    encoder = ExportedEncoder(sentence_model, runner, Variant("openvino", "int8"), None)  # type: ignore[arg-type]
    rng = np.random.default_rng(5)
    texts = [" ".join(["word"] * int(n)) for n in rng.integers(1, 300, size=400)]
    vectors = []
    for start in range(0, len(texts), 37):  # turns of every size, as the workers send them
        vectors.extend(encoder.encode(texts[start : start + 37], batch_size=32))
    max_length = sentence_model.max_seq_length
    allowed_lengths = {*range(LENGTH_STEP, max_length + 1, LENGTH_STEP), max_length}
    assert {b for b, _ in shapes} <= {1, 2, 4, 8, 16, 32}
    assert {n for _, n in shapes} <= allowed_lengths
    assert len(shapes) <= 6 * len(allowed_lengths)
    # Every vector is its own text's, in the input order, whatever padding it got.
    expected = [
        len(sentence_model.tokenizer(t, truncation=True, max_length=max_length)["input_ids"])
        for t in texts
    ]
    got = [round(float(v[0] / v[1] * 1000.0)) for v in vectors]
    assert got == expected


def test_a_question_does_not_wait_behind_a_batch_of_passages(sentence_model):
    # One compiled OpenVINO model runs one request at a time: passages get a runner of their
    # own, so a question embeds while a batch of passages is still running.
    inside, release = threading.Event(), threading.Event()
    made: list[str] = []

    def query_runner(inputs: dict[str, np.ndarray]) -> np.ndarray:
        return np.ones((inputs["input_ids"].shape[0], 4), dtype=np.float32)

    def passage_runner(inputs: dict[str, np.ndarray]) -> np.ndarray:
        inside.set()
        assert release.wait(30), "the test never released the passages"
        return np.ones((inputs["input_ids"].shape[0], 4), dtype=np.float32)

    def make_passage_runner():  # type: ignore[no-untyped-def]
        made.append(threading.current_thread().name)
        return passage_runner

    encoder = ExportedEncoder(
        sentence_model,
        query_runner,
        Variant("openvino", "int8"),
        None,  # type: ignore[arg-type]
        passage_runner=make_passage_runner,
    )
    with ThreadPoolExecutor(1, thread_name_prefix="ingest") as pool:
        passages = pool.submit(encoder.encode, ["a passage"] * 8, 32, passages=True)
        assert inside.wait(30)
        question = encoder.encode(["a question"], 32)  # returns while the passages run
        assert question.shape == (1, 4)
        assert not passages.done()
        release.set()
        assert passages.result(30).shape == (8, 4)
    # Made once, lazily, by the ingesting thread (whose lowered priority its threads take).
    assert made == ["ingest_0"]
    encoder.encode(["another passage"], 32, passages=True)
    assert made == ["ingest_0"]


def test_passages_share_the_model_when_their_own_cannot_be_made(sentence_model, caplog):
    calls: list[str] = []

    def query_runner(inputs: dict[str, np.ndarray]) -> np.ndarray:
        calls.append("query")
        return np.ones((inputs["input_ids"].shape[0], 4), dtype=np.float32)

    def cannot_compile():  # type: ignore[no-untyped-def]
        raise RuntimeError("out of memory compiling the model")

    encoder = ExportedEncoder(
        sentence_model,
        query_runner,
        Variant("openvino", "int8"),
        None,  # type: ignore[arg-type]
        passage_runner=cannot_compile,
    )
    with caplog.at_level("WARNING", logger="app.rag.embeddings"):
        vectors = encoder.encode(["a passage", "another"], 32, passages=True)
    assert vectors.shape == (2, 4)
    assert calls == ["query"]  # the questions' model served the passages
    assert "passages share the questions' compiled model: out of memory" in caplog.text

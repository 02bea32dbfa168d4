"""The ONNX Runtime and OpenVINO backends against torch, with the packaged MiniLM: real exports
into a temporary cache folder, real quantization, real fallbacks."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from app.core.config import Settings
from app.rag import embedding_backends
from app.rag.embedding_backends import Variant, cache_folder, calibration_passages
from app.rag.embeddings import Embedder

REPO = Path(__file__).resolve().parents[2]
PASSAGES = [
    "The shop opens at nine in the morning and closes at six in the evening.",
    "Refunds are paid within fourteen days to the card used for the purchase.",
    "Der Kundendienst ist montags bis freitags von 8 bis 17 Uhr erreichbar.",
    "Die Lieferung erfolgt innerhalb von drei Werktagen nach Zahlungseingang.",
    "Mozilla is a free-software community created in 1998 by members of Netscape.",
    "short",
]
QUESTIONS = ["When does the shop open?", "Wie lange dauert die Lieferung?"]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("embedding_cache")


@pytest.fixture(scope="module")
def torch_vectors() -> np.ndarray:
    embedder = Embedder("minilm")
    assert embedder.backend == "torch"
    return np.asarray(embedder.embed_passages(PASSAGES + QUESTIONS))


def _vectors(embedder: Embedder) -> np.ndarray:
    passages = embedder.embed_passages(PASSAGES)
    questions = [embedder.embed_query(q) for q in QUESTIONS]
    return np.asarray(passages + questions)


@pytest.mark.parametrize(
    ("backend", "quantize", "min_cosine", "batch_cosine"),
    [
        ("onnx", "none", 0.99999, 0.9999),
        ("openvino", "none", 0.99999, 0.9999),
        # Dynamic quantization scales activations per batch: a batch changes the vectors a bit.
        ("onnx", "int8", 0.97, 0.98),
        ("openvino", "int8", 0.98, 0.9999),
    ],
)
def test_each_backend_agrees_with_torch(
    cache_dir, torch_vectors, backend, quantize, min_cosine, batch_cosine
):
    embedder = Embedder("minilm", backend=backend, quantize=quantize, cache_dir=cache_dir)
    embedder.load()
    assert embedder.backend == Variant(backend, quantize).label
    vectors = _vectors(embedder)
    assert vectors.shape == torch_vectors.shape == (len(PASSAGES) + len(QUESTIONS), 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    cosines = (vectors * torch_vectors).sum(axis=1)
    if quantize == "none":
        assert np.abs(vectors - torch_vectors).max() < 1e-4
    else:
        assert cosines.mean() > 0.99, cosines
    assert cosines.min() > min_cosine, cosines
    # The ranking a question sees is torch's: its best passage is the same.
    # One batch of questions: the same vectors as one at a time.
    together = np.asarray(embedder.embed_queries(QUESTIONS))
    assert (together * vectors[-2:]).sum(axis=1).min() > batch_cosine
    assert list(np.argmax(vectors[-2:] @ vectors[:-2].T, axis=1)) == list(
        np.argmax(torch_vectors[-2:] @ torch_vectors[:-2].T, axis=1)
    )


def test_the_cached_export_is_reused_not_rebuilt(cache_dir, monkeypatch):
    first = Embedder("minilm", backend="onnx", cache_dir=cache_dir)
    first.load()
    assert first.backend == "onnx"
    folder = cache_folder(cache_dir, first.model_name, first._source, Variant("onnx", "none"))
    stamp = (folder / "meta.json").stat().st_mtime_ns

    def no_export(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("exported a second time")

    monkeypatch.setattr(embedding_backends, "_export", no_export)
    second = Embedder("minilm", backend="onnx", cache_dir=cache_dir)
    exported, built = second.build_export(Variant("onnx", "none"))
    assert built is False and exported.folder == folder
    second.load()
    assert second.backend == "onnx"
    assert (folder / "meta.json").stat().st_mtime_ns == stamp
    assert json.loads((folder / "meta.json").read_text())["variant"] == "onnx"
    assert np.allclose(second.embed_query("hello"), first.embed_query("hello"), atol=1e-6)


def test_a_backend_that_cannot_load_logs_one_line_and_serves_torch(tmp_path, torch_vectors, caplog):
    embedder = Embedder("minilm", backend="openvino", quantize="int8", cache_dir=tmp_path)
    # A damaged cached export: present (not rebuilt) but unreadable by any runtime.
    folder = cache_folder(tmp_path, embedder.model_name, embedder._source, embedder.requested)
    folder.mkdir(parents=True)
    (folder / "meta.json").write_text("{}")
    (folder / "model.xml").write_text("<not a model")
    (folder / "model.bin").write_bytes(b"\0" * 16)
    with caplog.at_level(logging.WARNING, logger="app.rag.embeddings"):
        embedder.load()
    lines = [r for r in caplog.records if r.name == "app.rag.embeddings"]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    message = lines[0].getMessage()
    assert lines[0].levelno == logging.WARNING
    assert message.startswith("embedding backend openvino-int8 unavailable, using torch: ")
    assert "\n" not in message
    assert embedder.backend == "torch" and embedder.status() == "ok"
    assert np.allclose(_vectors(embedder), torch_vectors, atol=1e-6)


def test_settings_refuse_an_unknown_backend_and_int8_on_torch():
    with pytest.raises(ValidationError, match="EMBEDDING_BACKEND") as bad:
        Settings(EMBEDDING_BACKEND="tensorrt", _env_file=None)
    assert "'torch', 'onnx' or 'openvino'" in str(bad.value)
    with pytest.raises(ValidationError, match="EMBEDDING_QUANTIZE"):
        Settings(EMBEDDING_BACKEND="onnx", EMBEDDING_QUANTIZE="int4", _env_file=None)
    with pytest.raises(ValidationError, match="EMBEDDING_QUANTIZE=int8 needs"):
        Settings(EMBEDDING_BACKEND="torch", EMBEDDING_QUANTIZE="int8", _env_file=None)
    fine = Settings(EMBEDDING_BACKEND="onnx", EMBEDDING_QUANTIZE="int8", _env_file=None)
    assert (fine.EMBEDDING_BACKEND, fine.EMBEDDING_QUANTIZE) == ("onnx", "int8")


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_a_bad_backend_setting_stops_the_cli_with_a_clear_error():
    env = {**os.environ, "EMBEDDING_BACKEND": "cuda"}
    result = _cli("embeddings", "build", "--help", env=env)
    assert result.returncode == 1
    assert result.stderr.startswith("error: settings: EMBEDDING_BACKEND: ")


def test_the_cli_builds_the_export_once(tmp_path):
    env = {**os.environ, "EMBEDDING_CACHE_DIR": str(tmp_path)}
    help_text = _cli("embeddings", "build", "--help", env=env)
    assert help_text.returncode == 0 and "--backend" in help_text.stdout
    first = _cli(
        "embeddings", "build", "--backend", "onnx", "--quantize", "none", "--json", env=env
    )
    assert first.returncode == 0, first.stderr
    built = json.loads(first.stdout)
    assert built["built"] is True and built["variant"] == "onnx"
    assert Path(built["path"]).parent.parent == tmp_path
    assert (Path(built["path"]) / "model.onnx").is_file()
    assert built["min_cosine_to_torch"] > 0.9999
    again = _cli("embeddings", "build", "--backend", "onnx", "--quantize", "none", env=env)
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("already built: onnx of sentence-transformers/all-MiniLM-L6-v2")
    refused = _cli("embeddings", "build", "--backend", "torch", env=env)
    assert refused.returncode == 1
    assert refused.stderr == "error: give --backend onnx|openvino and --quantize none|int8.\n"


def test_the_calibration_set_is_shipped_and_multilingual():
    passages = calibration_passages()
    assert len(passages) >= 150
    assert any(" der " in p for p in passages) and any(" the " in p for p in passages)


def test_passages_get_their_own_compiled_model_only_where_questions_are_answered(cache_dir):
    api = Embedder("minilm", backend="openvino", quantize="int8", cache_dir=cache_dir)
    worker = Embedder(
        "minilm",
        backend="openvino",
        quantize="int8",
        cache_dir=cache_dir,
        separate_passage_model=False,  # python -m app.ingest: passages only
    )
    for embedder in (api, worker):
        embedder.load()
        assert embedder.backend == "openvino-int8"
    as_passages = np.asarray(api.embed_passages(PASSAGES))
    assert api._exported is not None and worker._exported is not None
    # The API process made a second compiled model for passages, and it gives the same
    # vectors as the questions' model.
    assert api._exported.passages_runner() is not api._exported.runner
    as_questions = np.asarray(api._exported.encode(PASSAGES, api.batch_size))
    assert np.abs(as_passages - as_questions).max() < 1e-5
    # The worker keeps one.
    worker.embed_passages(PASSAGES)
    assert worker._exported.passages_runner() is worker._exported.runner

"""Retrieval quality through the real query path, per retrieval mode, against the model's ceiling.

One server (uvicorn subprocess, SQLite with FTS5 or ``--postgres``, embedded Chroma, all in a
temporary folder, no LLM: extractive mode, only ``sources`` are read). Per language (en, de)
a chatbot gets ``xquad/derived/articles.<lang>.md`` (48 articles, 240 passages) and answers
every question (1190) through ``POST /api/public/{id}/query`` in each retrieval mode (dense,
lexical, hybrid: the chatbot's ``retrieval_mode`` switched between passes; with
``--postgres`` the chatbot's ``language`` is english or german); a third chatbot gets the documents
of the exact-match set (``bench/exact_questions.jsonl``, built by
``bench/exact_questions.py`` from ../shared/corpus) and answers those questions the same way.
Reported per mode: answer-in-context@1/@5/@10 (the share of questions whose gold answer string
appears in one of the first k sources) and MRR@10; and p50 latency through the API, one
question at a time, the modes taking turns every 10 questions.

Beside it, the ceiling: the same model, in this process after the server stopped, embedding the
240 gold passages themselves and each question, exact cosine top-k with numpy, the same metric.
Targets (printed PASS/FAIL): hybrid@5 / ceiling@5 >= 1.00 (en) and >= 1.10 (de), exact-match
hybrid@5 >= 0.95, p50 hybrid - dense <= 5 ms.

    .venv/bin/python bench/retrieval.py                       # en + de + exact-match, 3 modes
    .venv/bin/python bench/retrieval.py --lang de --modes dense,hybrid --json out.json
    .venv/bin/python bench/retrieval.py --env CHUNK_SIZE=128 --env CHUNK_OVERLAP=16
    .venv/bin/python bench/retrieval.py --limit 200           # the first 200 questions only
    .venv/bin/python bench/retrieval.py --chunking-study 128,200   # + other chunkings, offline
    .venv/bin/python bench/retrieval.py --env CHUNKING=recursive  # the pipeline, old chunking

The chatbot's ``top_k`` is the largest k reported; smaller k are prefixes of the returned list.
After the run the script reads the hybrid chatbot's chunks back from Chroma and explains each
question it lost against the ceiling (answer split by a chunk boundary, or in a chunk ranked
too low). ``--chunking-study`` also scores, offline and with the same model and metric, the
worker's ``chunk_sections`` with each strategy: recursive at other sizes, structure-aware at
several CHUNK_MIN_SIZEs, with and without the heading path; dense (exact cosine) and lexical
(FTS5 bm25 in memory, the server's query words). ``--env CHUNKING=recursive`` runs the whole
pipeline with the other strategy.

The public endpoint's rate limits are raised for the run (``RATE_LIMIT_PUBLIC_PER_CLIENT`` /
``_PER_CHATBOT`` = 100000/minute) and the tenant gets ``SIGNUP_TOKENS=100000000``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
for _key, _value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1")):
    os.environ.setdefault(_key, _value)

import httpx  # noqa: E402

from bench._server import (  # noqa: E402
    BenchServer,
    CpuMeter,
    ServerError,
    add_run_options,
    install_sigterm_handler,
    server_env,
    write_figures,
)

DEFAULT_EVAL = (REPO.parent / "shared" / "eval").resolve()
DEFAULT_CORPUS = (REPO.parent / "shared" / "corpus").resolve()
DEFAULT_EXACT = REPO / "bench" / "exact_questions.jsonl"
MODES = ("dense", "lexical", "hybrid")
PG_LANGUAGES = {"en": "english", "de": "german"}  # with --postgres
# hybrid answer-in-context@k over the ceiling's, per language; the exact-match share; and
# what hybrid may add to the p50 of dense.
TARGETS = {"en": 1.00, "de": 1.10}
LATENCY_BUDGET_MS = 5.0
RAISED_RATE_LIMIT = "100000/minute"
SERVER_ENV = {
    "RATE_LIMIT_PUBLIC_PER_CLIENT": RAISED_RATE_LIMIT,
    "RATE_LIMIT_PUBLIC_PER_CHATBOT": RAISED_RATE_LIMIT,
    "SIGNUP_TOKENS": "100000000",
}


def _now() -> float:
    return time.perf_counter()


def _norm(text: str) -> str:
    """Whitespace collapsed: chunking may turn a newline into a space or drop it."""
    return " ".join(text.split())


def contains_answer(text: str, answers: list[str]) -> bool:
    haystack = _norm(text)
    return any(_norm(a) and _norm(a) in haystack for a in answers)


def first_rank(texts: list[str], answers: list[str]) -> int | None:
    """1-based rank of the first text containing a gold answer; None if none does."""
    for rank, text in enumerate(texts, start=1):
        if contains_answer(text, answers):
            return rank
    return None


def at_k(ranks: list[int | None], k: int) -> float:
    return sum(1 for r in ranks if r is not None and r <= k) / len(ranks) if ranks else 0.0


# --------------------------------------------------------------------------------------------
# The data
# --------------------------------------------------------------------------------------------


def _jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def load_eval(folder: Path, lang: str) -> dict[str, Any]:
    derived = folder / "xquad" / "derived"
    paths = {
        "articles": derived / f"articles.{lang}.md",
        "corpus": derived / f"corpus.{lang}.jsonl",
        "queries": derived / f"queries.{lang}.jsonl",
        "qrels": derived / f"qrels.{lang}.tsv",
    }
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"missing eval files: {', '.join(missing)}")
    corpus = _jsonl(paths["corpus"])
    queries = [q for q in _jsonl(paths["queries"]) if q.get("answers")]
    gold: dict[str, str] = {}
    with open(paths["qrels"], encoding="utf-8") as handle:
        next(handle)  # header
        for line in handle:
            qid, pid, *_ = line.rstrip("\n").split("\t")
            gold[qid] = pid
    return {"paths": paths, "corpus": corpus, "queries": queries, "gold": gold}


# --------------------------------------------------------------------------------------------
# The pipeline: the real server
# --------------------------------------------------------------------------------------------


def ask_all(
    server: BenchServer,
    chatbot: dict[str, Any],
    queries: list[dict[str, Any]],
    concurrency: int,
) -> dict[str, Any]:
    """Every question through POST /api/public/{id}/query (JSON); the sources per question."""
    url = f"{server.base_url}/api/public/{chatbot['id']}/query"
    headers = {"X-API-Key": chatbot["api_key"]}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    results: dict[str, dict[str, Any]] = {}
    errors: Counter[str] = Counter()
    lock = threading.Lock()
    progress = {"done": 0, "last": _now()}
    started = _now()

    with httpx.Client(timeout=120.0, limits=limits) as client:

        def one(query: dict[str, Any]) -> None:
            t0 = _now()
            try:
                response = client.post(url, json={"question": query["text"]}, headers=headers)
            except httpx.HTTPError as exc:
                with lock:
                    errors[type(exc).__name__] += 1
                return
            seconds = _now() - t0
            with lock:
                progress["done"] += 1
                if _now() - progress["last"] > 15:
                    progress["last"] = _now()
                    print(f"  {progress['done']}/{len(queries)} asked, +{_now() - started:.0f} s")
                if response.status_code != 200:
                    errors[f"HTTP {response.status_code}"] += 1
                    if sum(errors.values()) <= 3:
                        print(f"  error {response.status_code}: {response.text[:200]}")
                    return
            body = response.json()
            results[query["_id"]] = {
                "sources": [
                    {"text": s["text"], "score": s["score"], "chunk_index": s["chunk_index"]}
                    for s in body["sources"]
                ],
                "mode": body["mode"],
                "seconds": seconds,
            }

        pool = ThreadPoolExecutor(concurrency)
        try:
            list(pool.map(one, queries))
        finally:  # on Ctrl-C: drop the questions not yet sent, wait for the few in flight
            pool.shutdown(wait=True, cancel_futures=True)
    elapsed = _now() - started
    latencies = sorted(r["seconds"] for r in results.values())
    return {
        "results": results,
        "errors": dict(errors),
        "seconds": elapsed,
        "rate": len(results) / elapsed if elapsed > 0 else 0.0,
        "latency_p50_ms": 1000 * statistics.median(latencies) if latencies else None,
        "modes": dict(Counter(r["mode"] for r in results.values())),
    }


def stored_chunks(chroma_path: Path, chatbot_id: str) -> list[dict[str, Any]]:
    """Every chunk the worker stored for the chatbot, in chunk order (server stopped)."""
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    client = chromadb.PersistentClient(
        path=str(chroma_path), settings=ChromaSettings(anonymized_telemetry=False)
    )
    try:
        collection = client.get_collection(
            f"chatbot_{uuid.UUID(chatbot_id).hex}", embedding_function=None
        )
    except Exception:
        return []
    data = collection.get(include=["documents", "metadatas"])
    rows = [
        {"index": int(meta["chunk_index"]), "text": text or ""}
        for text, meta in zip(data["documents"] or [], data["metadatas"] or [], strict=True)
    ]
    return sorted(rows, key=lambda r: r["index"])


# --------------------------------------------------------------------------------------------
# The ceiling: the same model on the gold passages
# --------------------------------------------------------------------------------------------


def ceiling(
    model: str,
    corpus: list[dict[str, Any]],
    queries: list[dict[str, Any]],
    k_max: int,
    threads: int | None = 1,
) -> dict[str, Any]:
    import numpy as np

    from app.rag.embeddings import Embedder

    embedder = Embedder(model)
    started = _now()
    embedder.load()
    load = _now() - started
    if threads:
        # Only the speed changes: one thread keeps 1190 single-question calls quick on a
        # machine shared with other work (two threads there stall at every OpenMP barrier).
        import torch

        torch.set_num_threads(threads)
    started = _now()
    passages = np.asarray(embedder.embed_passages([p["text"] for p in corpus]), dtype=np.float32)
    embed_passages = _now() - started
    started = _now()
    vectors = np.asarray([embedder.embed_query(q["text"]) for q in queries], dtype=np.float32)
    embed_queries = _now() - started
    scores = vectors @ passages.T  # normalised vectors: cosine
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k_max]
    top: dict[str, list[int]] = {
        q["_id"]: [int(i) for i in row] for q, row in zip(queries, order, strict=True)
    }
    return {
        "model": embedder.model_name,
        "top": top,
        "load_seconds": load,
        "embed_passages_seconds": embed_passages,
        "embed_queries_seconds": embed_queries,
        "embed_query_ms": 1000 * embed_queries / max(1, len(queries)),
        "token_length": embedder.token_length,
        "max_seq_length": embedder.max_seq_length,
        "chunk_budget": embedder.chunk_budget(),
        "embedder": embedder,
        "query_vectors": vectors,
    }


# --------------------------------------------------------------------------------------------
# Chunking study (offline, no server)
# --------------------------------------------------------------------------------------------


def _strip_headings(sections: list[Any]) -> list[Any]:
    import dataclasses

    return [dataclasses.replace(s, headings=()) for s in sections]


def _lexical_ranks(texts: list[str], queries: list[dict[str, Any]], k: int) -> list[int | None]:
    """The platform's lexical search on these chunks: SQLite FTS5 with bm25() and the query
    words the server uses (app.documents.passages.question_terms), in memory."""
    import sqlite3

    from app.documents.passages import question_terms

    db = sqlite3.connect(":memory:")
    db.execute("CREATE VIRTUAL TABLE f USING fts5(text, tokenize='unicode61 remove_diacritics 2')")
    db.executemany("INSERT INTO f(rowid, text) VALUES (?, ?)", list(enumerate(texts)))
    ranks: list[int | None] = []
    for q in queries:
        terms = question_terms(q["text"])
        if not terms:
            ranks.append(None)
            continue
        match = " OR ".join(f'"{t}"' for t in terms)
        rows = db.execute(
            "SELECT rowid FROM f WHERE f MATCH ? ORDER BY bm25(f) LIMIT ?", (match, k)
        ).fetchall()
        ranks.append(first_rank([texts[r[0]] for r in rows], q["answers"]))
    db.close()
    return ranks


def chunking_study(
    data: dict[str, Any], ceil: dict[str, Any], ks: list[int], sizes: list[int]
) -> list[dict[str, Any]]:
    """answer-in-context@k of chunking strategies, offline: the extracted articles chunked by
    the worker's own ``chunk_sections`` (recursive at CHUNK_SIZEs, structure-aware at several
    CHUNK_MIN_SIZEs, with and without the heading path), each embedded with the same model
    (exact cosine top-k: the dense retriever) and searched lexically (FTS5 bm25 in memory)."""
    import numpy as np

    from app.core.config import Settings
    from app.rag.chunking import chunk_sections
    from app.rag.extract import extract_text

    embedder = ceil["embedder"]
    queries = data["queries"]
    vectors = ceil["query_vectors"]
    sections = extract_text(data["paths"]["articles"], "md", max_pages=2000, max_chars=20_000_000)
    budget = embedder.chunk_budget()
    default_min = Settings.model_fields["CHUNK_MIN_SIZE"].default
    variants: list[tuple[str, list[Any], str, int, int]] = [
        (f"recursive {size}/{size // 8}", sections, "recursive", size, 0)
        for size in [budget, *[s for s in sizes if s != budget]]
    ]
    for min_size in sorted({0, 32, default_min, 128}):
        variants.append((f"structure min {min_size}", sections, "structure", budget, min_size))
    variants.append(
        (f"structure min {default_min}, no heading", _strip_headings(sections), "structure",
         budget, default_min)
    )  # fmt: skip
    rows = []
    for label, parts, strategy, size, min_size in variants:
        texts = [
            c.text
            for c in chunk_sections(
                parts,
                chunk_size=size,
                chunk_overlap=size // 8,
                length_function=embedder.token_length,
                strategy=strategy,
                min_size=min_size,
            )
        ]
        started = _now()
        matrix = np.asarray(embedder.embed_passages(texts), dtype=np.float32)
        order = np.argsort(-(vectors @ matrix.T), axis=1, kind="stable")[:, : max(ks)]
        dense = [
            first_rank([texts[i] for i in row], q["answers"])
            for q, row in zip(queries, order, strict=True)
        ]
        lexical = _lexical_ranks(texts, queries, max(ks))
        row = {"variant": label, "chunks": len(texts), "seconds": _now() - started}
        row.update({f"dense_at_{k}": at_k(dense, k) for k in ks})
        row.update({f"lexical_at_{k}": at_k(lexical, k) for k in ks})
        rows.append(row)
        print(
            f"  {label:<34} {len(texts):>5} chunks  dense "
            + " ".join(f"@{k} {row[f'dense_at_{k}']:.4f}" for k in ks)
            + "  lexical "
            + " ".join(f"@{k} {row[f'lexical_at_{k}']:.4f}" for k in ks),
            flush=True,
        )
    return rows


# --------------------------------------------------------------------------------------------
# Why the pipeline lost a question
# --------------------------------------------------------------------------------------------


def _extracted_text(path: Path) -> str:
    """The text the worker chunked (the same extractor, in this process)."""
    from app.rag.extract import extract_text

    sections = extract_text(path, "md", max_pages=2000, max_chars=20_000_000)
    return "\n\n".join(s.text for s in sections)


def _locate(haystack: str, needles: list[str]) -> list[int | None]:
    """Start of each needle in order (search moves forward, chunks overlap a little)."""
    out: list[int | None] = []
    cursor = 0
    for needle in needles:
        probe = needle[:200]
        at = haystack.find(probe, max(0, cursor - 4 * len(needle)))
        if at < 0:
            at = haystack.find(probe)
        out.append(at if at >= 0 else None)
        if at >= 0:
            cursor = at + len(needle)
    return out


def diagnose(
    data: dict[str, Any],
    chunks: list[dict[str, Any]],
    pipeline_ranks: dict[str, int | None],
    ceiling_ranks: dict[str, int | None],
    k: int,
    token_length: Any,
) -> dict[str, Any]:
    """Chunk shapes, and for every question lost against the ceiling at k: split or ranked."""
    corpus = data["corpus"]
    by_id = {p["_id"]: p for p in corpus}
    text = _extracted_text(data["paths"]["articles"])
    chunk_starts = _locate(text, [c["text"] for c in chunks])
    passage_starts = _locate(text, [p["text"].strip() for p in corpus])
    spans = [
        (start, start + len(c["text"])) if start is not None else None
        for c, start in zip(chunks, chunk_starts, strict=True)
    ]
    passage_span = {
        p["_id"]: (start, start + len(p["text"].strip())) if start is not None else None
        for p, start in zip(corpus, passage_starts, strict=True)
    }
    titles = {p["title"].replace("_", " ") for p in corpus}

    def passages_in(span: tuple[int, int]) -> int:
        return sum(
            1
            for ps in passage_span.values()
            if ps is not None and ps[0] < span[1] and span[0] < ps[1]
        )

    shapes = []
    for chunk, span in zip(chunks, spans, strict=True):
        paragraphs = [p.strip() for p in chunk["text"].split("\n\n") if p.strip()]
        shapes.append(
            {
                "tokens": token_length(chunk["text"]),
                "passages": passages_in(span) if span else None,
                "has_title": any(p in titles for p in paragraphs),
            }
        )
    located = [s for s in shapes if s["passages"] is not None]
    tokens = [s["tokens"] for s in shapes]
    summary: dict[str, Any] = {
        "chunks": len(chunks),
        "located": len(located),
        "tokens_mean": statistics.fmean(tokens) if tokens else 0.0,
        "tokens_max": max(tokens, default=0),
        "spanning_2plus_passages": sum(1 for s in located if s["passages"] >= 2),
        "with_title": sum(1 for s in shapes if s["has_title"]),
        "passages_split": sum(
            1
            for ps in passage_span.values()
            if ps is not None
            and not any(sp is not None and sp[0] <= ps[0] and ps[1] <= sp[1] for sp in spans)
        ),
        "passages_located": sum(1 for ps in passage_span.values() if ps is not None),
    }

    lost: list[dict[str, Any]] = []
    reasons: Counter[str] = Counter()
    for query in data["queries"]:
        qid = query["_id"]
        p_rank, c_rank = pipeline_ranks.get(qid), ceiling_ranks.get(qid)
        if c_rank is None or c_rank > k or (p_rank is not None and p_rank <= k):
            continue
        passage = by_id.get(data["gold"].get(qid, ""))
        span = passage_span.get(passage["_id"]) if passage else None
        reason = "gold passage not located in the extracted text"
        covering: list[int] = []
        if passage is not None and span is not None:
            offset = -1
            for answer in query["answers"]:
                offset = passage["text"].strip().find(answer)
                if offset >= 0:
                    break
            if offset < 0:
                reason = "answer not verbatim in its gold passage"
            else:
                a_start, a_end = span[0] + offset, span[0] + offset + len(answer)
                covering = [
                    i
                    for i, sp in enumerate(spans)
                    if sp is not None and sp[0] <= a_start and a_end <= sp[1]
                ]
                if not covering:
                    reason = "answer split by a chunk boundary"
                elif all(shapes[i]["passages"] and shapes[i]["passages"] >= 2 for i in covering):
                    reason = "ranked below k: its chunk merges 2+ passages"
                elif all(shapes[i]["has_title"] for i in covering):
                    reason = "ranked below k: its chunk carries an article title"
                else:
                    reason = "ranked below k: its chunk is a part of the passage"
        reasons[reason] += 1
        lost.append(
            {
                "id": qid,
                "question": query["text"],
                "answers": query["answers"],
                "gold": passage["_id"] if passage else None,
                "ceiling_rank": c_rank,
                "pipeline_rank": p_rank,
                "reason": reason,
                "covering_chunks": covering,
            }
        )
    # And the other way round: questions the pipeline found that the ceiling did not.
    gained = sum(
        1
        for q in data["queries"]
        if (pr := pipeline_ranks.get(q["_id"])) is not None
        and pr <= k
        and ((cr := ceiling_ranks.get(q["_id"])) is None or cr > k)
    )
    summary.update(lost=len(lost), gained=gained, reasons=dict(reasons.most_common()))
    return {"summary": summary, "lost": lost}


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


def mrr(ranks: list[int | None], k: int) -> float:
    """Mean reciprocal rank of the first source holding the answer, 0 beyond k."""
    return sum(1.0 / r for r in ranks if r is not None and r <= k) / len(ranks) if ranks else 0.0


def load_exact(path: Path, corpus: Path) -> dict[str, Any]:
    questions = _jsonl(path)
    documents = sorted({str(q["document"]) for q in questions})
    missing = [d for d in documents if not (corpus / d).is_file()]
    if missing:
        raise FileNotFoundError(f"missing corpus files: {', '.join(missing)}")
    return {"queries": questions, "files": [corpus / d for d in documents]}


def set_mode(server: BenchServer, tenant: Any, chatbot: dict[str, Any], mode: str) -> None:
    server.client.patch(
        f"/api/chatbots/{chatbot['id']}", json={"retrieval_mode": mode}, headers=tenant.headers
    ).raise_for_status()


def latency_pass(
    server: BenchServer,
    tenant: Any,
    chatbot: dict[str, Any],
    modes: list[str],
    queries: list[dict[str, Any]],
    block: int = 10,
) -> dict[str, float]:
    """p50 of one question at a time; the modes take turns every `block` questions (the same
    questions for each), so that each sees the same machine."""
    seconds: dict[str, list[float]] = {mode: [] for mode in modes}
    url = f"{server.base_url}/api/public/{chatbot['id']}/query"
    with httpx.Client(timeout=120.0) as client:
        for start in range(0, len(queries), block):
            for mode in modes:
                set_mode(server, tenant, chatbot, mode)
                for query in queries[start : start + block]:
                    t0 = _now()
                    response = client.post(
                        url,
                        json={"question": query["text"]},
                        headers={"X-API-Key": chatbot["api_key"]},
                    )
                    if response.status_code == 200:
                        seconds[mode].append(_now() - t0)
    return {m: 1000 * statistics.median(v) if v else 0.0 for m, v in seconds.items()}


def run_pipeline(
    args: argparse.Namespace,
    datasets: dict[str, dict[str, Any]],
    exact: dict[str, Any] | None,
    extra_env: dict[str, str],
    k_max: int,
) -> dict[str, Any]:
    """One server: a chatbot per language (its article) and one with the exact-match
    documents; every question through the API in every mode (the chatbot's retrieval_mode
    switched between passes)."""
    server = BenchServer(
        model=args.model, extra_env=extra_env, keep=args.keep, postgres=args.postgres
    )
    out: dict[str, Any] = {"langs": {}, "exact": None}
    try:
        started = _now()
        server.start()
        print(f"server ready on {server.base_url} in {_now() - started:.1f} s")
        tenant = server.register_tenant()
        # On PostgreSQL each chatbot's full-text configuration is its language's (stemming,
        # stop words), as a business would set it; SQLite's FTS5 has one for all.
        uploads: dict[str, tuple[dict[str, Any], list[Path]]] = {
            lang: (
                server.create_chatbot(
                    tenant,
                    top_k=k_max,
                    **({"language": PG_LANGUAGES[lang]} if args.postgres else {}),
                ),
                [data["paths"]["articles"]],
            )
            for lang, data in datasets.items()
        }
        if exact is not None:
            uploads["exact"] = (server.create_chatbot(tenant, top_k=k_max), exact["files"])
        started = _now()
        for bot, paths in uploads.values():
            for path in paths:
                response = server.upload(tenant, bot["id"], path)
                if response.status_code != 202:
                    raise ServerError(f"upload refused: {response.status_code} {response.text}")
        chunks: dict[str, int] = {}
        for name, (bot, _paths) in uploads.items():
            documents = server.wait_for_documents(tenant, bot["id"])
            failed = [d["filename"] for d in documents if d["status"] != "ready"]
            if failed:
                raise ServerError(f"documents not ready: {failed}")
            chunks[name] = sum(d["chunk_count"] for d in documents)
        out["ingest_seconds"] = _now() - started
        print(f"ingested everything in {out['ingest_seconds']:.1f} s: chunks {chunks}")

        with CpuMeter(server) as meter:
            for name, (bot, _paths) in uploads.items():
                queries = (
                    exact["queries"] if name == "exact" and exact else datasets[name]["queries"]
                )
                results: dict[str, Any] = {}
                for mode in args.modes:
                    set_mode(server, tenant, bot, mode)
                    print(f"{name} {mode}: {len(queries)} questions ...", flush=True)
                    results[mode] = ask_all(server, bot, queries, args.concurrency)
                if name == "exact":
                    out["exact"] = results
                else:
                    out["langs"][name] = {"chunks": chunks[name], "modes": results}
            first = next(iter(datasets))
            sample = datasets[first]["queries"][: args.latency_questions]
            print(f"latency: {len(sample)} {first} questions one at a time, modes in turn ...")
            out["latency_p50_ms"] = latency_pass(
                server, tenant, uploads[first][0], args.modes, sample
            )
            out["latency_lang"] = first
        out["cpu"] = meter.as_dict()
        server.stop()
        for lang in datasets:
            out["langs"][lang]["stored_chunks"] = stored_chunks(
                server.chroma_path, uploads[lang][0]["id"]
            )
            out["langs"][lang]["diagnosed_mode"] = (
                "hybrid" if "hybrid" in args.modes else args.modes[0]
            )
    finally:
        server.cleanup()
    return out


def ranks_of(results: dict[str, Any], queries: list[dict[str, Any]]) -> dict[str, int | None]:
    ranks: dict[str, int | None] = {}
    for query in queries:
        result = results.get(query["_id"])
        ranks[query["_id"]] = (
            first_rank([s["text"] for s in result["sources"]], query["answers"]) if result else None
        )
    return ranks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--eval", type=Path, default=DEFAULT_EVAL, help=f"eval folder (default {DEFAULT_EVAL})"
    )
    parser.add_argument(
        "--lang", default="en,de", help="languages, comma-separated (default en,de)"
    )
    parser.add_argument(
        "--modes",
        default=",".join(MODES),
        help=f"retrieval modes, comma-separated (default {','.join(MODES)})",
    )
    parser.add_argument("--k", type=int, default=5, help="k of the targets (default 5)")
    parser.add_argument(
        "--ks", default="1,5,10", help="k values to report, comma-separated (default 1,5,10)"
    )
    parser.add_argument(
        "--model", default="minilm", help="EMBEDDING_MODEL (default minilm, the packaged model)"
    )
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight (4)")
    parser.add_argument(
        "--latency-questions",
        type=int,
        default=200,
        help="questions asked one at a time per mode for the p50 latency (200)",
    )
    parser.add_argument(
        "--exact",
        type=Path,
        default=DEFAULT_EXACT,
        help="exact-match questions (default bench/exact_questions.jsonl; 'none' to skip)",
    )
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="their documents")
    parser.add_argument(
        "--ceiling-threads",
        type=int,
        default=1,
        help="torch threads for the ceiling's embeddings (1; 0: torch's default)",
    )
    parser.add_argument(
        "--chunking-study",
        nargs="?",
        const="128,200",
        metavar="SIZES",
        help="also score chunking strategies offline (no server): the worker's chunk_sections, "
        "recursive at these CHUNK_SIZEs (default 128,200) and structure-aware at several "
        "CHUNK_MIN_SIZEs, with and without heading paths; dense and lexical",
    )
    parser.add_argument("--limit", type=int, help="ask only the first N questions")
    parser.add_argument(
        "--postgres",
        action="store_true",
        help="the server on a fresh PostgreSQL database (full-text search in each chatbot's "
        "language) instead of SQLite with FTS5",
    )
    parser.add_argument(
        "--show-lost", type=int, default=5, help="lost questions to print (default 5)"
    )
    add_run_options(parser, "CHUNK_SIZE=128")
    args = parser.parse_args(argv)
    install_sigterm_handler()

    ks = sorted({int(x) for x in args.ks.split(",") if x.strip()} | {args.k, 10})
    k_max = max(ks)
    if not 1 <= k_max <= 20:
        parser.error("k must be between 1 and 20 (the chatbot's top_k)")
    args.modes = [m for m in args.modes.split(",") if m]
    if not args.modes or any(m not in MODES for m in args.modes):
        parser.error(f"modes are among {', '.join(MODES)}")
    langs = [x for x in args.lang.split(",") if x]
    if not langs or any(x not in ("en", "de") for x in langs):
        parser.error("languages are en and de")
    extra_env = server_env(parser, args.env, SERVER_ENV)

    try:
        datasets = {lang: load_eval(args.eval, lang) for lang in langs}
        exact = None if str(args.exact) == "none" else load_exact(args.exact, args.corpus)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for lang, data in datasets.items():
        if args.limit:
            data["queries"] = data["queries"][: args.limit]
        print(
            f"eval: {args.eval} ({lang}): {len(data['corpus'])} passages, "
            f"{len(data['queries'])} questions"
        )
    if exact is not None:
        print(f"exact-match: {len(exact['queries'])} questions over {len(exact['files'])} files")
    print(
        f"server settings: model {args.model}, {'PostgreSQL' if args.postgres else 'SQLite'}, "
        "extractive mode (no FIREWORKS_API_KEY), "
        + ", ".join(f"{k}={v}" for k, v in extra_env.items())
    )

    try:
        pipeline = run_pipeline(args, datasets, exact, extra_env, k_max)
        ceilings = {}
        for lang, data in datasets.items():
            print(f"ceiling ({lang}): embedding the gold passages in this process ...")
            ceilings[lang] = ceiling(
                args.model, data["corpus"], data["queries"], k_max, args.ceiling_threads or None
            )
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except ServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    figures: dict[str, Any] = {
        "eval": str(args.eval),
        "model": args.model,
        "server_env": extra_env,
        "concurrency": args.concurrency,
        "k": args.k,
        "ks": ks,
        "ingest_seconds": pipeline["ingest_seconds"],
        "cpu": pipeline["cpu"],
        "latency_p50_ms": pipeline["latency_p50_ms"],
        "latency_lang": pipeline["latency_lang"],
        "langs": {},
    }
    for lang, data in datasets.items():
        figures["langs"][lang] = report_language(
            args, ks, lang, data, pipeline["langs"][lang], ceilings[lang]
        )
    if exact is not None:
        figures["exact"] = report_exact(ks, exact, pipeline["exact"])
    figures["targets"] = report_targets(args, figures)
    print(
        f"\nforeign CPU during the questions: {100 * pipeline['cpu']['other_share']:.0f}% of the "
        f"machine ({pipeline['cpu']['other_cpu_seconds']:.0f} CPU-s of others over "
        f"{pipeline['cpu']['wall_seconds']:.0f} s)"
    )
    print()
    write_figures(args.json, figures)
    return 0


def report_language(
    args: argparse.Namespace,
    ks: list[int],
    lang: str,
    data: dict[str, Any],
    run: dict[str, Any],
    ceil: dict[str, Any],
) -> dict[str, Any]:
    queries, passages = data["queries"], data["corpus"]
    ceiling_ranks = {
        q["_id"]: first_rank([passages[i]["text"] for i in ceil["top"][q["_id"]]], q["answers"])
        for q in queries
    }
    c_ranks = list(ceiling_ranks.values())
    print(
        f"\n== {lang}: answer-in-context@k, {len(queries)} questions, model {ceil['model']}, "
        f"{run['chunks']} chunks from {len(passages)} passages =="
    )
    header = "  ".join(f"{'@' + str(k):>6}" for k in ks)
    print(f"{'mode':<10}{header}  {'MRR@10':>7}  {f'/ceil@{args.k}':>10}  {'errors':>6}")
    rows: dict[str, Any] = {}
    ranks_by_mode: dict[str, dict[str, int | None]] = {}
    for mode, asked in run["modes"].items():
        ranks = ranks_of(asked["results"], queries)
        ranks_by_mode[mode] = ranks
        values = list(ranks.values())
        row = {f"at_{k}": at_k(values, k) for k in ks}
        row["mrr_10"] = mrr(values, 10)
        ceiling_at = at_k(c_ranks, args.k)
        row["ratio"] = row[f"at_{args.k}"] / ceiling_at if ceiling_at else 0.0
        row["errors"] = asked["errors"]
        row["rate"] = asked["rate"]
        rows[mode] = row
        print(
            f"{mode:<10}"
            + "  ".join(f"{row[f'at_{k}']:6.4f}" for k in ks)
            + f"  {row['mrr_10']:7.4f}  {row['ratio']:10.3f}  {sum(asked['errors'].values()):>6}"
        )
    ceiling_row = {f"at_{k}": at_k(c_ranks, k) for k in ks} | {"mrr_10": mrr(c_ranks, 10)}
    print(
        f"{'ceiling':<10}"
        + "  ".join(f"{ceiling_row[f'at_{k}']:6.4f}" for k in ks)
        + f"  {ceiling_row['mrr_10']:7.4f}  {1.0:10.3f}"
    )
    print(
        f"(ceiling: {ceil['model']} ranking the {len(passages)} gold passages directly, "
        f"embedded in this process in {ceil['embed_passages_seconds']:.1f} s, queries "
        f"{ceil['embed_query_ms']:.1f} ms each)"
    )
    diagnosed = run["diagnosed_mode"]
    diagnosis = diagnose(
        data,
        run["stored_chunks"],
        ranks_by_mode[diagnosed],
        ceiling_ranks,
        args.k,
        ceil["token_length"],
    )
    summary = diagnosis["summary"]
    print(
        f"{diagnosed} at k={args.k}: {summary['lost']} questions found by the ceiling and lost, "
        f"{summary['gained']} the other way round; chunks spanning 2+ passages "
        f"{summary['spanning_2plus_passages']}/{summary['chunks']}"
    )
    for reason, count in summary["reasons"].items():
        print(f"  {count:4d}  {reason}")
    for lost in diagnosis["lost"][: args.show_lost]:
        print(
            f"  - {lost['question']!r} -> {lost['answers'][0]!r}: ceiling rank "
            f"{lost['ceiling_rank']}, pipeline rank {lost['pipeline_rank']}; {lost['reason']}"
        )
    study = None
    if args.chunking_study:
        sizes = [int(x) for x in args.chunking_study.split(",") if x.strip()]
        print(f"chunking study ({lang}, offline, same model; dense: exact cosine, lexical: bm25):")
        study = chunking_study(data, ceil, ks, sizes)
    return {
        "questions": len(queries),
        "chunks": run["chunks"],
        "modes": rows,
        "ceiling": ceiling_row,
        "diagnosis": diagnosis,
        "chunking_study": study,
    }


def report_exact(ks: list[int], exact: dict[str, Any], results: dict[str, Any]) -> dict[str, Any]:
    queries = exact["queries"]
    kinds = Counter(str(q["kind"]) for q in queries)
    print(f"\n== exact-match questions: {len(queries)} ({dict(kinds)}) ==")
    header = "  ".join(f"{'@' + str(k):>6}" for k in ks)
    print(f"{'mode':<10}{header}  {'MRR@10':>7}")
    rows: dict[str, Any] = {}
    for mode, asked in results.items():
        values = list(ranks_of(asked["results"], queries).values())
        row = {f"at_{k}": at_k(values, k) for k in ks} | {"mrr_10": mrr(values, 10)}
        rows[mode] = row
        print(
            f"{mode:<10}"
            + "  ".join(f"{row[f'at_{k}']:6.4f}" for k in ks)
            + f"  {row['mrr_10']:7.4f}"
        )
    return {"questions": len(queries), "kinds": dict(kinds), "modes": rows}


def report_targets(args: argparse.Namespace, figures: dict[str, Any]) -> list[dict[str, Any]]:
    """The targets: hybrid against the ceiling per language, exact-match, the latency cost."""
    checks: list[tuple[str, float, float]] = []
    for lang, lang_figures in figures["langs"].items():
        hybrid = lang_figures["modes"].get("hybrid")
        if hybrid is not None:
            checks.append((f"{lang}: hybrid@{args.k} / ceiling", hybrid["ratio"], TARGETS[lang]))
    exact = figures.get("exact")
    if exact and "hybrid" in exact["modes"]:
        checks.append(
            (f"exact-match: hybrid@{args.k}", exact["modes"]["hybrid"][f"at_{args.k}"], 0.95)
        )
    p50 = figures["latency_p50_ms"]
    print(
        f"\n== p50 latency through the API, one question at a time "
        f"({figures['latency_lang']}, {args.latency_questions} questions per mode) =="
    )
    print("  " + ", ".join(f"{mode} {ms:.1f} ms" for mode, ms in p50.items()))
    print("\n== targets ==")
    out = []
    for label, value, target in checks:
        passed = value >= target
        out.append({"check": label, "value": value, "target": target, "pass": passed})
        print(f"  {label:<32} {value:7.3f}  (>= {target})  {'PASS' if passed else 'FAIL'}")
    if "hybrid" in p50 and "dense" in p50:
        growth = p50["hybrid"] - p50["dense"]
        passed = growth <= LATENCY_BUDGET_MS
        out.append({"check": "p50 hybrid - dense (ms)", "value": growth, "pass": passed})
        print(
            f"  {'p50 hybrid - dense':<32} {growth:+7.1f} ms  (<= {LATENCY_BUDGET_MS} ms)  "
            f"{'PASS' if passed else 'FAIL'}"
        )
    return out


if __name__ == "__main__":
    sys.exit(main())

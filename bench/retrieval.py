"""Retrieval quality through the real query path against the same model's ceiling.

Uploads ``xquad/derived/articles.<lang>.md`` (48 articles, 240 passages) to a chatbot of the
real API server (uvicorn subprocess, SQLite, embedded Chroma, all in a temporary folder, no
LLM: extractive mode, only ``sources`` are read), asks every question (1190) through
``POST /api/public/{id}/query`` and prints answer-in-context@k: the share of questions whose
gold answer string appears in the text of one of the first k returned sources.

Beside it, the ceiling: the same model, in this process, embedding the 240 gold passages
themselves (``Embedder.embed_passages``) and each question (``Embedder.embed_query``), exact
cosine top-k with numpy, the same metric on the passages. The ratio pipeline / ceiling at
``--k`` (default 5) passes at >= 0.97.

    .venv/bin/python bench/retrieval.py                       # en, minilm, k = 1 3 5 10
    .venv/bin/python bench/retrieval.py --lang de --json out.json
    .venv/bin/python bench/retrieval.py --env CHUNK_SIZE=128 --env CHUNK_OVERLAP=16
    .venv/bin/python bench/retrieval.py --limit 200           # the first 200 questions only
    .venv/bin/python bench/retrieval.py --chunking-study 128,200   # + other chunkings, offline

The chatbot's ``top_k`` is the largest k reported; smaller k are prefixes of the returned list
(ordered by score). After the run the script reads the stored chunks back from Chroma (the
server stopped) and explains each question the pipeline lost against the ceiling: the answer
split by a chunk boundary, or present in a chunk that ranked too low (chunks that merge
passages or carry an article title). ``--chunking-study`` also scores, offline and with the
same model and metric, the worker's ``chunk_sections`` at other sizes and paragraph-first
chunking (no paragraph merged with the next), to tell what a chunking change would buy.

The public endpoint's rate limits (60/min per client by default) are raised for the run
(``RATE_LIMIT_PUBLIC_PER_CLIENT`` / ``_PER_CHATBOT`` = 100000/minute) and the tenant gets
``SIGNUP_TOKENS=100000000``.
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
    ServerError,
    add_run_options,
    install_sigterm_handler,
    server_env,
    write_figures,
)

DEFAULT_EVAL = (REPO.parent / "shared" / "eval").resolve()
TARGET_RATIO = 0.97
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


def _paragraph_first(
    text: str, size: int, overlap: int, embedder: Any, titles: set[str]
) -> list[str]:
    """Every paragraph (blank-line separated) its own chunk, never merged with the next; only
    a paragraph longer than ``size`` tokens is split, with the worker's splitter. A heading
    line (an article title here) is put in front of the paragraphs under it."""
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    from app.rag.chunking import SEPARATORS

    splitter = RecursiveCharacterTextSplitter(
        separators=SEPARATORS,
        keep_separator="end",
        chunk_size=size,
        chunk_overlap=overlap,
        length_function=embedder.token_length,
        strip_whitespace=True,
    )
    chunks: list[str] = []
    heading: str | None = None
    for paragraph in (p.strip() for p in text.split("\n\n")):
        if not paragraph:
            continue
        if paragraph in titles:
            heading = paragraph
            continue
        pieces = (
            [paragraph]
            if embedder.token_length(paragraph) <= size
            else splitter.split_text(paragraph)
        )
        chunks += [f"{heading}\n{piece}" if heading else piece for piece in pieces]
    return chunks


def chunking_study(
    data: dict[str, Any], ceil: dict[str, Any], ks: list[int], sizes: list[int]
) -> list[dict[str, Any]]:
    """answer-in-context@k of other chunkings, offline: the extracted text chunked by the
    worker's own ``chunk_sections`` at other CHUNK_SIZEs (overlap size // 8, as the worker),
    and by paragraph-first chunking; embedded with the same model, exact cosine top-k.
    The first row (today's settings) should reproduce the pipeline's figures."""
    import numpy as np

    from app.rag.chunking import chunk_sections
    from app.rag.extract import extract_text

    embedder = ceil["embedder"]
    queries = data["queries"]
    vectors = ceil["query_vectors"]
    sections = extract_text(data["paths"]["articles"], "md", max_pages=2000, max_chars=20_000_000)
    titles = {p["title"].replace("_", " ") for p in data["corpus"]}
    budget = embedder.chunk_budget()
    variants: list[tuple[str, list[str]]] = []
    for size in [budget, *[s for s in sizes if s != budget]]:
        chunks = chunk_sections(
            sections,
            chunk_size=size,
            chunk_overlap=size // 8,
            length_function=embedder.token_length,
        )
        variants.append((f"chunk_sections {size}/{size // 8}", [c.text for c in chunks]))
    text = "\n\n".join(s.text for s in sections)
    variants.append(
        (
            f"paragraph-first {budget}/{budget // 8}, title in front",
            _paragraph_first(text, budget, budget // 8, embedder, titles),
        )
    )
    rows = []
    for label, texts in variants:
        started = _now()
        matrix = np.asarray(embedder.embed_passages(texts), dtype=np.float32)
        order = np.argsort(-(vectors @ matrix.T), axis=1, kind="stable")[:, : max(ks)]
        ranks = [
            first_rank([texts[i] for i in row], q["answers"])
            for q, row in zip(queries, order, strict=True)
        ]
        row = {"variant": label, "chunks": len(texts), "seconds": _now() - started}
        row.update({f"at_{k}": at_k(ranks, k) for k in ks})
        rows.append(row)
        print(
            f"  {label:<44} {len(texts):>5} chunks  "
            + "  ".join(f"@{k} {row[f'at_{k}']:.4f}" for k in ks),
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


def run_pipeline(
    args: argparse.Namespace, data: dict[str, Any], extra_env: dict[str, str], k_max: int
) -> dict[str, Any]:
    server = BenchServer(model=args.model, extra_env=extra_env, keep=args.keep)
    try:
        started = _now()
        server.start()
        print(f"server ready on {server.base_url} in {_now() - started:.1f} s")
        tenant = server.register_tenant()
        chatbot = server.create_chatbot(tenant, top_k=k_max)
        article = data["paths"]["articles"]
        started = _now()
        response = server.upload(tenant, chatbot["id"], article)
        if response.status_code != 202:
            raise ServerError(f"upload refused: {response.status_code} {response.text[:300]}")
        documents = server.wait_for_documents(tenant, chatbot["id"])
        ingest_seconds = _now() - started
        document = documents[0]
        if document["status"] != "ready":
            raise ServerError(f"document {document['status']}: {document.get('error')}")
        print(
            f"ingested {article.name}: {document['chunk_count']} chunks in {ingest_seconds:.1f} s"
        )
        print(
            f"asking {len(data['queries'])} questions, {args.concurrency} at a time "
            f"(top_k={k_max}) ..."
        )
        asked = ask_all(server, chatbot, data["queries"], args.concurrency)
        server.stop()
        chunks = stored_chunks(server.chroma_path, chatbot["id"])
    finally:
        server.cleanup()
    return {
        "chunks": document["chunk_count"],
        "stored_chunks": chunks,
        "ingest_seconds": ingest_seconds,
        **asked,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--eval", type=Path, default=DEFAULT_EVAL, help=f"eval folder (default {DEFAULT_EVAL})"
    )
    parser.add_argument("--lang", default="en", choices=["en", "de"], help="language (en)")
    parser.add_argument("--k", type=int, default=5, help="k of the target (default 5)")
    parser.add_argument(
        "--ks", default="1,3,5,10", help="k values to report, comma-separated (default 1,3,5,10)"
    )
    parser.add_argument(
        "--model", default="minilm", help="EMBEDDING_MODEL (default minilm, the packaged model)"
    )
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight (4)")
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
        help="also score other chunkings offline (no server): the worker's chunk_sections at "
        "these CHUNK_SIZEs (default 128,200) and paragraph-first chunking",
    )
    parser.add_argument("--limit", type=int, help="ask only the first N questions")
    parser.add_argument("--target", type=float, default=TARGET_RATIO, help="ratio to pass")
    parser.add_argument(
        "--show-lost", type=int, default=10, help="lost questions to print (default 10)"
    )
    add_run_options(parser, "CHUNK_SIZE=128")
    args = parser.parse_args(argv)
    install_sigterm_handler()

    ks = sorted({int(x) for x in args.ks.split(",") if x.strip()} | {args.k})
    k_max = max(ks)
    if not 1 <= k_max <= 20:
        parser.error("k must be between 1 and 20 (the chatbot's top_k)")
    extra_env = server_env(parser, args.env, SERVER_ENV)

    try:
        data = load_eval(args.eval, args.lang)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.limit:
        data["queries"] = data["queries"][: args.limit]
    print(
        f"eval: {args.eval} ({args.lang}): {len(data['corpus'])} passages, "
        f"{len(data['queries'])} questions"
    )
    print(
        f"server settings: model {args.model}, SQLite, extractive mode (no FIREWORKS_API_KEY), "
        + ", ".join(f"{k}={v}" for k, v in extra_env.items())
    )

    try:
        pipeline = run_pipeline(args, data, extra_env, k_max)
        print("ceiling: embedding the gold passages in this process (server stopped) ...")
        ceil = ceiling(
            args.model, data["corpus"], data["queries"], k_max, args.ceiling_threads or None
        )
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except ServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    pipeline_ranks: dict[str, int | None] = {}
    ceiling_ranks: dict[str, int | None] = {}
    passages = data["corpus"]
    for query in data["queries"]:
        qid = query["_id"]
        result = pipeline["results"].get(qid)
        pipeline_ranks[qid] = (
            first_rank([s["text"] for s in result["sources"]], query["answers"]) if result else None
        )
        ceiling_ranks[qid] = first_rank(
            [passages[i]["text"] for i in ceil["top"][qid]], query["answers"]
        )
    gold_rank: list[int | None] = []
    for query in data["queries"]:
        pid = data["gold"].get(query["_id"])
        ids = [passages[i]["_id"] for i in ceil["top"][query["_id"]]]
        gold_rank.append(ids.index(pid) + 1 if pid in ids else None)

    study = None
    if args.chunking_study:
        sizes = [int(x) for x in args.chunking_study.split(",") if x.strip()]
        print("chunking study (offline, same model, exact cosine):")
        study = chunking_study(data, ceil, ks, sizes)

    diagnosis = diagnose(
        data, pipeline["stored_chunks"], pipeline_ranks, ceiling_ranks, args.k, ceil["token_length"]
    )
    report(
        args, ks, data, pipeline, ceil, pipeline_ranks, ceiling_ranks, gold_rank, diagnosis, study
    )
    return 0


def report(
    args: argparse.Namespace,
    ks: list[int],
    data: dict[str, Any],
    pipeline: dict[str, Any],
    ceil: dict[str, Any],
    pipeline_ranks: dict[str, int | None],
    ceiling_ranks: dict[str, int | None],
    gold_rank: list[int | None],
    diagnosis: dict[str, Any],
    study: list[dict[str, Any]] | None = None,
) -> None:
    questions = len(data["queries"])
    p_ranks = list(pipeline_ranks.values())
    c_ranks = list(ceiling_ranks.values())
    print(
        f"\n== answer-in-context@k, {questions} questions ({args.lang}, model {ceil['model']}) =="
    )
    print(f"{'k':>3}  {'pipeline':>8}  {'ceiling':>8}  {'ratio':>6}  {'gold passage@k':>14}")
    table = []
    for k in ks:
        p, c = at_k(p_ranks, k), at_k(c_ranks, k)
        ratio = p / c if c else 0.0
        g = at_k(gold_rank, k)
        table.append({"k": k, "pipeline": p, "ceiling": c, "ratio": ratio, "gold_passage": g})
        print(f"{k:>3}  {p:8.4f}  {c:8.4f}  {ratio:6.3f}  {g:14.4f}")
    row = next(r for r in table if r["k"] == args.k)
    passed = row["ratio"] >= args.target
    verdict = "PASS" if passed else "FAIL"
    print(
        f"\nratio pipeline / ceiling at k={args.k}: {row['ratio']:.3f}  {verdict} "
        f"(target >= {args.target})"
    )
    print("(gold passage@k: the ceiling ranked the question's own passage in its top k)")

    print("\n== pipeline ==")
    print(
        f"chunks: {pipeline['chunks']} (from {len(data['corpus'])} passages); "
        f"ingestion {pipeline['ingest_seconds']:.1f} s"
    )
    print(
        f"questions: {len(pipeline['results'])} answered in {pipeline['seconds']:.1f} s "
        f"({pipeline['rate']:.1f}/s at concurrency {args.concurrency}, "
        f"p50 {pipeline['latency_p50_ms'] or 0:.0f} ms); modes {pipeline['modes']}; "
        f"errors {pipeline['errors'] or 0}"
    )
    print(
        f"ceiling: model load {ceil['load_seconds']:.1f} s, "
        f"{len(data['corpus'])} passages embedded in {ceil['embed_passages_seconds']:.1f} s, "
        f"{questions} queries in {ceil['embed_queries_seconds']:.1f} s "
        f"({ceil['embed_query_ms']:.1f} ms each); max_seq_length {ceil['max_seq_length']}, "
        f"default chunk budget {ceil['chunk_budget']} tokens"
    )

    summary = diagnosis["summary"]
    print("\n== chunks and lost questions ==")
    print(
        f"chunks located in the extracted text: {summary['located']}/{summary['chunks']}; "
        f"tokens mean {summary['tokens_mean']:.0f}, max {summary['tokens_max']}"
    )
    print(
        f"chunks spanning 2+ passages: {summary['spanning_2plus_passages']}; "
        f"chunks carrying an article title: {summary['with_title']}; "
        f"passages not inside any single chunk: {summary['passages_split']}"
        f"/{summary['passages_located']}"
    )
    print(
        f"at k={args.k}: {summary['lost']} questions found by the ceiling and lost by the "
        f"pipeline, {summary['gained']} the other way round"
    )
    for reason, count in summary["reasons"].items():
        print(f"  {count:4d}  {reason}")
    for lost in diagnosis["lost"][: args.show_lost]:
        print(
            f"  - {lost['question']!r} -> {lost['answers'][0]!r} ({lost['gold']}): "
            f"ceiling rank {lost['ceiling_rank']}, pipeline rank {lost['pipeline_rank']}; "
            f"{lost['reason']}"
        )

    if study:
        print("\n== chunking study (offline: same extraction, model and metric; exact cosine) ==")
        print(f"{'variant':<46}{'chunks':>7}  " + "  ".join(f"{'@' + str(k):>6}" for k in ks))
        for variant in study:
            print(
                f"{variant['variant']:<46}{variant['chunks']:>7}  "
                + "  ".join(f"{variant[f'at_{k}']:6.4f}" for k in ks)
            )
        print(
            f"{'ceiling (gold passages)':<46}{len(data['corpus']):>7}  "
            + "  ".join(f"{at_k(c_ranks, k):6.4f}" for k in ks)
        )

    figures = {
        "eval": str(args.eval),
        "lang": args.lang,
        "model": ceil["model"],
        "questions": questions,
        "passages": len(data["corpus"]),
        "server_env": {
            k: v for k, v in (SERVER_ENV | dict(e.partition("=")[::2] for e in args.env)).items()
        },
        "concurrency": args.concurrency,
        "k": args.k,
        "target": args.target,
        "table": table,
        "ratio": row["ratio"],
        "pass": passed,
        "pipeline": {
            key: pipeline[key]
            for key in (
                "chunks",
                "ingest_seconds",
                "seconds",
                "rate",
                "latency_p50_ms",
                "errors",
                "modes",
            )
        },
        "ceiling": {
            key: ceil[key]
            for key in (
                "load_seconds",
                "embed_passages_seconds",
                "embed_queries_seconds",
                "max_seq_length",
                "chunk_budget",
            )
        },
        "diagnosis": diagnosis,
        "chunking_study": study,
        "ranks": {
            qid: {"pipeline": pipeline_ranks[qid], "ceiling": ceiling_ranks[qid]}
            for qid in pipeline_ranks
        },
    }
    print()
    write_figures(args.json, figures)


if __name__ == "__main__":
    sys.exit(main())

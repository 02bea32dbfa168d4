"""Prometheus metrics of the product (HTTP metrics live in the middleware)."""

from __future__ import annotations

import time

from prometheus_client import Counter, Gauge, Histogram

ANSWERS = Counter(
    "chatbot_answers_total",
    "Questions answered, by mode (llm, extractive, fallback) and outcome",
    ["mode", "outcome"],
)
TOKENS = Counter("chatbot_tokens_total", "Tokens recorded for answers", ["direction", "demo"])
LLM_SECONDS = Histogram(
    "llm_first_token_seconds",
    "Time from calling the LLM to its first token (streaming) or its answer (JSON)",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
)
QUERY_SECONDS = Histogram(
    "chatbot_query_seconds",
    "The query path by stage: embed (the question), search (the vector store), first_token "
    "and total (from the start of answering to the answer's first token, and to its end)",
    ["stage"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
INGESTED = Counter("ingest_documents_total", "Documents finished by the workers", ["status"])
CHUNKS = Counter("ingest_chunks_total", "Chunks embedded and stored")
QUEUE_DOCUMENTS = Gauge(
    "ingest_queue_documents", "Documents waiting or being ingested, by status", ["status"]
)
QUEUE_OLDEST = Gauge(
    "ingest_queue_oldest_seconds", "Age of the oldest queued document (0 when none waits)"
)

QUERY_STAGES = ("embed", "search", "first_token", "total")
for _stage in QUERY_STAGES:  # every stage present from the first scrape
    QUERY_SECONDS.labels(_stage)


def observe_since(stage: str, started: float) -> None:
    """A query stage that ends now and began at `started` (time.perf_counter)."""
    QUERY_SECONDS.labels(stage).observe(time.perf_counter() - started)


def record_queue(queued: int, processing: int, oldest_seconds: float | None) -> None:
    QUEUE_DOCUMENTS.labels("queued").set(queued)
    QUEUE_DOCUMENTS.labels("processing").set(processing)
    QUEUE_OLDEST.set(oldest_seconds or 0.0)

"""Prometheus metrics of the product (HTTP metrics live in the middleware)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

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
INGESTED = Counter("ingest_documents_total", "Documents finished by the workers", ["status"])
CHUNKS = Counter("ingest_chunks_total", "Chunks embedded and stored")

"""Memory of long-lived processes: does it stay flat while work goes through?

Two figures, each RSS before and after a long run (after a warm-up), printed as growth:

1. ``Embedder.token_length`` (this process, the packaged MiniLM) over many distinct texts: short
   pieces like the splitter's, and long prompts like the query path's reservation estimate.
   Only short texts are memoised (``TOKEN_CACHE_ENTRIES`` x ``TOKEN_CACHE_MAX_CHARS``); an
   unbounded cache keyed on whole prompts would grow by the size of every prompt it saw.
2. The API server's embedded ingestion worker (a uvicorn subprocess, SQLite, embedded Chroma)
   over many small documents: the server's RSS after ``--warmup`` documents and after
   ``--docs`` more.

    .venv/bin/python bench/memory.py
    .venv/bin/python bench/memory.py --prompts 5000 --docs 300 --json out.json

Figures, not assertions: a growth of a few MB is allocator noise; a leak grows with the count.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._server import BenchServer, offline_env  # noqa: E402

WORDS = (
    "harbour ship cargo crew manifest customs invoice ledger engine turbine blender motor "
    "warranty return refund parcel courier tracking order address account balance token"
).split()


def rss_mb(pid: str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) + str(rng.randrange(10**6)) for _ in range(words))


def token_cache(prompts: int, seed: int) -> dict[str, Any]:
    import os

    os.environ.update(offline_env())
    from app.rag.embeddings import TOKEN_CACHE_ENTRIES, TOKEN_CACHE_MAX_CHARS, Embedder

    embedder = Embedder("minilm")
    embedder.load()
    rng = random.Random(seed)
    for _ in range(200):  # warm-up: the tokenizer copy, allocator pools
        embedder.token_length(_text(rng, 2500))
    before = rss_mb()
    long_chars = 0
    for i in range(prompts):
        # Every fourth text is a prompt of ~20 KB; the rest are splitter-sized pieces.
        text = _text(rng, 2500 if i % 4 == 0 else 40)
        long_chars += len(text) if len(text) > TOKEN_CACHE_MAX_CHARS else 0
        embedder.token_length(text)
    after = rss_mb()
    return {
        "texts": prompts,
        "long_text_mb": round(long_chars / 2**20, 1),
        "rss_before_mb": round(before, 1),
        "rss_after_mb": round(after, 1),
        "growth_mb": round(after - before, 1),
        "cache_bound": f"{TOKEN_CACHE_ENTRIES} entries x {TOKEN_CACHE_MAX_CHARS} chars",
    }


def ingestion(warmup: int, docs: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    with BenchServer(quiet=True) as server, tempfile.TemporaryDirectory() as folder:
        tenant = server.register_tenant()
        bot = server.create_chatbot(tenant)
        pid = str(server.process.pid) if server.process else "self"

        def run(count: int, start: int) -> None:
            for i in range(start, start + count):
                path = Path(folder) / f"doc{i}.txt"
                path.write_text(f"Document {i}.\n\n" + _text(rng, 120))
                server.upload(tenant, bot["id"], path)
            server.wait_for_documents(tenant, bot["id"])

        run(warmup, 0)
        before = rss_mb(pid)
        run(docs, warmup)
        after = rss_mb(pid)
    return {
        "warmup_docs": warmup,
        "docs": docs,
        "server_rss_before_mb": round(before, 1),
        "server_rss_after_mb": round(after, 1),
        "growth_mb": round(after - before, 1),
        "growth_kb_per_doc": round((after - before) * 1024 / max(docs, 1), 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=20_000, help="texts to count (20000)")
    parser.add_argument("--warmup", type=int, default=20, help="documents before measuring (20)")
    parser.add_argument("--docs", type=int, default=200, help="documents measured (200)")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    args = parser.parse_args(argv)

    cache = token_cache(args.prompts, args.seed)
    print("== token counting (this process) ==")
    print(
        f"{cache['texts']} texts ({cache['long_text_mb']} MB of them in long prompts): "
        f"RSS {cache['rss_before_mb']} -> {cache['rss_after_mb']} MB "
        f"(growth {cache['growth_mb']} MB; cache bound {cache['cache_bound']})"
    )
    worker = ingestion(args.warmup, args.docs, args.seed)
    print("== ingestion worker (the API server process) ==")
    print(
        f"{worker['docs']} documents after {worker['warmup_docs']} of warm-up: server RSS "
        f"{worker['server_rss_before_mb']} -> {worker['server_rss_after_mb']} MB "
        f"(growth {worker['growth_mb']} MB, {worker['growth_kb_per_doc']} KB per document)"
    )
    if args.json:
        args.json.write_text(json.dumps({"token_cache": cache, "ingestion": worker}, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

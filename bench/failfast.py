"""How long failures take: the wall-clock figures the test suite does not assert.

The tests prove that each bound exists (a call gives up, a parse is killed, a model that
cannot load says so); how many seconds that takes depends on the machine, so it is printed
here instead, beside the configured bound:

1. the LLM client against a server that never answers: LLM_TIMEOUT_SECONDS per attempt,
   LLM_MAX_RETRIES retries and their back-off;
2. the embedding model when its name cannot be loaded offline;
3. extraction of a file that parses too long, in the sandbox (EXTRACT_TIMEOUT_SECONDS).

    .venv/bin/python bench/failfast.py
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._server import offline_env  # noqa: E402


def llm_timeout(timeout: float, retries: int) -> tuple[float, float]:
    from app.core.config import Settings
    from app.rag.llm import LLMClient, LLMError
    from tests.fake_llm import FakeLLMServer

    with FakeLLMServer() as server:
        server.delay_seconds = 60  # never in time
        settings = Settings(
            FIREWORKS_API_KEY="bench",
            LLM_BASE_URL=server.base_url,
            LLM_TIMEOUT_SECONDS=timeout,
            LLM_MAX_RETRIES=retries,
            _env_file=None,
        )

        async def call() -> float:
            client = LLMClient(settings)
            started = time.perf_counter()
            try:
                await client.complete(
                    [{"role": "user", "content": "hi"}], max_tokens=8, temperature=0
                )
            except LLMError:
                pass
            finally:
                await client.aclose()
            return time.perf_counter() - started

        took = asyncio.run(call())
    backoff = sum(0.2 * 2**i for i in range(retries))
    return took, (retries + 1) * timeout + backoff


def model_failure() -> float:
    from app.rag.embeddings import Embedder, EmbeddingModelError

    started = time.perf_counter()
    try:
        Embedder("no-such-org/no-such-model").load()
    except EmbeddingModelError:
        pass
    return time.perf_counter() - started


def extraction_timeout(seconds: float) -> float:
    from app.rag.extract import ExtractionError, Sandbox
    from tests import docgen

    with tempfile.TemporaryDirectory() as folder:
        slow = docgen.make_slow_pdf(Path(folder) / "slow.pdf")
        quick = docgen.make_txt(Path(folder) / "quick.txt", "A short file to start the pool.")
        sandbox = Sandbox(
            timeout_s=seconds, max_memory_mb=2048, max_pages=2000, max_chars=20_000_000
        )
        try:
            sandbox.extract(quick, "txt")  # the workers are up: start-up is not timed
            started = time.perf_counter()
            try:
                sandbox.extract(slow, "pdf")
            except ExtractionError:
                pass
            return time.perf_counter() - started
        finally:
            sandbox.close()


def main() -> int:
    os.environ.update(offline_env())
    took, bound = llm_timeout(0.5, 1)
    print(
        f"LLM never answering: gave up after {took:.2f} s (bound {bound:.2f} s: 2 attempts "
        "x 0.5 s + 0.2 s back-off)"
    )
    print(f"embedding model that cannot load offline: failed after {model_failure():.2f} s")
    extraction = extraction_timeout(1.0)
    print(
        f"extraction of a file that parses too long: stopped after {extraction:.2f} s "
        "(EXTRACT_TIMEOUT_SECONDS 1; that worker is killed and replaced)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

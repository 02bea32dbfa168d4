"""Public-query latency and throughput with an LLM that answers at once.

Starts the loopback fake LLM (``tests/fake_llm.py``, in this process) and the real API server
(uvicorn subprocess, ``FIREWORKS_API_KEY=bench``, ``LLM_BASE_URL`` = the fake, raised public
rate limits, a large token balance, ``INGEST_WORKERS=1``, SQLite or ``--postgres``, embedded
Chroma, all in a temporary folder), uploads the XQuAD articles (or generated text when the
eval set is absent) to a chatbot and measures:

1. ``POST /api/public/{id}/query`` (JSON, LLM mode, varied questions, one httpx connection
   pool) at concurrency 1, 8 and 32: p50, p95, throughput, errors; the server's database
   connections (peak, sampled) and warnings/errors in its log;
2. the time from the fake LLM's first streamed chunk (timestamped where it is handed to the
   socket) to the client's first ``event: token`` (streaming requests, concurrency 1);
3. after the server has stopped: the raw in-process cost of ``Embedder.embed_query`` +
   Chroma ``collection.query(top_k)`` on the same questions, the same model run as the server
   runs it (its ``EMBEDDING_BACKEND``, ``EMBEDDING_QUANTIZE`` and exports) and the server's
   own Chroma folder (never two processes on one embedded Chroma). Server overhead = server
   p50 at concurrency 1 - that raw p50. With ``--interleave`` the embedding is also timed in
   this process right after each c=1 request (same machine load; the search still after the
   stop) and that figure is used instead.

Every phase also reports the share of the machine's CPU that other processes used
(``CpuMeter`` of bench/_server.py; with ``--postgres`` that includes PostgreSQL's own work
for the requests): on a shared machine above ~10 % the latencies are inflated and the
overhead is not trustworthy. A figure that other processes barely move:
the server process's CPU time per request at c=1 against the raw loop's CPU time per query;
it is meaningful with one torch thread on both sides (``--env OMP_NUM_THREADS=1``; with two,
OpenMP spin-waiting is counted as CPU). On a busy machine the fairest wall-clock comparison
is ``--interleave --env OMP_NUM_THREADS=1``.

Targets: overhead <= 20 ms at p50, first-token overhead <= 30 ms at p50, no error at 32.

    .venv/bin/python bench/query.py
    .venv/bin/python bench/query.py --requests 400 --levels 1,8,32,64 --json out.json
    .venv/bin/python bench/query.py --postgres
    .venv/bin/python bench/query.py --profile /tmp/c1.txt   # py-spy (collapsed stacks; .svg too)
    .venv/bin/python bench/query.py --levels 1 --streams 0 --interleave --env OMP_NUM_THREADS=1

The client and the fake LLM share this process (the fake serves from its own thread and event
loop); both wait on sockets nearly all the time. Every clock is ``time.perf_counter``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
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
from tests.fake_llm import FakeLLMServer, Send  # noqa: E402

DEFAULT_EVAL = (REPO.parent / "shared" / "eval").resolve()
RAISED_RATE_LIMIT = "100000/minute"
TARGET_OVERHEAD_MS = 20.0
TARGET_FIRST_TOKEN_MS = 30.0
TARGET_C8_RATIO = 0.7
TARGET_INGEST_RATIO = 2.0
# A printed page of running text, in characters (the --during-ingest document's unit).
PAGE_CHARS = 2_500
REPLY = (
    "According to the documents, the answer is stated in the second passage, which gives the "
    "date, the place and the people involved; the first passage adds the background."
)


def _now() -> float:
    return time.perf_counter()


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _ms(seconds: float) -> float:
    return 1000.0 * seconds


# --------------------------------------------------------------------------------------------
# The fake LLM, timestamping its first streamed chunk
# --------------------------------------------------------------------------------------------


class TimedFakeLLM(FakeLLMServer):
    """``first_chunks``: perf_counter() just before each stream's first body write."""

    def __init__(self) -> None:
        super().__init__()
        self.first_chunks: list[float] = []

    async def _stream(
        self,
        payload: dict[str, Any],
        send: Send,
        break_after: int | None,
        done: Any,
        hold: Any = None,
    ) -> None:
        first = True

        async def timed_send(message: dict[str, Any]) -> None:
            nonlocal first
            if first and message["type"] == "http.response.body":
                first = False
                stamp = _now()
                with self._lock:
                    self.first_chunks.append(stamp)
            await send(message)

        await super()._stream(payload, timed_send, break_after, done, hold)


# --------------------------------------------------------------------------------------------
# Documents and questions
# --------------------------------------------------------------------------------------------


def eval_material(folder: Path, lang: str) -> tuple[Path, list[str]] | None:
    derived = folder / "xquad" / "derived"
    article, queries = derived / f"articles.{lang}.md", derived / f"queries.{lang}.jsonl"
    if not (article.is_file() and queries.is_file()):
        return None
    with open(queries, encoding="utf-8") as handle:
        questions = [json.loads(line)["text"] for line in handle if line.strip()]
    return article, questions


def generated_material(folder: Path, seed: int) -> tuple[Path, list[str]]:
    """A 190 kB Markdown guide and questions made from its sentences (no eval set)."""
    rng = random.Random(seed)
    words = (
        "customer account order delivery invoice payment refund warranty product service "
        "support ticket policy subscription plan price discount shipping return device battery "
        "screen charger firmware update password profile address email report backup storage "
        "router printer camera kitchen filter water heating engine brake garden season office "
        "store warehouse manager staff clinic insurance claim premium training course exam "
        "licence safety inspection repair installation manual budget estimate bank card loan"
    ).split()
    small = "the of and to a in is that for with on by from at as which when after".split()
    sentences: list[str] = []
    lines: list[str] = []
    for chapter in range(48):
        lines += [f"# {' '.join(rng.sample(words, 3)).title()} {chapter + 1}", ""]
        for _ in range(5):
            paragraph = []
            for _ in range(rng.randint(4, 9)):
                sentence = " ".join(rng.choice(words + small) for _ in range(rng.randint(8, 22)))
                sentence = sentence.capitalize() + "."
                paragraph.append(sentence)
                sentences.append(sentence)
            lines += [" ".join(paragraph), ""]
    path = folder / "generated-guide.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    questions = [f"What about {' '.join(s.rstrip('.').split()[:8])}?" for s in sentences]
    rng.shuffle(questions)
    return path, questions


# --------------------------------------------------------------------------------------------
# Watching the server: database connections, log
# --------------------------------------------------------------------------------------------


class ConnectionSampler:
    """Samples the server's open database connections every 20 ms while running.

    SQLite: file descriptors of the server process pointing at the database file.
    PostgreSQL: rows of pg_stat_activity for the bench database.
    """

    def __init__(self, server: BenchServer):
        self.server = server
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._count: Callable[[], int] = self._sqlite_count
        self._pg: Any = None
        url = str(server.database_url)
        if url.startswith("postgresql"):
            import psycopg2
            from sqlalchemy.engine import make_url

            from bench._server import _psycopg2_dsn

            self._pg = psycopg2.connect(_psycopg2_dsn(url))
            self._pg.autocommit = True
            self._db_name = make_url(url).database
            self._count = self._postgres_count
        else:
            self._db_file = os.path.realpath(url.removeprefix("sqlite:///"))

    def _sqlite_count(self) -> int:
        process = self.server.process
        if process is None:
            return 0
        count = 0
        folder = f"/proc/{process.pid}/fd"
        with contextlib.suppress(OSError):
            for fd in os.listdir(folder):
                with contextlib.suppress(OSError):
                    if os.readlink(f"{folder}/{fd}") == self._db_file:
                        count += 1
        return count

    def _postgres_count(self) -> int:
        with self._pg.cursor() as cur:
            cur.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> "
                "pg_backend_pid()",
                (self._db_name,),
            )
            return int(cur.fetchone()[0])

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                self.peak = max(self.peak, self._count())
                self.samples += 1
            self._stop.wait(0.02)

    def __enter__(self) -> ConnectionSampler:
        self.peak, self.samples = 0, 0
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def close(self) -> None:
        if self._pg is not None:
            self._pg.close()
            self._pg = None


def log_problems(server: BenchServer, start: int) -> tuple[int, list[str]]:
    """Warning/error/traceback lines the server logged since byte ``start``."""
    try:
        with open(server.log_path, "rb") as handle:
            handle.seek(start)
            text = handle.read().decode(errors="replace")
    except OSError:
        return 0, []
    bad = [
        line
        for line in text.splitlines()
        if any(m in line for m in ('"WARNING"', '"ERROR"', '"CRITICAL"', "Traceback", "Error"))
    ]
    return len(bad), bad[:5]


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process, all its threads (from /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def log_size(server: BenchServer) -> int:
    try:
        return server.log_path.stat().st_size
    except OSError:
        return 0


# --------------------------------------------------------------------------------------------
# Load
# --------------------------------------------------------------------------------------------


async def run_level(
    url: str,
    headers: dict[str, str],
    questions: list[str],
    concurrency: int,
    after_each: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """len(questions) JSON requests, ``concurrency`` in flight, over one connection pool.
    ``after_each(question)`` runs (blocking the loop) after each successful request."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    latencies: list[float] = []
    message_ids: list[str] = []
    errors: Counter[str] = Counter()
    examples: list[str] = []
    modes: Counter[str] = Counter()
    next_index = concurrency  # the first ``concurrency`` questions warm the pool
    hook_seconds = 0.0

    async with httpx.AsyncClient(timeout=120.0, limits=limits) as client:
        # Warm the pool: one request per connection, not counted.
        await asyncio.gather(
            *(
                client.post(url, json={"question": q}, headers=headers)
                for q in questions[:concurrency]
            )
        )

        async def worker() -> None:
            nonlocal next_index, hook_seconds
            while next_index < len(questions):
                question = questions[next_index]
                next_index += 1
                started = _now()
                try:
                    response = await client.post(url, json={"question": question}, headers=headers)
                except httpx.HTTPError as exc:
                    errors[type(exc).__name__] += 1
                    examples.append(repr(exc)[:200])
                    continue
                seconds = _now() - started
                if response.status_code != 200:
                    errors[f"HTTP {response.status_code}"] += 1
                    examples.append(response.text[:200])
                    continue
                body = response.json()
                modes[body.get("mode", "?")] += 1
                message_ids.append(body["message_id"])
                latencies.append(seconds)
                if after_each is not None:
                    hook_started = _now()
                    after_each(question)
                    hook_seconds += _now() - hook_started

        started = _now()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = _now() - started - hook_seconds
    return {
        "concurrency": concurrency,
        "requests": len(questions) - concurrency,
        "ok": len(latencies),
        "errors": dict(errors),
        "error_count": sum(errors.values()),
        "error_examples": examples[:3],
        "modes": dict(modes),
        "seconds": wall,
        "throughput": len(latencies) / wall if wall > 0 else 0.0,
        "p50_ms": _ms(percentile(latencies, 0.5)),
        "p95_ms": _ms(percentile(latencies, 0.95)),
        "mean_ms": _ms(statistics.fmean(latencies)) if latencies else float("nan"),
        "min_ms": _ms(min(latencies)) if latencies else float("nan"),
        "message_ids": message_ids,
    }


def run_streams(
    url: str, headers: dict[str, str], questions: list[str], fake: TimedFakeLLM
) -> dict[str, Any]:
    """Streaming requests one at a time: client first token - LLM first chunk."""
    headers = {**headers, "Accept": "text/event-stream"}
    overheads: list[float] = []
    ttft: list[float] = []
    totals: list[float] = []
    errors: Counter[str] = Counter()
    with httpx.Client(timeout=120.0) as client:
        for index, question in enumerate(questions):
            before = len(fake.first_chunks)
            started = _now()
            first_token: float | None = None
            event = ""
            try:
                with client.stream(
                    "POST", url, json={"question": question, "stream": True}, headers=headers
                ) as response:
                    if response.status_code != 200:
                        response.read()
                        errors[f"HTTP {response.status_code}"] += 1
                        continue
                    for line in response.iter_lines():
                        if line.startswith("event: "):
                            event = line[7:]
                        elif line.startswith("data: ") and event == "token" and not first_token:
                            first_token = _now()
                        elif line.startswith("data: ") and event == "error":
                            errors["error event"] += 1
            except httpx.HTTPError as exc:
                errors[type(exc).__name__] += 1
                continue
            finished = _now()
            chunks = fake.first_chunks[before:]
            if first_token is None or len(chunks) != 1:
                errors[f"no token or {len(chunks)} upstream streams"] += 1
                continue
            if index == 0:
                continue  # warm-up
            overheads.append(first_token - chunks[0])
            ttft.append(first_token - started)
            totals.append(finished - started)
    return {
        "requests": len(questions) - 1,
        "ok": len(overheads),
        "errors": dict(errors),
        "error_count": sum(errors.values()),
        "overhead_p50_ms": _ms(percentile(overheads, 0.5)),
        "overhead_p95_ms": _ms(percentile(overheads, 0.95)),
        "overhead_max_ms": _ms(max(overheads)) if overheads else float("nan"),
        "ttft_p50_ms": _ms(percentile(ttft, 0.5)),
        "ttft_p95_ms": _ms(percentile(ttft, 0.95)),
        "total_p50_ms": _ms(percentile(totals, 0.5)),
    }


def history_latency(database_url: str, message_ids: list[str]) -> dict[str, float] | None:
    """The server's own ``chat_history.latency_ms`` (prepare start -> finish) for these."""
    if not message_ids:
        return None
    from sqlalchemy import create_engine, text

    wanted = {uuid.UUID(m) for m in message_ids}
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT id, latency_ms FROM chat_history")).all()
    finally:
        engine.dispose()
    values = [float(ms) for rid, ms in rows if uuid.UUID(str(rid)) in wanted]
    if not values:
        return None
    return {"p50_ms": percentile(values, 0.5), "p95_ms": percentile(values, 0.95)}


# --------------------------------------------------------------------------------------------
# Raw embedding + search, in this process, on the server's Chroma folder
# --------------------------------------------------------------------------------------------


class InterleavedEmbedder:
    """The same model in this process, timing ``embed_query`` right after each c=1 request,
    so the raw embedding cost is measured under the same machine load as the request."""

    def __init__(self, model: str, env: dict[str, str], torch_threads: int | None = None):
        import torch

        if torch_threads:  # before loading: an exported model takes its thread count then
            torch.set_num_threads(torch_threads)
        self.embedder = server_embedder(model, env)
        self.embedder.load()
        for _ in range(3):  # warm-up
            self.embedder.embed_query("warm-up question about the documents")
        self.timings: list[tuple[str, float, list[float]]] = []

    def __call__(self, question: str) -> None:
        started = _now()
        vector = self.embedder.embed_query(question)
        self.timings.append((question, _now() - started, vector))


def server_embedder(model: str, env: dict[str, str]) -> Any:
    """The model as the server runs it: the same EMBEDDING_BACKEND, EMBEDDING_QUANTIZE and
    export folder (the server's environment, else the settings' defaults), so the raw figure
    is that of the same model variant, not of torch against an exported model."""
    from app.core.config import Settings
    from app.rag.embeddings import Embedder

    fields = Settings.model_fields

    def setting(name: str) -> str:
        return env.get(name) or str(fields[name].default)

    return Embedder(
        model,
        backend=setting("EMBEDDING_BACKEND"),
        quantize=setting("EMBEDDING_QUANTIZE"),
        cache_dir=setting("EMBEDDING_CACHE_DIR"),
    )


def raw_cost(
    chroma_path: Path,
    chatbot_id: str,
    model: str,
    top_k: int,
    questions: list[str],
    interleaved: list[tuple[str, float, list[float]]],
    env: dict[str, str],
    torch_threads: int | None = None,
) -> dict[str, Any]:
    """After the server stopped, on its Chroma folder: search for the interleaved vectors
    (raw = interleaved embed + this search, per question); then embed + search again, all
    now, for comparison; and the app's ``VectorStore.query`` (get_collection + count + query).
    """
    import chromadb
    import torch
    from chromadb.config import Settings as ChromaSettings

    from app.rag.vector_store import VectorStore

    if torch_threads:  # before loading: an exported model takes its thread count then
        torch.set_num_threads(torch_threads)
    embedder = server_embedder(model, env)
    embedder.load()
    client = chromadb.PersistentClient(
        path=str(chroma_path), settings=ChromaSettings(anonymized_telemetry=False)
    )
    collection = client.get_collection(
        f"chatbot_{uuid.UUID(chatbot_id).hex}", embedding_function=None
    )
    store = VectorStore(path=chroma_path)
    bot = uuid.UUID(chatbot_id)

    def search(vector: list[float]) -> float:
        started = _now()
        collection.query(
            query_embeddings=[vector],  # type: ignore[arg-type]
            n_results=top_k,
            include=["documents", "metadatas", "distances"],
        )
        return _now() - started

    for question in questions[:5]:  # warm-up
        vector = embedder.embed_query(question)
        search(vector)
        store.query(bot, embedder.model_name, vector, top_k)
    out: dict[str, Any] = {
        "questions": len(questions),
        "torch_threads": torch.get_num_threads(),
        "backend": embedder.backend,
        "chunks": collection.count(),
    }
    if interleaved:
        embeds = [seconds for _, seconds, _ in interleaved]
        searches = []
        for question, _, vector in interleaved:
            # As in the server: the search follows an embedding (torch's threads may still
            # be spinning), so embed first, untimed, then time the search.
            embedder.embed_query(question)
            searches.append(search(vector))
        totals = [e + s for e, s in zip(embeds, searches, strict=True)]
        out["interleaved"] = {
            "questions": len(interleaved),
            "embed_p50_ms": _ms(percentile(embeds, 0.5)),
            "search_p50_ms": _ms(percentile(searches, 0.5)),
            "p50_ms": _ms(percentile(totals, 0.5)),
            "p95_ms": _ms(percentile(totals, 0.95)),
        }
    embeds, searches, totals = [], [], []
    cpu_started = time.process_time()
    for question in questions:
        started = _now()
        vector = embedder.embed_query(question)
        embeds.append(_now() - started)
        searches.append(search(vector))
        totals.append(embeds[-1] + searches[-1])
    cpu_ms = 1000 * (time.process_time() - cpu_started) / max(1, len(questions))
    out["after_stop"] = {
        "questions": len(questions),
        # Questions per second, one after another: what one process does without a server.
        "rate_qps": len(totals) / sum(totals) if totals else float("nan"),
        "cpu_ms_per_query": cpu_ms,
        "embed_p50_ms": _ms(percentile(embeds, 0.5)),
        "search_p50_ms": _ms(percentile(searches, 0.5)),
        "p50_ms": _ms(percentile(totals, 0.5)),
        "p95_ms": _ms(percentile(totals, 0.95)),
    }
    vectors = [v for _, _, v in interleaved] or [embedder.embed_query(q) for q in questions]
    app_store = []
    for vector in vectors:
        started = _now()
        store.query(bot, embedder.model_name, vector, top_k)
        app_store.append(_now() - started)
    out["app_vector_store_query_p50_ms"] = _ms(percentile(app_store, 0.5))
    return out


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


def query_target(
    base_url: str, endpoint: str, tenant: Any, bot: dict[str, Any]
) -> tuple[str, dict[str, str]]:
    """The URL and headers of the endpoint under test: the customer's (JWT) or the public
    one (the chatbot's API key)."""
    if endpoint == "customer":
        return f"{base_url}/api/{tenant.customer_id}/{bot['id']}/query", dict(tenant.headers)
    return f"{base_url}/api/public/{bot['id']}/query", {"X-API-Key": bot["api_key"]}


@contextlib.contextmanager
def cpu_meter(server: BenchServer | None) -> Any:
    with CpuMeter(server) as meter:
        yield meter


def others_share(meter: Any) -> float | None:
    """Share of the machine's CPU that processes other than ours used during the span."""
    return None if meter is None else float(meter.others_share)


def busy_note(share: float | None) -> str:
    if share is None:
        return ""
    note = f"  [other processes: {100 * share:.0f}% of the CPU]"
    return note + (" (busy machine: figures inflated)" if share > 0.1 else "")


def _questions(pool: list[str], start: int, count: int) -> list[str]:
    return [pool[(start + i) % len(pool)] for i in range(count)]


def start_profiler(pid: int, output: Path, seconds: float) -> subprocess.Popen[bytes] | None:
    py_spy = REPO / ".venv" / "bin" / "py-spy"
    if not py_spy.exists():
        print("warning: .venv/bin/py-spy missing (.venv/bin/pip install py-spy); no profile")
        return None
    return subprocess.Popen(
        [
            str(py_spy),
            "record",
            "--pid",
            str(pid),
            "--output",
            str(output),
            "--duration",
            str(int(seconds)),
            "--rate",
            "250",
            "--threads",
            "--nonblocking",  # do not pause the server to sample (on-CPU samples only)
            "--format",
            "raw" if output.suffix == ".txt" else "flamegraph",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )


def bench_env(
    parser: argparse.ArgumentParser, args: argparse.Namespace, fake: FakeLLMServer
) -> dict[str, str]:
    """The server's settings: the fake LLM, limits that the load does not hit, --env."""
    extra_env = {
        "FIREWORKS_API_KEY": "bench",
        "LLM_BASE_URL": fake.base_url,
        "LLM_MAX_RETRIES": "0",
        "RATE_LIMIT_PUBLIC_PER_CLIENT": RAISED_RATE_LIMIT,
        "RATE_LIMIT_PUBLIC_PER_CHATBOT": RAISED_RATE_LIMIT,
        "RATE_LIMIT_PUBLIC_PER_SESSION": RAISED_RATE_LIMIT,
        "SIGNUP_TOKENS": "1000000000",
        # Concurrency 32 on one chatbot: the per-chatbot answer limit is not under test.
        "MAX_CONCURRENT_ANSWERS_PER_CHATBOT": "64",
        "INGEST_WORKERS": "1",
    }
    return server_env(parser, args.env, extra_env)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--eval", type=Path, default=DEFAULT_EVAL, help=f"eval folder (default {DEFAULT_EVAL})"
    )
    parser.add_argument("--lang", default="en", choices=["en", "de"])
    parser.add_argument(
        "--model", default="minilm", help="EMBEDDING_MODEL (default minilm, the packaged model)"
    )
    parser.add_argument("--levels", default="1,8,32", help="concurrency levels (1,8,32)")
    parser.add_argument("--requests", type=int, default=200, help="requests per level (200)")
    parser.add_argument(
        "--requests-c1", type=int, default=150, help="requests at concurrency 1 (150)"
    )
    parser.add_argument("--streams", type=int, default=50, help="streaming requests (50)")
    parser.add_argument(
        "--llm-delay",
        type=float,
        default=0.05,
        help="seconds the fake LLM waits before streaming (first-token run only; 0.05)",
    )
    parser.add_argument(
        "--interleave",
        action="store_true",
        help="also time embed_query in this process right after each c=1 request (under the "
        "same machine load) and use that, plus the search after stop, as the raw cost",
    )
    parser.add_argument("--top-k", type=int, default=5, help="the chatbot's top_k (5)")
    database = parser.add_mutually_exclusive_group()
    database.add_argument("--database-url", help="use this database (default: SQLite)")
    database.add_argument(
        "--postgres",
        action="store_true",
        help="a fresh database bench_<hex> on postgres@127.0.0.1:5432, dropped afterwards",
    )
    parser.add_argument(
        "--endpoint",
        choices=["customer", "public"],
        default="customer",
        help="customer: POST /api/{customer_id}/{chatbot_id}/query with the owner's JWT "
        "(default); public: POST /api/public/{chatbot_id}/query with the chatbot's key",
    )
    parser.add_argument(
        "--during-ingest",
        action="store_true",
        help="instead: public-query p95 idle and while a 300-page document is embedded, with "
        "the embedded worker (INGEST_WORKERS=1) and in the cluster layout (a Chroma server, "
        "the API with INGEST_WORKERS=0 and a standalone `python -m app.ingest`)",
    )
    parser.add_argument(
        "--ingest-pages", type=int, default=300, help="pages of the --during-ingest document"
    )
    parser.add_argument(
        "--layouts",
        default="embedded,cluster",
        help="--during-ingest: the layouts to run, comma-separated (embedded, cluster)",
    )
    parser.add_argument("--target-overhead", type=float, default=TARGET_OVERHEAD_MS)
    parser.add_argument("--target-c8-ratio", type=float, default=TARGET_C8_RATIO)
    parser.add_argument("--target-ingest-ratio", type=float, default=TARGET_INGEST_RATIO)
    parser.add_argument("--target-first-token", type=float, default=TARGET_FIRST_TOKEN_MS)
    parser.add_argument(
        "--profile",
        type=Path,
        help="py-spy record the server during the c=1 run into this file (.svg or .txt)",
    )
    parser.add_argument("--seed", type=int, default=7, help="question order")
    add_run_options(parser, "OMP_NUM_THREADS=1")
    args = parser.parse_args(argv)
    install_sigterm_handler()
    if args.during_ingest:
        from bench._during_ingest import during_ingest

        return during_ingest(parser, args)
    levels = [int(x) for x in args.levels.split(",") if x.strip()]

    workdir = Path(tempfile.mkdtemp(prefix="bench-query-"))
    fake = TimedFakeLLM()
    fake.reply = REPLY
    server: BenchServer | None = None
    sampler: ConnectionSampler | None = None
    figures: dict[str, Any] = {"model": args.model, "levels": {}}
    try:
        material = eval_material(args.eval, args.lang)
        if material is None:
            print(f"no eval set under {args.eval}: generating a document and questions")
            material = generated_material(workdir, args.seed)
        document, pool = material
        random.Random(args.seed).shuffle(pool)
        fake.start()
        extra_env = bench_env(parser, args, fake)
        # The raw measurement uses the server's torch thread count (e.g. --env OMP_NUM_THREADS=1).
        torch_threads = (
            int(extra_env["OMP_NUM_THREADS"]) if "OMP_NUM_THREADS" in extra_env else None
        )
        server = BenchServer(
            model=args.model,
            database_url=args.database_url,
            postgres=args.postgres,
            extra_env=extra_env,
            keep=args.keep,
        )
        started = _now()
        server.start()
        db_kind = "postgresql" if str(server.database_url).startswith("postgresql") else "sqlite"
        figures["database"] = db_kind
        print(
            f"server ready on {server.base_url} in {_now() - started:.1f} s (model {args.model}, "
            f"{db_kind}, LLM mode against the fake at {fake.base_url}; rate limits "
            f"{RAISED_RATE_LIMIT} per client and per chatbot)"
        )
        tenant = server.register_tenant()
        bot = server.create_chatbot(tenant, top_k=args.top_k)
        started = _now()
        response = server.upload(tenant, bot["id"], document)
        if response.status_code != 202:
            raise ServerError(f"upload refused: {response.status_code} {response.text[:300]}")
        docs = server.wait_for_documents(tenant, bot["id"])
        if docs[0]["status"] != "ready":
            raise ServerError(f"document {docs[0]['status']}: {docs[0].get('error')}")
        chunks = docs[0]["chunk_count"]
        print(
            f"ingested {document.name} ({document.stat().st_size / 1e3:.0f} kB): {chunks} chunks "
            f"in {_now() - started:.1f} s; {len(pool)} distinct questions; top_k {args.top_k}"
        )
        figures.update(document=str(document), chunks=chunks, top_k=args.top_k)

        url, headers = query_target(server.base_url, args.endpoint, tenant, bot)
        print(f"measuring POST {url.removeprefix(server.base_url)}")
        figures["endpoint"] = args.endpoint
        sampler = ConnectionSampler(server)
        c1_questions: list[str] = []
        interleaved: InterleavedEmbedder | None = None
        if 1 in levels and args.interleave:
            interleaved = InterleavedEmbedder(args.model, server.env(), torch_threads)
        offset = 0
        for level in levels:
            count = args.requests_c1 if level == 1 else args.requests
            questions = _questions(pool, offset, count + level)  # + the warm-up
            offset += count + level
            if level == 1:
                c1_questions = questions[1:]
            profiler = None
            if level == 1 and args.profile and server.process is not None:
                profiler = start_profiler(server.process.pid, args.profile, 3600)
            log_at = log_size(server)
            server_pid = server.process.pid if server.process is not None else 0
            cpu_before = process_cpu_seconds(server_pid)
            with sampler, cpu_meter(server) as meter:
                hook = interleaved if level == 1 else None
                result = asyncio.run(run_level(url, headers, questions, level, hook))
            result["other_cpu_share"] = others_share(meter)
            # Warm-up requests included: every request the server answered in the span.
            result["server_cpu_ms_per_request"] = (
                1000 * (process_cpu_seconds(server_pid) - cpu_before) / len(questions)
            )
            if profiler is not None:
                profiler.send_signal(2)  # SIGINT: py-spy writes what it has
                profiler.wait(60)
                print(f"profile written to {args.profile}")
            problems, examples = log_problems(server, log_at)
            result.update(
                db_connections_peak=sampler.peak,
                server_log_problems=problems,
                server_log_examples=examples,
            )
            print(
                f"c={level:<3} {result['ok']:>4} ok  {result['error_count']} errors  "
                f"p50 {result['p50_ms']:7.1f} ms  p95 {result['p95_ms']:7.1f} ms  "
                f"{result['throughput']:6.1f} req/s  db connections peak {sampler.peak}  "
                f"log warnings/errors {problems}{busy_note(result['other_cpu_share'])}"
            )
            figures["levels"][str(level)] = result

        if args.streams > 0:
            fake.delay_seconds = args.llm_delay
            stream_questions = _questions(pool, offset, args.streams + 1)
            log_at = log_size(server)
            with cpu_meter(server) as meter:
                streams = run_streams(url, headers, stream_questions, fake)
            streams["other_cpu_share"] = others_share(meter)
            fake.delay_seconds = 0.0
            streams["server_log_problems"] = log_problems(server, log_at)[0]
            streams["llm_delay_s"] = args.llm_delay
            figures["stream"] = streams
            print(
                f"streaming c=1: {streams['ok']} ok, {streams['error_count']} errors; first-token "
                f"overhead p50 {streams['overhead_p50_ms']:.2f} ms p95 "
                f"{streams['overhead_p95_ms']:.2f} ms"
            )

        sampler.close()
        server.stop()
        if not c1_questions:  # no c=1 level: the raw cost on the first questions of the pool
            c1_questions = _questions(pool, 0, args.requests_c1)
        for result in figures["levels"].values():
            result["server_recorded"] = history_latency(
                str(server.database_url), result.pop("message_ids")
            )
        print("raw embedding + search in this process (server stopped) ...")
        with cpu_meter(None) as meter:
            figures["raw"] = raw_cost(
                server.chroma_path,
                bot["id"],
                args.model,
                args.top_k,
                c1_questions,
                interleaved.timings if interleaved is not None else [],
                server.env(),
                torch_threads,
            )
        figures["raw"]["other_cpu_share"] = others_share(meter)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except ServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        if sampler is not None:
            sampler.close()
        if server is not None:
            server.cleanup()
        fake.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    report(args, figures)
    return 0


def report(args: argparse.Namespace, figures: dict[str, Any]) -> None:
    raw = figures["raw"]
    print(
        f"\n== {figures['endpoint']} query, JSON, LLM answering at once ({figures['database']}, "
        f"{figures['chunks']} chunks, top_k {figures['top_k']}) =="
    )
    print(
        f"{'conc':>4}  {'ok':>4}  {'err':>3}  {'p50 ms':>7}  {'p95 ms':>7}  {'req/s':>6}  "
        f"{'server-recorded p50':>19}  {'server CPU/req':>14}  {'db conns':>8}  {'log w/e':>7}"
    )
    for level, r in figures["levels"].items():
        recorded = r.get("server_recorded") or {}
        print(
            f"{level:>4}  {r['ok']:>4}  {r['error_count']:>3}  {r['p50_ms']:7.1f}  "
            f"{r['p95_ms']:7.1f}  {r['throughput']:6.1f}  "
            f"{recorded.get('p50_ms', float('nan')):17.0f} ms  "
            f"{r['server_cpu_ms_per_request']:11.1f} ms  {r['db_connections_peak']:>8}  "
            f"{r['server_log_problems']:>7}"
        )
        for example in r["error_examples"]:
            print(f"      error: {example}")
    print(
        "(server-recorded: chat_history.latency_ms, from retrieval start to the history write; "
        "server CPU/req: the server process's user+system CPU over the level / requests)"
    )

    print(
        f"\n== raw in-process Embedder.embed_query + Chroma collection.query(top_k="
        f"{figures['top_k']}), {raw['backend']}, {raw['torch_threads']} threads =="
    )
    rows = [("after_stop", "all after the server stopped")]
    if "interleaved" in raw:
        rows.insert(0, ("interleaved", "embed right after each c=1 request, search after stop"))
    for key, label in rows:
        r = raw[key]
        print(
            f"{label}: {r['questions']} questions, p50 {r['p50_ms']:.1f} ms, p95 "
            f"{r['p95_ms']:.1f} ms (p50 of the parts: embed {r['embed_p50_ms']:.1f}, search "
            f"{r['search_p50_ms']:.2f})"
            + (f"; CPU {r['cpu_ms_per_query']:.1f} ms/query" if "cpu_ms_per_query" in r else "")
        )
    print(
        f"the app's VectorStore.query (get_collection + count + query) p50 "
        f"{raw['app_vector_store_query_p50_ms']:.2f} ms{busy_note(raw.get('other_cpu_share'))}"
    )
    reference = raw["interleaved"] if args.interleave else raw["after_stop"]
    c1 = figures["levels"].get("1")
    verdicts: dict[str, bool] = {}
    if c1 is not None:
        overhead = c1["p50_ms"] - reference["p50_ms"]
        verdicts["overhead"] = overhead <= args.target_overhead
        figures["overhead_ms"] = overhead
        print(
            f"\nserver overhead at p50 = {c1['p50_ms']:.1f} - {reference['p50_ms']:.1f} = "
            f"{overhead:.1f} ms  {'PASS' if verdicts['overhead'] else 'FAIL'} "
            f"(target <= {args.target_overhead:.0f} ms)"
        )
        cpu_overhead = c1["server_cpu_ms_per_request"] - raw["after_stop"]["cpu_ms_per_query"]
        figures["cpu_overhead_ms"] = cpu_overhead
        print(
            f"in CPU time (insensitive to other processes): server "
            f"{c1['server_cpu_ms_per_request']:.1f} ms/request at c=1 - raw "
            f"{raw['after_stop']['cpu_ms_per_query']:.1f} ms/query = {cpu_overhead:.1f} ms"
            + (
                ""
                if raw["torch_threads"] == 1
                else " (not meaningful with >1 torch thread: OpenMP spin-waiting counts as "
                "CPU; use --env OMP_NUM_THREADS=1 for this figure)"
            )
        )
    streams = figures.get("stream")
    if streams is not None:
        verdicts["first_token"] = (
            streams["ok"] > 0 and streams["overhead_p50_ms"] <= args.target_first_token
        )
        print(
            f"first-token overhead (client's first `token` event - fake LLM's first chunk), "
            f"{streams['ok']} streams at c=1, LLM delay {streams['llm_delay_s'] * 1000:.0f} ms: "
            f"p50 {streams['overhead_p50_ms']:.2f} ms, p95 {streams['overhead_p95_ms']:.2f} ms, "
            f"max {streams['overhead_max_ms']:.2f} ms  "
            f"{'PASS' if verdicts['first_token'] else 'FAIL'} (target <= "
            f"{args.target_first_token:.0f} ms at p50); time to first token p50 "
            f"{streams['ttft_p50_ms']:.1f} ms, whole stream p50 {streams['total_p50_ms']:.1f} ms"
            f"{busy_note(streams.get('other_cpu_share'))}"
        )
    rate = reference.get("rate_qps") or raw["after_stop"]["rate_qps"]
    for r in figures["levels"].values():
        r["ratio_to_raw_rate"] = r["throughput"] / rate
    c8 = figures["levels"].get("8")
    if c8 is not None:
        verdicts["concurrency_8"] = c8["ratio_to_raw_rate"] >= args.target_c8_ratio
        print(
            f"concurrency 8: {c8['throughput']:.1f} q/s against the raw sequential "
            f"{rate:.1f} q/s = {c8['ratio_to_raw_rate']:.2f}x  "
            f"{'PASS' if verdicts['concurrency_8'] else 'FAIL'} (target >= "
            f"{args.target_c8_ratio:.2f}x); other levels: "
            + ", ".join(
                f"c={level} {r['ratio_to_raw_rate']:.2f}x" for level, r in figures["levels"].items()
            )
        )
    top = max(figures["levels"], key=int, default=None)
    if top is not None:
        r = figures["levels"][top]
        verdicts["errors"] = r["error_count"] == 0 and r["ok"] == r["requests"]
        print(
            f"errors at concurrency {top}: {r['error_count']}  "
            f"{'PASS' if verdicts['errors'] else 'FAIL'} (target 0); peak database connections "
            f"{r['db_connections_peak']}"
        )
    figures["pass"] = verdicts
    write_figures(args.json, figures)


if __name__ == "__main__":
    sys.exit(main())

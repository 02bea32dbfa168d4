"""Many chatbots: public-query latency and server memory at 1, 100 and 500 chatbots.

Starts the real API server (uvicorn subprocess, PostgreSQL, embedded Chroma, the packaged
MiniLM, the embedded ingestion worker, extractive answers, raised public rate limits and
token balances) and grows it through the API: tenants of at most MAX_CHATBOTS_PER_CUSTOMER
chatbots each, every chatbot with one small document of its own (a few passages). At each
size, once every document is `ready`:

1. a warm-up round (one question per chatbot, at most ``--warmup``), then ``--queries``
   ``POST /api/public/{id}/query`` at concurrency 1, each to a chatbot drawn at random from
   all of them (so a per-chatbot cache that is too small shows as misses): p50, p95;
2. the server process's RSS, open file descriptors and threads after those queries.

Then, after the server has stopped, the raw cost in a separate process on the server's own
Chroma folder (never two processes on one embedded Chroma): ``embed_query`` + the collection's
``query(top_k)`` over the same questions, spread over 1 and over all the collections, with a
fresh client each. That says how much of any growth is Chroma's own.

With ``--chroma-server`` the vectors live in a Chroma server (``chroma run``, started here on
loopback; CHROMA_URL), as in the distributed layout: the API process's RSS is then the
platform's own, and the Chroma server's RSS is printed beside it (the raw search goes to the
same server).

With ``--standalone-worker`` (implies ``--chroma-server``) the documents are ingested by a
``python -m app.ingest`` process beside the API server (which runs with INGEST_WORKERS=0), as
in the distributed layout: the API process's RSS growth is then the cost of serving more
chatbots alone, and the worker's RSS (the cost of ingesting their documents) is printed
beside it. Either way each size reports the API's RSS before its queries too, so the growth
while ingesting and the growth while answering over more chatbots show apart.

Targets: p95 at the largest size <= 1.2x p95 at 1 chatbot; RSS per extra chatbot <= 50 KB
(from the smallest to the largest size). With three sizes or more the growth from the
next-to-last size to the last is printed too: one-time costs (an ingesting process's model
buffers for its largest batch, reached with the first full batches) are behind by then.

    .venv/bin/python bench/scale.py
    .venv/bin/python bench/scale.py --sizes 1,100,500 --queries 300 --json out.json
    .venv/bin/python bench/scale.py --env CHROMA_HANDLE_CACHE_SIZE=64
    .venv/bin/python bench/scale.py --chroma-server
    .venv/bin/python bench/scale.py --standalone-worker --sizes 1,100,300 --queries 100

The server's CPU time per question (its process group, during the measured queries) is
printed too: unlike wall time, other processes on the machine barely move it. Every phase
reports the share of the machine's CPU that other processes used: above ~10 %
the latencies are inflated.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
for _key, _value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1")):
    os.environ.setdefault(_key, _value)

import httpx  # noqa: E402

from bench._server import (  # noqa: E402
    VENV_BIN,
    BenchServer,
    CpuMeter,
    ServerError,
    add_run_options,
    free_port,
    install_sigterm_handler,
    process_group_cpu_seconds,
    server_env,
    write_figures,
)
from tests.factories import Tenant  # noqa: E402

TARGET_P95_RATIO = 1.2
TARGET_KB_PER_CHATBOT = 50.0
BOTS_PER_TENANT = 50  # the default MAX_CHATBOTS_PER_CUSTOMER
RAISED = "10000000/minute"
TOPICS = (
    "harbour ship cargo crew manifest customs invoice ledger engine turbine blender motor "
    "warranty return refund parcel courier tracking order address account balance garden "
    "kettle bicycle lantern violin glacier orchard meadow falcon"
).split()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def process_status(pid: int) -> dict[str, float]:
    status = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "Threads"):
            status[key] = float(value.split()[0])
    return {
        "rss_mb": round(status.get("VmRSS", 0.0) / 1024, 1),
        "threads": status.get("Threads", 0.0),
        "open_fds": float(len(os.listdir(f"/proc/{pid}/fd"))),
    }


def document_for(index: int, rng: random.Random) -> tuple[str, list[str]]:
    """A small document of its own for chatbot `index`, and questions it answers."""
    words = rng.sample(TOPICS, 6)
    facts = [
        (
            f"The {word} policy of unit {index}",
            f"The {word} policy of unit {index} says that every {word} request is handled "
            f"within {rng.randrange(2, 90)} days by the team in room {rng.randrange(100, 999)}, "
            f"and that the {word} form number {rng.randrange(10**5)} must be signed first.",
        )
        for word in words
    ]
    body = f"# Handbook of unit {index}\n\n" + "\n\n".join(
        f"## {title}\n\n{text}" for title, text in facts
    )
    questions = [f"What does the {w} policy of unit {index} say?" for w in words]
    return body + "\n", questions


class Fleet:
    """The tenants and chatbots created so far, each chatbot with its questions."""

    def __init__(self, server: BenchServer, folder: Path, seed: int):
        self.server = server
        self.folder = folder
        self.rng = random.Random(seed)
        self.tenants: list[Tenant] = []
        self.bots: list[dict[str, Any]] = []  # {"id", "api_key", "tenant", "questions"}

    def grow(self, size: int) -> float:
        """Create chatbots (with their document) up to `size`; wait for every document."""
        started = time.perf_counter()
        new = []
        while len(self.bots) < size:
            index = len(self.bots)
            if index % BOTS_PER_TENANT == 0:
                self.tenants.append(self.server.register_tenant())
            tenant = self.tenants[-1]
            bot = self.server.create_chatbot(tenant, name=f"Unit {index}")
            text, questions = document_for(index, self.rng)
            path = self.folder / f"unit-{index}.md"
            path.write_text(text)
            response = self.server.upload(tenant, bot["id"], path)
            if response.status_code != 202:
                raise ServerError(f"upload -> {response.status_code}: {response.text[:300]}")
            path.unlink()
            entry = {"id": bot["id"], "api_key": bot["api_key"], "tenant": tenant}
            entry["questions"] = questions
            self.bots.append(entry)
            new.append(entry)
        for entry in new:
            documents = self.server.wait_for_documents(entry["tenant"], entry["id"], poll=0.1)
            failed = [d["filename"] for d in documents if d["status"] != "ready"]
            if failed:
                raise ServerError(f"documents not ready: {failed}")
        return time.perf_counter() - started

    def ask(self, client: httpx.Client, bot: dict[str, Any]) -> float:
        question = self.rng.choice(bot["questions"])
        started = time.perf_counter()
        response = client.post(
            f"/api/public/{bot['id']}/query",
            json={"question": question},
            headers={"X-API-Key": bot["api_key"]},
        )
        elapsed = time.perf_counter() - started
        if response.status_code != 200:
            raise ServerError(f"query -> {response.status_code}: {response.text[:300]}")
        if not response.json().get("sources"):
            raise ServerError(f"no sources for {question!r}: {response.text[:300]}")
        return elapsed


class ChromaServer:
    """`chroma run` on a free loopback port with a data folder of its own."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ChromaServer:
        command = [str(VENV_BIN / "chroma"), "run", "--path", str(self.folder / "chroma")]
        command += ["--host", "127.0.0.1", "--port", str(self.port)]
        log = open(self.folder / "chroma.log", "ab")  # noqa: SIM115 - the child keeps it
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{self.url}/api/v2/heartbeat", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise ServerError("the Chroma server did not start")
            time.sleep(0.2)

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)


class IngestWorkerProcess:
    """`python -m app.ingest` with the API server's settings (database, uploads, Chroma
    server), in a session of its own."""

    def __init__(self, server: BenchServer):
        self.server = server
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> IngestWorkerProcess:
        assert self.server.workdir is not None
        env = self.server.env()
        env["INGEST_WORKERS"] = "1"
        log = open(self.server.workdir / "worker.log", "ab")  # noqa: SIM115 - the child keeps it
        self.process = subprocess.Popen(
            [str(VENV_BIN / "python"), "-m", "app.ingest"],
            cwd=self.server.workdir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def __exit__(self, *exc: object) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, 9)
                process.wait(10)


def measure(
    fleet: Fleet,
    queries: int,
    warmup: int,
    chroma: ChromaServer | None = None,
    worker: IngestWorkerProcess | None = None,
) -> dict[str, Any]:
    server = fleet.server
    assert server.process is not None
    before_queries = process_status(server.process.pid)["rss_mb"]
    with httpx.Client(base_url=server.base_url, timeout=60.0) as client:
        for bot in fleet.bots[:warmup]:
            fleet.ask(client, bot)
        latencies = []
        cpu_before = process_group_cpu_seconds(server.process.pid)
        with CpuMeter(server) as meter:
            for _ in range(queries):
                latencies.append(fleet.ask(client, fleet.rng.choice(fleet.bots)))
        cpu = process_group_cpu_seconds(server.process.pid) - cpu_before
    return {
        "chatbots": len(fleet.bots),
        "queries": queries,
        "p50_ms": round(1000 * percentile(latencies, 0.5), 2),
        "p95_ms": round(1000 * percentile(latencies, 0.95), 2),
        # The server's CPU per question: what a busy machine moves least.
        "server_cpu_ms_per_query": round(1000 * cpu / max(1, queries), 2),
        "other_share": round(meter.others_share, 3),
        "rss_before_queries_mb": before_queries,
        **process_status(server.process.pid),
        **(
            {"chroma_rss_mb": process_status(chroma.process.pid)["rss_mb"]}
            if chroma and chroma.process
            else {}
        ),
        **(
            {"worker_rss_mb": process_status(worker.process.pid)["rss_mb"]}
            if worker and worker.process
            else {}
        ),
    }


# --- the raw cost, in a separate process on the stopped server's Chroma folder ---------------


def raw_worker(args: argparse.Namespace) -> int:
    """`--raw-worker`: time embed + search over 1 and over all collections; JSON to stdout."""
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    from app.rag.embeddings import Embedder

    spec = json.loads(Path(args.raw_worker).read_text())
    embedder = Embedder(args.model)
    embedder.load()
    rng = random.Random(args.seed)
    out: dict[str, Any] = {}
    settings = ChromaSettings(anonymized_telemetry=False)
    for label, bots in (("one_collection", spec["bots"][:1]), ("all_collections", spec["bots"])):
        if spec.get("chroma_url"):
            port = int(spec["chroma_url"].rsplit(":", 1)[1])
            client = chromadb.HttpClient(host="127.0.0.1", port=port, settings=settings)
        else:
            client = chromadb.PersistentClient(path=spec["chroma_path"], settings=settings)
        handles: dict[str, Any] = {}
        totals = []
        for i in range(args.warmup + args.queries):
            bot = bots[0] if len(bots) == 1 else rng.choice(bots)
            started = time.perf_counter()
            vector = embedder.embed_query(rng.choice(bot["questions"]))
            handle = handles.get(bot["id"])
            if handle is None:
                name = f"chatbot_{uuid.UUID(bot['id']).hex}"
                handle = handles[bot["id"]] = client.get_collection(name, embedding_function=None)
            handle.query(query_embeddings=[vector], n_results=5)
            if i >= args.warmup:
                totals.append(time.perf_counter() - started)
        out[label] = {
            "collections": len(bots),
            "p50_ms": round(1000 * percentile(totals, 0.5), 2),
            "p95_ms": round(1000 * percentile(totals, 0.95), 2),
        }
        client.clear_system_cache()
    print(json.dumps(out))
    return 0


def raw_cost(
    server: BenchServer, fleet: Fleet, args: argparse.Namespace, chroma_url: str | None
) -> dict[str, Any]:
    spec = {
        "chroma_path": str(server.chroma_path),
        "chroma_url": chroma_url,
        "bots": [{"id": b["id"], "questions": b["questions"]} for b in fleet.bots],
    }
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(spec, handle)
    try:
        command = [str(VENV_BIN / "python"), str(Path(__file__).resolve())]
        command += ["--raw-worker", handle.name, "--model", args.model, "--seed", str(args.seed)]
        command += ["--queries", str(args.queries), "--warmup", str(min(args.warmup, 20))]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        with CpuMeter() as meter:
            done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        if done.returncode != 0:
            raise ServerError(f"raw worker failed:\n{done.stderr[-2000:]}")
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        result["other_share"] = round(meter.others_share, 3)
        return result
    finally:
        os.unlink(handle.name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1,100,500", help="chatbot counts (1,100,500)")
    parser.add_argument("--queries", type=int, default=300, help="queries per size (300)")
    parser.add_argument(
        "--warmup", type=int, default=500, help="warm-up questions, one per chatbot (500)"
    )
    parser.add_argument("--model", default="minilm", help="EMBEDDING_MODEL (minilm)")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument(
        "--chroma-server", action="store_true", help="vectors in a Chroma server (CHROMA_URL)"
    )
    parser.add_argument(
        "--standalone-worker",
        action="store_true",
        help="ingest in a `python -m app.ingest` process, not in the API server "
        "(implies --chroma-server)",
    )
    parser.add_argument("--raw-worker", help=argparse.SUPPRESS)
    add_run_options(parser, "CHROMA_HANDLE_CACHE_SIZE=64")
    args = parser.parse_args(argv)
    if args.raw_worker:
        return raw_worker(args)
    install_sigterm_handler()
    sizes = sorted({int(x) for x in args.sizes.split(",") if x.strip()})
    env = server_env(
        parser,
        args.env,
        {
            "SIGNUP_TOKENS": "1000000000",
            "RATE_LIMIT_REGISTRATIONS_PER_IP": RAISED,
            "RATE_LIMIT_PUBLIC_PER_CLIENT": RAISED,
            "RATE_LIMIT_PUBLIC_PER_CHATBOT": RAISED,
            "MAX_CHATBOTS_PER_CUSTOMER": str(BOTS_PER_TENANT),
        },
    )
    if args.standalone_worker:
        args.chroma_server = True  # never two processes on one embedded Chroma
        env["INGEST_WORKERS"] = "0"
    figures: dict[str, Any] = {"model": args.model, "env": env, "sizes": []}
    figures["standalone_worker"] = args.standalone_worker
    with contextlib.ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        chroma = None
        if args.chroma_server:
            chroma = stack.enter_context(ChromaServer(folder))
            env["CHROMA_URL"] = chroma.url
            figures["chroma_url"] = chroma.url
        server = stack.enter_context(
            BenchServer(model=args.model, postgres=True, extra_env=env, keep=args.keep)
        )
        worker = None
        if args.standalone_worker:
            worker = stack.enter_context(IngestWorkerProcess(server))
        fleet = Fleet(server, folder, args.seed)
        for size in sizes:
            seconds = fleet.grow(size)
            row = measure(fleet, args.queries, args.warmup, chroma, worker)
            row["setup_seconds"] = round(seconds, 1)
            figures["sizes"].append(row)
            print(
                f"{size:4d} chatbots: p50 {row['p50_ms']:7.2f} ms  p95 {row['p95_ms']:7.2f} ms  "
                f"server CPU {row['server_cpu_ms_per_query']:6.2f} ms/query  "
                f"RSS {row['rss_before_queries_mb']:7.1f} -> {row['rss_mb']:7.1f} MB  "
                f"fds {row['open_fds']:5.0f}  "
                f"threads {row['threads']:3.0f}  "
                + (f"Chroma server RSS {row['chroma_rss_mb']:.1f} MB  " if chroma else "")
                + (f"worker RSS {row['worker_rss_mb']:.1f} MB  " if worker else "")
                + f"(set up in {seconds:.0f} s; other processes "
                f"{100 * row['other_share']:.0f}% of the CPU)",
                flush=True,
            )
        if worker is not None:
            worker.__exit__()
        server.stop()
        figures["raw"] = raw = raw_cost(server, fleet, args, chroma.url if chroma else None)
    first, last = figures["sizes"][0], figures["sizes"][-1]
    ratio = last["p95_ms"] / first["p95_ms"]
    extra = max(1, last["chatbots"] - first["chatbots"])
    kb_per_bot = (last["rss_mb"] - first["rss_mb"]) * 1024 / extra
    rows = figures["sizes"]
    # From the first size's end to the last's: growth while the new chatbots' documents were
    # ingested (up to each size's queries) and growth while answering over all the chatbots.
    growing = sum(b["rss_before_queries_mb"] - a["rss_mb"] for a, b in itertools.pairwise(rows))
    answering = sum(b["rss_mb"] - b["rss_before_queries_mb"] for b in rows[1:])
    worker_kb = (
        (last["worker_rss_mb"] - first["worker_rss_mb"]) * 1024 / extra
        if "worker_rss_mb" in last
        else None
    )
    # From the next-to-last size on: what is left once one-time costs (the model's buffers for
    # its largest batch, reached with the first full batches of passages) are behind.
    before_last = rows[-2] if len(rows) > 2 else first
    span = max(1, last["chatbots"] - before_last["chatbots"])
    marginal = (last["rss_mb"] - before_last["rss_mb"]) * 1024 / span
    worker_marginal = (
        (last["worker_rss_mb"] - before_last["worker_rss_mb"]) * 1024 / span
        if "worker_rss_mb" in last
        else None
    )
    raw_ratio = raw["all_collections"]["p95_ms"] / raw["one_collection"]["p95_ms"]
    cpu_ratio = last["server_cpu_ms_per_query"] / max(first["server_cpu_ms_per_query"], 1e-9)
    figures["summary"] = {
        "p95_ratio": round(ratio, 3),
        "server_cpu_per_query_ratio": round(cpu_ratio, 3),
        "rss_kb_per_extra_chatbot": round(kb_per_bot, 1),
        "rss_kb_per_extra_chatbot_while_growing": round(growing * 1024 / extra, 1),
        "rss_kb_per_extra_chatbot_while_answering": round(answering * 1024 / extra, 1),
        "worker_rss_kb_per_extra_chatbot": None if worker_kb is None else round(worker_kb, 1),
        "rss_kb_per_extra_chatbot_from_next_to_last_size": round(marginal, 1),
        "worker_rss_kb_per_extra_chatbot_from_next_to_last_size": (
            None if worker_marginal is None else round(worker_marginal, 1)
        ),
        "raw_p95_ratio": round(raw_ratio, 3),
    }
    print(
        f"raw embed + search (separate process, same Chroma): p95 "
        f"{raw['one_collection']['p95_ms']:.2f} ms over 1 collection, "
        f"{raw['all_collections']['p95_ms']:.2f} ms over {raw['all_collections']['collections']} "
        f"(x{raw_ratio:.2f}; other processes {100 * raw['other_share']:.0f}% of the CPU)"
    )
    print(
        f"p95 at {last['chatbots']} / p95 at {first['chatbots']}: x{ratio:.2f} "
        f"(target <= {TARGET_P95_RATIO}) {'OK' if ratio <= TARGET_P95_RATIO else 'MISSED'}"
    )
    print(
        f"server CPU per query at {last['chatbots']} / at {first['chatbots']}: x{cpu_ratio:.2f} "
        "(what other processes barely move)"
    )
    print(
        f"RSS per extra chatbot: {kb_per_bot:.1f} KB (target <= {TARGET_KB_PER_CHATBOT:.0f}) "
        f"{'OK' if kb_per_bot <= TARGET_KB_PER_CHATBOT else 'MISSED'}: "
        f"{growing * 1024 / extra:.1f} KB while their documents were "
        + ("ingested by the worker" if worker_kb is not None else "ingested in the server")
        + f", {answering * 1024 / extra:.1f} KB while answering"
    )
    if worker_kb is not None:
        print(f"worker RSS per extra chatbot (one document each): {worker_kb:.1f} KB")
    if before_last is not first:
        print(
            f"RSS per extra chatbot from {before_last['chatbots']} to {last['chatbots']} "
            f"chatbots: {marginal:.1f} KB (one-time costs behind)"
            + (f"; worker {worker_marginal:.1f} KB" if worker_marginal is not None else "")
        )
    write_figures(args.json, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())

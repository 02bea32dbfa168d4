"""Soak: mixed traffic from several tenants for a bounded time against the real server.

Starts the loopback fake LLM (tests/fake_llm.py, short token delays) and the API server (a
uvicorn subprocess, SQLite or --postgres, embedded worker, the packaged MiniLM), signs up
``--tenants`` customers with a chatbot and a document each, then runs ``--clients`` threads for
``--seconds`` seconds, each picking at random: a public question (JSON or streamed, some
abandoned mid-stream), a widget profile read, a small upload, a document list, the usage
report, a chatbot list, a sign-in, an invoice order. Prints requests, errors by status,
p50/p95 per kind, and the server's RSS after the warm-up and at the end: after warm-up it must
not grow past 10 %.

    .venv/bin/python bench/soak.py                       # 4 tenants, 8 clients, 120 s
    .venv/bin/python bench/soak.py --seconds 600 --postgres --json soak.json

Figures, not assertions; 4xx answers (a limit reached) are listed per kind, apart from errors.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._server import (  # noqa: E402
    BenchServer,
    add_run_options,
    install_sigterm_handler,
    server_env,
    write_figures,
)
from bench.memory import rss_mb  # noqa: E402
from tests.factories import Tenant  # noqa: E402
from tests.fake_llm import FakeLLMServer  # noqa: E402

FACTS = (
    "Acme support is open Monday to Friday from 9:00 to 17:00.\n\n"
    "Returns are accepted within 30 days of delivery.\n\n"
    "The Turbo blender has a 1200 watt motor and a two year warranty.\n"
)
QUESTIONS = ["When is support open?", "Can I return an item?", "How strong is the blender?"]


class Soak:
    def __init__(self, server: BenchServer, tenants: list[tuple[Tenant, dict[str, Any]]]):
        self.server = server
        self.tenants = tenants
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.statuses: Counter[tuple[str, int]] = Counter()
        self.lock = threading.Lock()
        self.folder = Path(tempfile.mkdtemp(prefix="soak-"))

    def record(self, kind: str, status: int, seconds: float) -> None:
        with self.lock:
            self.latencies[kind].append(seconds)
            self.statuses[(kind, status)] += 1

    def one(self, http: httpx.Client, rng: random.Random) -> None:
        tenant, bot = rng.choice(self.tenants)
        kind = rng.choices(
            [
                "ask",
                "stream",
                "leave",
                "profile",
                "upload",
                "documents",
                "usage",
                "chatbots",
                "login",
                "invoice",
            ],
            weights=[30, 15, 5, 10, 4, 8, 8, 8, 6, 2],
        )[0]
        key = {"X-API-Key": bot["api_key"]}
        question = {"question": rng.choice(QUESTIONS), "session_id": f"s{rng.randrange(50)}"}
        started = time.perf_counter()
        if kind == "ask":
            r = http.post(f"/api/public/{bot['id']}/query", json=question, headers=key)
        elif kind in ("stream", "leave"):
            with http.stream(
                "POST",
                f"/api/public/{bot['id']}/query",
                json={**question, "stream": True},
                headers=key,
            ) as r:
                for _ in r.iter_lines() if kind == "stream" else ():
                    pass
                if kind == "leave":  # the visitor goes away after the first bytes
                    next(r.iter_bytes(), None)
        elif kind == "profile":
            r = http.get(f"/api/public/{bot['id']}", headers=key)
        elif kind == "upload":
            path = self.folder / f"note-{rng.randrange(10**9)}.txt"
            path.write_text(f"Note {rng.random()}: {FACTS}")
            r = self.server.upload(tenant, bot["id"], path)
            path.unlink()
        elif kind == "documents":
            r = http.get(f"/api/chatbots/{bot['id']}/documents", headers=tenant.headers)
        elif kind == "usage":
            r = http.get("/api/usage", headers=tenant.headers)
        elif kind == "chatbots":
            r = http.get("/api/chatbots", headers=tenant.headers)
        elif kind == "login":
            r = http.post(
                "/auth/token", data={"username": tenant.username, "password": tenant.password}
            )
        else:
            r = http.post("/api/billing/invoices", json={"tokens": 10_000}, headers=tenant.headers)
        self.record(kind, r.status_code, time.perf_counter() - started)

    def run(self, clients: int, seconds: float, seed: int) -> None:
        deadline = time.monotonic() + seconds

        def client(index: int) -> None:
            rng = random.Random(seed + index)
            with httpx.Client(base_url=self.server.base_url, timeout=60) as http:
                while time.monotonic() < deadline:
                    try:
                        self.one(http, rng)
                    except httpx.HTTPError as exc:
                        self.record("transport", 0, 0.0)
                        print(f"transport error: {exc!r}", file=sys.stderr)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] * 1000 if ordered else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tenants", type=int, default=4)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--warmup", type=float, default=20, help="seconds before the RSS baseline")
    parser.add_argument("--postgres", action="store_true", help="a fresh PostgreSQL database")
    parser.add_argument("--seed", type=int, default=3)
    add_run_options(parser, "INGEST_WORKERS=1")
    args = parser.parse_args(argv)
    install_sigterm_handler()
    fake = FakeLLMServer().start()
    fake.token_delay_seconds = 0.005
    extra = server_env(
        parser,
        args.env,
        {
            "FIREWORKS_API_KEY": "bench",
            "LLM_BASE_URL": fake.base_url,
            "SIGNUP_TOKENS": "1000000000",
            "RATE_LIMIT_REGISTRATIONS_PER_IP": "100000/hour",
            "LOGIN_MAX_ATTEMPTS_PER_IP": "1000000",
            # Every simulated visitor comes from 127.0.0.1: the per-IP and per-session limits
            # would turn most questions into cheap 429s, and the soak is about real answers.
            "RATE_LIMIT_PUBLIC_PER_CLIENT": "1000000/minute",
            "RATE_LIMIT_PUBLIC_PER_CHATBOT": "1000000/minute",
            "RATE_LIMIT_PUBLIC_PER_SESSION": "1000000/day",
            "RATE_LIMIT_PUBLIC_READS": "1000000/minute",
        },
    )
    try:
        with BenchServer(postgres=args.postgres, extra_env=extra, keep=args.keep) as server:
            pid = str(server.process.pid) if server.process else "self"
            tenants = []
            with tempfile.TemporaryDirectory() as folder:
                for i in range(args.tenants):
                    tenant = server.register_tenant()
                    bot = server.create_chatbot(tenant)
                    path = Path(folder) / f"faq{i}.txt"
                    path.write_text(FACTS)
                    server.upload(tenant, bot["id"], path)
                    server.wait_for_documents(tenant, bot["id"])
                    tenants.append((tenant, bot))
            soak = Soak(server, tenants)
            soak.run(args.clients, args.warmup, args.seed)
            rss_start = rss_mb(pid)
            started = time.monotonic()
            soak.latencies.clear()
            soak.statuses.clear()
            soak.run(args.clients, args.seconds, args.seed + 1000)
            elapsed = time.monotonic() - started
            rss_end = rss_mb(pid)
    finally:
        fake.stop()

    total = sum(soak.statuses.values())
    by_status = Counter()
    for (_, status), count in soak.statuses.items():
        by_status[status] += count
    errors = {s: n for s, n in by_status.items() if s >= 500 or s == 0}
    print(f"== soak: {args.tenants} tenants, {args.clients} clients, {elapsed:.0f} s ==")
    print(
        f"requests {total} ({total / elapsed:.1f}/s); by status {dict(sorted(by_status.items()))}"
    )
    print(f"errors (5xx or transport): {sum(errors.values())} {errors}")
    print(f"{'kind':10} {'n':>6} {'p50 ms':>8} {'p95 ms':>8}  statuses")
    for kind, values in sorted(soak.latencies.items()):
        statuses = {s: n for (k, s), n in sorted(soak.statuses.items()) if k == kind}
        print(
            f"{kind:10} {len(values):6d} {percentile(values, 0.5):8.1f} "
            f"{percentile(values, 0.95):8.1f}  {statuses}"
        )
    growth = (rss_end - rss_start) / rss_start * 100 if rss_start else 0.0
    verdict = "PASS" if growth <= 10 else "FAIL"
    print(
        f"server RSS after warm-up {rss_start:.1f} MB -> end {rss_end:.1f} MB "
        f"({growth:+.1f} %)  {verdict} (target <= +10 %)"
    )
    write_figures(
        args.json,
        {
            "requests": total,
            "seconds": elapsed,
            "by_status": dict(by_status),
            "errors": errors,
            "latency_ms": {
                kind: {"n": len(v), "p50": percentile(v, 0.5), "p95": percentile(v, 0.95)}
                for kind, v in soak.latencies.items()
            },
            "statuses_by_kind": {
                f"{kind} {status}": n for (kind, status), n in sorted(soak.statuses.items())
            },
            "rss_start_mb": rss_start,
            "rss_end_mb": rss_end,
            "rss_growth_pct": growth,
            "median_ask_ms": statistics.median(soak.latencies["ask"]) * 1000
            if soak.latencies.get("ask")
            else None,
        },
    )
    return 0 if not errors and growth <= 10 else 1


if __name__ == "__main__":
    sys.exit(main())

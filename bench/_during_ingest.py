"""``bench/query.py --during-ingest``: does ingestion starve queries?

For each layout, one run of the real processes on loopback:

- ``embedded``: the API server with its embedded ingest worker (``INGEST_WORKERS=1``, the
  default), embedded Chroma;
- ``cluster``: a Chroma server (``chroma run``), the API server with ``INGEST_WORKERS=0`` and a
  standalone ``python -m app.ingest`` worker, as ``scripts/cluster`` starts them.

A chatbot gets the XQuAD article (the questions' answers), then public questions are asked one
at a time (JSON, the fake LLM answering at once): first idle, then while a document of
``--ingest-pages`` pages (``PAGE_CHARS`` characters each, made of the eval articles) is being
embedded by the worker. Printed: p50/p95 idle and during, the ratio of the p95s (target: within
2x), how long the document took, and the share of the CPU other processes used.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench._server import (
    VENV_BIN,
    BenchServer,
    CpuMeter,
    ServerError,
    free_port,
    process_group_cpu_seconds,
    write_figures,
)
from bench.query import (
    PAGE_CHARS,
    REPLY,
    TimedFakeLLM,
    _ms,
    _now,
    bench_env,
    busy_note,
    eval_material,
    generated_material,
    percentile,
    query_target,
)

LAYOUTS = ("embedded", "cluster")


def paged_document(folder: Path, sources: list[Path], pages: int) -> Path:
    """A Markdown document of `pages` pages of PAGE_CHARS characters: the sources' paragraphs
    in turn, each page under its own heading."""
    paragraphs = [
        p.strip()
        for source in sources
        for p in source.read_text(encoding="utf-8").split("\n\n")
        if len(p.strip()) > 80 and not p.lstrip().startswith("#")
    ]
    lines: list[str] = []
    index = 0
    for page in range(1, pages + 1):
        lines += [f"## Page {page}", ""]
        size = 0
        while size < PAGE_CHARS:
            paragraph = paragraphs[index % len(paragraphs)]
            index += 1
            lines += [paragraph, ""]
            size += len(paragraph)
    path = folder / f"manual-{pages}-pages.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


class ChromaServer:
    """`chroma run` on a free loopback port, its own data folder, its own process group."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._log = open(self.folder.parent / "chroma.log", "ab")  # noqa: SIM115 - closed in stop
        self.process = subprocess.Popen(
            [str(VENV_BIN / "chroma"), "run", "--path", str(self.folder), "--host", "127.0.0.1"]
            + ["--port", str(self.port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"chroma run exited with {self.process.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/api/v2/heartbeat", timeout=2.0).status_code == 200:
                    return
            time.sleep(0.25)
        raise ServerError(f"chroma run not answering after {timeout:.0f} s")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            stop_group(process)
            self._log.close()


class LayoutCpuMeter(CpuMeter):
    """CpuMeter that also counts the Chroma server's and the worker's process groups as
    ours."""

    def __init__(self, server: BenchServer, *others: subprocess.Popen[bytes] | None):
        super().__init__(server)
        self.others_started = [p for p in others if p is not None]

    def _ours(self) -> float:
        ours = super()._ours()
        for process in self.others_started:
            ours += process_group_cpu_seconds(process.pid)
        return ours


STAGES = ("embed", "search", "first_token", "total")


def query_stage_totals(server: BenchServer) -> dict[str, tuple[float, float]]:
    """The server's `chatbot_query_seconds` (sum, count) by stage, from its /metrics."""
    totals: dict[str, list[float]] = {stage: [0.0, 0.0] for stage in STAGES}
    text = server.client.get("/metrics").text
    for line in text.splitlines():
        if not line.startswith(("chatbot_query_seconds_sum{", "chatbot_query_seconds_count{")):
            continue
        name_labels, _, value = line.rpartition(" ")
        stage = name_labels.split('stage="', 1)[1].split('"', 1)[0]
        if stage in totals:
            totals[stage][0 if "_sum{" in name_labels else 1] = float(value)
    return {stage: (sums, count) for stage, (sums, count) in totals.items()}


def stage_means_ms(
    before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]
) -> dict[str, float]:
    """Mean milliseconds per stage between two /metrics reads (the questions in between)."""
    means = {}
    for stage in STAGES:
        count = after[stage][1] - before[stage][1]
        if count > 0:
            means[stage] = 1000.0 * (after[stage][0] - before[stage][0]) / count
    return means


def stage_note(means: dict[str, float]) -> str:
    return ", ".join(f"{stage} {ms:.1f}" for stage, ms in means.items())


def start_worker(server: BenchServer) -> subprocess.Popen[bytes]:
    """`python -m app.ingest` with the API's settings, in its own process group."""
    assert server.workdir is not None
    log = open(server.workdir / "worker.log", "ab")  # noqa: SIM115 - the child keeps it
    try:
        return subprocess.Popen(
            [str(VENV_BIN / "python"), "-m", "app.ingest"],
            cwd=server.workdir,
            env=server.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        log.close()


def stop_group(process: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM to the process group we started, SIGKILL if it lingers."""
    if process is None or process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


async def ask_until(
    url: str,
    headers: dict[str, str],
    questions: list[str],
    *,
    count: int | None = None,
    status_url: str | None = None,
    status_headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Questions one at a time, `count` of them, or (with `status_url`) until that document
    is no longer queued or processing: the latencies of the requests made while it was
    `processing`."""
    latencies: list[float] = []
    errors = 0
    state = {"status": "queued", "processing_at": None, "done_at": None}

    async with httpx.AsyncClient(timeout=120.0) as client:

        async def watch() -> None:
            assert status_url is not None
            while True:
                response = await client.get(status_url, headers=status_headers)
                status = response.json()["status"]
                if status == "processing" and state["processing_at"] is None:
                    state["processing_at"] = _now()
                if status not in ("queued", "processing"):
                    state["status"], state["done_at"] = status, _now()
                    return
                state["status"] = status
                await asyncio.sleep(0.2)

        watcher = asyncio.ensure_future(watch()) if status_url else None
        index = 0
        await client.post(url, json={"question": questions[0]}, headers=headers)  # warm-up
        while (count is None or index < count) and not (watcher and watcher.done()):
            question = questions[index % len(questions)]
            index += 1
            started = _now()
            response = await client.post(url, json={"question": question}, headers=headers)
            if response.status_code != 200:
                errors += 1
                continue
            if watcher is None or state["status"] == "processing":
                latencies.append(_now() - started)
        if watcher is not None:
            await watcher
    seconds = (
        state["done_at"] - state["processing_at"]  # type: ignore[operator]
        if state["processing_at"] and state["done_at"]
        else None
    )
    return {
        "ok": len(latencies),
        "errors": errors,
        "p50_ms": _ms(percentile(latencies, 0.5)),
        "p95_ms": _ms(percentile(latencies, 0.95)),
        "document_status": state["status"] if status_url else None,
        "ingest_seconds": seconds,
    }


def measure_layout(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    fake: TimedFakeLLM,
    layout: str,
    article: Path,
    big: Path,
    questions: list[str],
) -> dict[str, Any]:
    extra_env = bench_env(parser, args, fake)
    chroma: ChromaServer | None = None
    server: BenchServer | None = None
    worker: subprocess.Popen[bytes] | None = None
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-ingest-{layout}-"))
    try:
        if layout == "cluster":
            chroma = ChromaServer(workdir / "chroma")
            chroma.start()
            extra_env.update(INGEST_WORKERS="0", CHROMA_URL=chroma.url)
        else:
            extra_env["INGEST_WORKERS"] = "1"
        server = BenchServer(
            model=args.model,
            database_url=args.database_url,
            postgres=args.postgres,
            extra_env=extra_env,
            keep=args.keep,
        )
        server.start()
        if layout == "cluster":
            worker = start_worker(server)
        tenant = server.register_tenant()
        bot = server.create_chatbot(tenant, top_k=args.top_k)
        response = server.upload(tenant, bot["id"], article)
        if response.status_code != 202:
            raise ServerError(f"upload refused: {response.status_code} {response.text[:300]}")
        server.wait_for_documents(tenant, bot["id"])
        url, headers = query_target(server.base_url, "public", tenant, bot)
        stages = query_stage_totals(server)
        with LayoutCpuMeter(server, chroma.process if chroma else None, worker) as idle_meter:
            idle = asyncio.run(ask_until(url, headers, questions, count=args.requests_c1))
        idle["other_cpu_share"] = idle_meter.others_share
        after_idle = query_stage_totals(server)
        idle["stages_ms"] = stage_means_ms(stages, after_idle)
        stages = after_idle
        response = server.upload(tenant, bot["id"], big)
        if response.status_code != 202:
            raise ServerError(f"upload refused: {response.status_code} {response.text[:300]}")
        document = response.json()
        document_id = document.get("id") or document.get("document_id")
        status_url = f"{server.base_url}/api/chatbots/{bot['id']}/documents/{document_id}"
        with LayoutCpuMeter(server, chroma.process if chroma else None, worker) as busy_meter:
            busy = asyncio.run(
                ask_until(
                    url,
                    headers,
                    questions[args.requests_c1 :] + questions[: args.requests_c1],
                    status_url=status_url,
                    status_headers=tenant.headers,
                )
            )
        busy["other_cpu_share"] = busy_meter.others_share
        busy["stages_ms"] = stage_means_ms(stages, query_stage_totals(server))
        docs = server.list_documents(tenant, bot["id"])
        busy["chunks"] = max(d.get("chunk_count") or 0 for d in docs)
        return {
            "idle": idle,
            "during": busy,
            "p95_ratio": busy["p95_ms"] / idle["p95_ms"],
            "p50_ratio": busy["p50_ms"] / idle["p50_ms"],
        }
    finally:
        stop_group(worker)
        if server is not None:
            server.cleanup()
        if chroma is not None:
            chroma.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def during_ingest(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="bench-during-ingest-"))
    fake = TimedFakeLLM()
    fake.reply = REPLY
    figures: dict[str, Any] = {"model": args.model, "pages": args.ingest_pages, "layouts": {}}
    try:
        material = eval_material(args.eval, args.lang)
        if material is None:
            print(f"no eval set under {args.eval}: generating a document and questions")
            material = generated_material(workdir, args.seed)
        article, pool = material
        random.Random(args.seed).shuffle(pool)
        sources = sorted(article.parent.glob("articles.*.md")) or [article]
        big = paged_document(workdir, sources, args.ingest_pages)
        print(
            f"document: {big.name} ({big.stat().st_size / 1e3:.0f} kB, {args.ingest_pages} "
            f"pages of {PAGE_CHARS} characters); {args.requests_c1} idle questions at c=1"
        )
        layouts = [x.strip() for x in args.layouts.split(",") if x.strip()]
        unknown = sorted(set(layouts) - set(LAYOUTS))
        if unknown:
            parser.error(f"--layouts: unknown {', '.join(unknown)} (known: {', '.join(LAYOUTS)})")
        fake.start()
        for layout in layouts:
            result = measure_layout(parser, args, fake, layout, article, big, pool)
            figures["layouts"][layout] = result
            idle, during = result["idle"], result["during"]
            print(
                f"{layout:<8} idle p50 {idle['p50_ms']:6.1f} p95 {idle['p95_ms']:6.1f} ms "
                f"({idle['ok']} ok){busy_note(idle['other_cpu_share'])}\n"
                f"{'':<8} during p50 {during['p50_ms']:6.1f} p95 {during['p95_ms']:6.1f} ms "
                f"({during['ok']} ok, {during['errors']} errors; {during['chunks']} chunks "
                f"{during['document_status']} in {during['ingest_seconds'] or float('nan'):.1f} s)"
                f"{busy_note(during['other_cpu_share'])}\n"
                f"{'':<8} server's mean ms per question, idle: {stage_note(idle['stages_ms'])}\n"
                f"{'':<8} during: {stage_note(during['stages_ms'])}"
            )
    except KeyboardInterrupt:
        print("\ninterrupted")
        return 130
    except ServerError as exc:
        print(f"error: {exc}")
        return 1
    finally:
        fake.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"\n== public query p95 while a {args.ingest_pages}-page document is embedded ==")
    verdicts = {}
    for layout, result in figures["layouts"].items():
        ok = result["p95_ratio"] <= args.target_ingest_ratio
        verdicts[layout] = ok
        print(
            f"{layout:<8} p95 {result['during']['p95_ms']:.1f} / {result['idle']['p95_ms']:.1f} "
            f"ms = {result['p95_ratio']:.2f}x (p50 {result['p50_ratio']:.2f}x)  "
            f"{'PASS' if ok else 'FAIL'} (target <= {args.target_ingest_ratio:.1f}x)"
        )
    figures["pass"] = verdicts
    write_figures(args.json, figures)
    return 0

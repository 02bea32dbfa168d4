"""/metrics explains latency: requests by route template (never a raw id), the query path by
stage, the ingestion queue (read at scrape time), chunks embedded; a standalone worker serves
its own counters; every metric the Grafana dashboard uses is exported."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from app.core.db import get_database
from app.ingest.worker import IngestWorker
from app.models import Document, DocumentStatus
from tests import docgen
from tests.conftest import free_port
from tests.factories import create_chatbot, register, upload

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "docs" / "grafana.json"


def _samples(text: str) -> dict[str, float]:
    """`name{label="value",...}` -> value, labels sorted as the client prints them."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}"] = sample.value
    return out


def _exported_names(text: str) -> set[str]:
    """Every series name /metrics can hold, whether or not it has samples yet."""
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count")}
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(family.name + s for s in suffixes.get(family.type, ()))
    return names


def _scrape(client) -> dict[str, float]:  # type: ignore[no-untyped-def]
    response = client.get("/metrics")
    assert response.status_code == 200
    return _samples(response.text)


def test_public_query_is_timed_by_route_template_and_by_stage(client, runtime):
    tenant = register(client)
    bot = create_chatbot(client, tenant)
    route = (
        'http_request_duration_seconds_count{method="POST",route="/api/public/{chatbot_id}/query"}'
    )
    stages = [
        f'chatbot_query_seconds_count{{stage="{s}"}}'
        for s in ("embed", "search", "first_token", "total")
    ]
    before = _scrape(client)
    asked = client.post(
        f"/api/public/{bot['id']}/query",
        json={"question": "What are the opening hours?"},
        headers={"X-API-Key": bot["api_key"]},
    )
    assert asked.status_code == 200 and asked.json()["mode"] == "fallback"
    text = client.get("/metrics").text
    after = _samples(text)
    assert after[route] == before.get(route, 0.0) + 1
    for stage in stages:
        assert after[stage] == before[stage] + 1, stage
    # One series per route, whatever the id: no label carries a chatbot id.
    assert bot["id"] not in text and uuid.UUID(bot["id"]).hex not in text


def test_queue_depth_and_age_are_read_at_scrape_time_and_chunks_are_counted(
    client, paused_workers, tmp_path, db_session
):
    runtime = paused_workers
    tenant = register(client)
    bot = create_chatbot(client, tenant)
    body = "\n\n".join(f"Paragraph {i} about the harbour and its cargo." for i in range(30))
    document = upload(client, tenant, bot["id"], docgen.make_txt(tmp_path / "q.txt", body))

    def count(status: DocumentStatus) -> int:
        db_session.expire_all()
        return int(
            db_session.scalar(
                select(func.count()).select_from(Document).where(Document.status == status)
            )
        )

    # Other tests' documents may still be held under an expired worker's lease (their crash
    # tests): the gauges must equal the table, whatever it holds.
    queued_now, processing_now = count(DocumentStatus.queued), count(DocumentStatus.processing)
    seen = _scrape(client)
    assert seen['ingest_queue_documents{status="queued"}'] == queued_now >= 1
    assert seen['ingest_queue_documents{status="processing"}'] == processing_now
    assert seen["ingest_queue_oldest_seconds{}"] > 0

    worker = IngestWorker(
        runtime.settings, get_database(), runtime.embedder, runtime.store, runtime.sandbox, "m"
    )
    assert worker.run_once()
    after = _scrape(client)
    db_session.expire_all()
    stored = db_session.get(Document, uuid.UUID(document["id"]))
    assert stored is not None and stored.status == DocumentStatus.ready and stored.chunk_count > 0
    assert after["ingest_chunks_total{}"] == seen["ingest_chunks_total{}"] + stored.chunk_count
    assert (
        after['ingest_documents_total{status="ready"}']
        == seen.get('ingest_documents_total{status="ready"}', 0.0) + 1
    )
    assert after['ingest_queue_documents{status="queued"}'] == queued_now - 1
    assert after['ingest_queue_documents{status="processing"}'] == processing_now
    if queued_now == 1:
        assert after["ingest_queue_oldest_seconds{}"] == 0


def test_every_metric_in_the_dashboard_is_exported(client):
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 10
    exported = _exported_names(client.get("/metrics").text)
    # Metric names: identifiers followed by `{`, `[` or `)` in PromQL (not functions, labels).
    used = {m for e in exprs for m in re.findall(r"([a-z_][a-z0-9_]*)\s*(?=[{\[)])", e)}
    used -= {"le", "route", "stage", "status", "mode", "outcome", "direction", "demo"}
    assert {"chatbot_query_seconds_bucket", "ingest_queue_documents", "ingest_chunks_total"} <= used
    assert used <= exported, used - exported


def test_api_docs_list_every_metric_of_the_product(client):
    docs = (REPO / "API_DOCS.md").read_text()
    section = docs[docs.index("### GET /metrics") : docs.index("### GET /widget.js")]
    families = {
        f.name
        for f in text_string_to_metric_families(client.get("/metrics").text)
        if not f.name.startswith(("process_", "python_")) and not f.name.endswith("_created")
    }
    assert "chatbot_query_seconds" in families and "ingest_queue_oldest_seconds" in families
    for name in families:
        # Counters are documented by their sample name (`..._total`).
        assert f"`{name}`" in section or f"`{name}_total`" in section, name


def test_standalone_worker_serves_its_counters(settings):
    port = free_port()
    # The app's own database, uploads and store: if it claims a document, it is one more
    # worker of this deployment.
    env = {
        **os.environ,
        "WORKER_METRICS_PORT": str(port),
        "DATABASE_URL": str(settings.DATABASE_URL),
        "CHROMA_PATH": str(settings.CHROMA_PATH),
        "UPLOAD_DIR": str(settings.UPLOAD_DIR),
        "EMBEDDING_MODEL": settings.EMBEDDING_MODEL,
        "LOG_LEVEL": "WARNING",
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "app.ingest"], cwd=REPO, env=env, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert worker.poll() is None, worker.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the worker's metrics port never opened"
                time.sleep(0.2)
        assert response.status_code == 200
        names = _exported_names(response.text)
        assert {
            "ingest_chunks_total",
            "ingest_documents_total",
            "process_resident_memory_bytes",
        } <= names
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)

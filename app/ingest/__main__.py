"""Standalone ingestion workers: `python -m app.ingest [--concurrency N] [--once]`.

Run as many as you like, on this machine or others, against the same database, upload folder
(shared storage) and vector store (CHROMA_URL for a Chroma server). With WORKER_METRICS_PORT
each serves its Prometheus counters (documents, chunks) at /metrics on that port.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from prometheus_client import start_http_server

from app.core.config import get_settings
from app.core.db import get_database
from app.core.logging import configure_logging
from app.ingest.worker import IngestWorker, WorkerPool
from app.runtime import build_ingestion_clients

log = logging.getLogger("app.ingest")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.ingest", description=__doc__)
    parser.add_argument("--concurrency", type=int, default=1, help="worker threads (default 1)")
    parser.add_argument(
        "--once", action="store_true", help="exit when the queue is empty instead of waiting"
    )
    args = parser.parse_args(argv)
    settings = get_settings()
    configure_logging(settings.LOG_LEVEL, settings.LOG_JSON)
    if settings.WORKER_METRICS_PORT:
        start_http_server(settings.WORKER_METRICS_PORT, addr=settings.WORKER_METRICS_HOST)
        log.info(
            "metrics on http://%s:%d/metrics",
            settings.WORKER_METRICS_HOST,
            settings.WORKER_METRICS_PORT,
        )
    db = get_database()
    embedder, store, sandbox = build_ingestion_clients(settings, answers_questions=False)
    embedder.load()
    workers = [
        IngestWorker(settings, db, embedder, store, sandbox)
        for _ in range(max(1, args.concurrency))
    ]
    try:
        if args.once:
            while workers[0].run_once():
                pass
            return 0
        pool = WorkerPool(workers)
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        pool.start()
        log.info("ingest workers running", extra={"concurrency": len(workers)})
        stop.wait()
        log.info("stopping: finishing current documents")
        pool.stop(timeout=settings.INGEST_LEASE_SECONDS)
        return 0
    finally:
        sandbox.close()
        db.dispose()


if __name__ == "__main__":
    sys.exit(main())

"""Extraction in child processes capped in memory and time.

The web server holds a large embedding model in memory: it must survive whatever a file does
to a parser (loop forever, inflate to gigabytes, crash in C). ``Sandbox`` runs ``extract_text``
in a ``pebble.ProcessPool`` of spawned workers, each capped at ``max_memory_mb`` of address
space; pebble kills a worker whose file takes longer than ``timeout_s`` and starts a new one.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import resource
import threading
import time
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeoutError
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import pebble

from app.rag.extract.core import SUPPORTED_TYPES, extract_sections
from app.rag.extract.messages import (
    MSG_UNSUPPORTED,
    MSG_WORKER_START,
    MSG_WORKER_STOPPED,
    ExtractionError,
    ExtractorUnavailable,
    msg_crashed,
    msg_generic,
    msg_memory,
    msg_timeout,
)
from app.rag.extract.sections import Section

logger = logging.getLogger(__name__)

# Two worker processes and at most two files in flight: two uploads are parsed in parallel, a
# parse that times out kills only its own worker, and a file never waits in the pool behind
# another one. A third caller waits for a free slot; that wait is bounded by the others'
# timeouts.
_PARALLEL_EXTRACTIONS = 2
# A worker that parsed many files keeps a fragmented heap; a fresh one costs ~0.3 s.
_TASKS_PER_WORKER = 25
# pebble starts the per-file deadline when a worker picks the task up, so start-up (a new
# interpreter and its imports) never counts against it; this bounds the start-up itself.
_WORKER_START_TIMEOUT_S = 60.0
# pebble checks deadlines every 0.1 s and gives a worker 3 s to exit on SIGTERM before SIGKILL.
_KILL_GRACE_S = 10.0


class Sandbox:
    """``extract_text`` in worker processes: at most ``timeout_s`` of parsing per file and
    ``max_memory_mb`` of address space per worker.

    Thread-safe. Nothing starts until the first ``extract`` (or ``start``); ``close`` kills the
    workers, busy or not, and a later ``extract`` starts new ones.
    """

    def __init__(
        self, *, timeout_s: float, max_memory_mb: int, max_pages: int, max_chars: int
    ) -> None:
        self.timeout_s = timeout_s
        self.max_memory_mb = max_memory_mb
        self.max_pages = max_pages
        self.max_chars = max_chars
        self._lock = threading.Lock()  # guards the three attributes below
        self._pool: pebble.ProcessPool | None = None
        self._in_flight: set[Future[Any]] = set()
        # Pools replaced while a task still ran in them, finishing it before they exit.
        self._draining: dict[pebble.ProcessPool, threading.Thread] = {}
        self._slots = threading.BoundedSemaphore(_PARALLEL_EXTRACTIONS)

    def extract(self, path: Path, file_type: str, *, password: str | None = None) -> list[Section]:
        """The file's sections, as ``extract_text`` gives them.

        Raises ``ExtractionError`` (about the file, for the uploader) or
        ``ExtractorUnavailable`` (a worker could not start: retry the document later).
        """
        return self._run(path, file_type, password, self.max_pages, self.max_chars)

    def start(self) -> None:
        """Start the workers now (e.g. at start-up) and wait until one answers."""
        with self._lock:
            future: Future[bool] = self._running_pool().schedule(_worker_ready)
        try:
            future.result(timeout=_WORKER_START_TIMEOUT_S)
        except Exception:
            future.cancel()
            logger.exception("extraction worker failed to start")
            raise ExtractorUnavailable(MSG_WORKER_START) from None

    def close(self) -> None:
        """Kill the workers, busy or not; calls in progress raise ``ExtractorUnavailable``."""
        with self._lock:
            pool, self._pool = self._pool, None
            in_flight = list(self._in_flight)
            draining = list(self._draining.items())
        for future in in_flight:
            future.cancel()
        for old, _ in draining:
            old.stop()  # type: ignore[no-untyped-call]  # its drain thread kills its workers
        if pool is not None:
            _kill(pool)
        for _, thread in draining:
            thread.join()

    def _run(
        self,
        path: Path,
        file_type: str,
        password: str | None,
        max_pages: int,
        max_chars: int,
    ) -> list[Section]:
        if file_type not in SUPPORTED_TYPES:
            raise ExtractionError(MSG_UNSUPPORTED)
        args = (str(path), file_type, self.max_memory_mb, max_pages, max_chars, password)
        with self._slots:
            with self._lock:
                pool = self._running_pool()
                try:
                    future: Future[list[Section]] = pool.schedule(
                        _extract_in_worker, args=args, timeout=self.timeout_s
                    )
                except RuntimeError:  # the pool broke since it was checked
                    logger.exception("extraction pool unavailable")
                    raise ExtractorUnavailable(MSG_WORKER_START) from None
                self._in_flight.add(future)
            try:
                return self._outcome(pool, future, file_type)
            finally:
                with self._lock:
                    self._in_flight.discard(future)

    def _outcome(
        self, pool: pebble.ProcessPool, future: Future[list[Section]], file_type: str
    ) -> list[Section]:
        # This wait covers a worker (re)starting as well as the parse; pebble's own deadline
        # ends the parse long before it runs out.
        bound = _WORKER_START_TIMEOUT_S + self.timeout_s + _KILL_GRACE_S
        try:
            future.exception(timeout=bound)
        except FutureTimeoutError:  # no worker picked the task up, or the pool hangs
            future.cancel()
            logger.error("extraction worker did not start or answer within %g s", bound)
            raise ExtractorUnavailable(MSG_WORKER_START) from None
        except CancelledError:
            raise ExtractorUnavailable(MSG_WORKER_STOPPED) from None
        try:
            return future.result()  # done: raises the task's own error
        except FutureTimeoutError:  # pebble killed the worker at the deadline
            raise ExtractionError(msg_timeout(self.timeout_s)) from None
        except pebble.ProcessExpired:
            # The child died instead of raising: the C allocator aborted at the address-space
            # cap, or a C parser crashed on the file.
            raise ExtractionError(msg_crashed(self.max_memory_mb)) from None
        except _MemoryExhausted:
            self._replace(pool)
            raise
        except ExtractionError:
            raise
        except BrokenProcessPool:  # e.g. workers dying as they start; the next call replaces it
            logger.exception("extraction pool broke")
            raise ExtractorUnavailable(MSG_WORKER_START) from None
        except Exception as exc:
            logger.exception("bounded extraction failed")
            raise ExtractionError(msg_generic(file_type)) from exc

    def _running_pool(self) -> pebble.ProcessPool:
        """The pool to schedule on, started or replaced as needed; called with the lock held."""
        if self._pool is not None and not self._pool.active:
            # A pool thread died or the workers failed to start: its tasks have failed already.
            logger.warning("extraction pool is broken; starting a new one")
            _kill(self._pool)
            self._pool = None
        if self._pool is None:
            self._pool = self._new_pool()
        return self._pool

    def _new_pool(self) -> pebble.ProcessPool:
        pool = pebble.ProcessPool(
            max_workers=_PARALLEL_EXTRACTIONS,
            max_tasks=_TASKS_PER_WORKER,
            initializer=_init_worker,
            initargs=(self.max_memory_mb,),
            # spawn, not fork: forking a server that holds a large model and running threads
            # can deadlock the child and copies far more memory than a fresh interpreter needs.
            context=multiprocessing.get_context("spawn"),
        )
        try:
            if pool.active:  # launches the workers, which import and initialise on their own
                return pool
        except Exception:
            logger.exception("extraction workers failed to start")
        _kill(pool)
        raise ExtractorUnavailable(MSG_WORKER_START)

    def _replace(self, pool: pebble.ProcessPool) -> None:
        """Retire a pool whose worker hit the memory cap: new calls get a fresh pool while the
        old one finishes the other worker's file, then exits."""
        with self._lock:
            if self._pool is not pool:
                return
            self._pool = None
            pool.close()  # type: ignore[no-untyped-call]  # (pebble leaves it untyped)
            drain = threading.Thread(
                target=self._drain, args=(pool,), name="extraction-pool-drain", daemon=True
            )
            self._draining[pool] = drain
            drain.start()

    def _drain(self, pool: pebble.ProcessPool) -> None:
        try:
            pool.join()
        except Exception:
            logger.exception("could not stop a retired extraction pool")
        finally:
            with self._lock:
                self._draining.pop(pool, None)


def _kill(pool: pebble.ProcessPool) -> None:
    """Stop the pool now, killing busy workers too."""
    pool.stop()  # type: ignore[no-untyped-call]  # (pebble leaves it untyped)
    try:
        pool.join()
    except Exception:
        logger.exception("could not stop the extraction workers")


# --- in the worker process ---


class _MemoryExhausted(ExtractionError):
    """Raised in a worker that hit its memory cap, so the parent can replace that worker."""


def _init_worker(max_memory_mb: int) -> None:
    # pypdf logs a warning for every quirk of a damaged file; the parent logs the outcome.
    logging.getLogger("pypdf").setLevel(logging.ERROR)
    _set_rlimit(resource.RLIMIT_CORE, 0)
    _die_with_parent()
    # RLIMIT_AS counts address space, not resident memory; the idle worker uses ~65 MB of it.
    _set_rlimit(resource.RLIMIT_AS, max_memory_mb * 1024 * 1024)


def _die_with_parent() -> None:
    """End this child soon after its parent dies, even by SIGKILL (no orphaned parsers).
    A watchdog, not prctl(PR_SET_PDEATHSIG): that fires when the parent *thread* that
    started us exits, which a healthy server's worker threads do."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def _set_rlimit(kind: int, soft: int) -> None:
    """Set a soft limit (never above the hard one)."""
    _, hard = resource.getrlimit(kind)
    if hard != resource.RLIM_INFINITY and (soft == resource.RLIM_INFINITY or soft > hard):
        soft = hard
    try:
        resource.setrlimit(kind, (soft, hard))
    except (ValueError, OSError):  # e.g. macOS refuses RLIMIT_AS: run without the cap
        logger.warning("could not set resource limit %s", kind, exc_info=True)


def _worker_ready() -> bool:
    return True


def _extract_in_worker(
    path: str,
    file_type: str,
    max_memory_mb: int,
    max_pages: int,
    max_chars: int,
    password: str | None,
) -> list[Section]:
    try:
        return extract_sections(
            Path(path), file_type, max_pages=max_pages, max_chars=max_chars, password=password
        )
    except MemoryError:
        raise _MemoryExhausted(msg_memory(max_memory_mb)) from None

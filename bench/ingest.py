"""Ingestion throughput: the whole pipeline against the raw embedding model.

Ingests a set of documents through the real API and worker (uvicorn subprocess, SQLite or
PostgreSQL, embedded Chroma, all in a temporary folder) and prints:

- the pipeline rate: chunks stored / (last document finished - first upload started);
- the raw ``model.encode`` rate on the very same chunk texts (read back from Chroma after the
  server has stopped, so the two never share the CPU), and ``Embedder.embed_passages`` (what
  the worker calls: encode + normalisation + conversion to lists);
- their ratio, PASS/FAIL against the target (0.85);
- each file's detected type, end status, chunk count, worker seconds and reason.

    .venv/bin/python bench/ingest.py                          # 30 generated documents
    .venv/bin/python bench/ingest.py --docs 12 --scale 0.5    # fewer, smaller documents
    .venv/bin/python bench/ingest.py --corpus                 # ../shared/corpus
    .venv/bin/python bench/ingest.py --corpus DIR --postgres --json out.json
    .venv/bin/python bench/ingest.py --repeat 3               # on a machine shared with others
    .venv/bin/python bench/ingest.py --small                  # 48 small Markdown files, PostgreSQL

Generated documents are deterministic (``--seed``): prose drawn from a fixed word list, as
txt, md, html, csv, docx and pdf in turn; 30 of them make about 1,500 chunks.

``--small``: the 48 XQuAD articles of ``../shared/eval`` (``xquad/derived/articles.<lang>.md``,
as bench/retrieval.py reads them), one Markdown file per article (about five passages each,
240 in all), uploaded at once (4 at a time, the server's default limit per customer) to a
server on PostgreSQL: the fixed costs per document (claim, extraction, Chroma write,
completion) weigh most there.

On 2 cores, any other busy process skews both rates. Every timed phase reports the share of
the CPU that other processes used (from /proc/stat) and the result is flagged when it exceeds
10%; slices of the raw-model timing caught by such a burst are re-timed (``--retries``). The
speed of a shared (virtual) machine also drifts in ways /proc/stat does not show, so each
pipeline run is compared with the raw timing made right after it, and ``--repeat N`` reports
the run with the median ratio.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
for _key, _value in (
    ("HF_HUB_OFFLINE", "1"),
    ("TRANSFORMERS_OFFLINE", "1"),
    ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
):
    os.environ.setdefault(_key, _value)

from bench._server import (  # noqa: E402
    BenchServer,
    CpuMeter,
    ServerError,
    add_run_options,
    install_sigterm_handler,
    server_env,
    write_figures,
)

DEFAULT_CORPUS = (REPO.parent / "shared" / "corpus").resolve()
DEFAULT_EVAL = (REPO.parent / "shared" / "eval").resolve()
# Uploads in flight at once with --small (the user's browser or script sends them together):
# the server's default MAX_CONCURRENT_UPLOADS_PER_CUSTOMER.
SMALL_UPLOADS_IN_FLIGHT = 4
# Files in the corpus folder that describe it rather than belong to it.
CORPUS_META = {"README.md", "SOURCES.tsv"}
TARGET_RATIO = 0.85
# Above this share of the machine's CPU used by other processes, timings are not trustworthy.
NOISY_SHARE = 0.10
TYPES = ("txt", "md", "html", "csv", "docx", "pdf")

# --------------------------------------------------------------------------------------------
# Generated documents
# --------------------------------------------------------------------------------------------

WORDS = """
the of and to a in is that for it as with was on be by this are or at from have an which not
but all can has more one their will other were they about also been its if would into these
when only new some time there than first after most many two such may over should where any
customer account order delivery invoice payment refund warranty product service support team
request ticket answer question policy contract subscription plan price discount tax shipping
return exchange device battery screen charger cable adapter firmware update setting password
login profile address phone email message notification report dashboard export import file
document folder backup storage server network connection signal router printer scanner camera
speaker microphone keyboard mouse monitor laptop tablet kitchen blender oven kettle fridge
filter water pressure temperature heating cooling fan motor engine brake tire wheel seat door
window light lamp switch socket plug fuse circuit voltage power energy solar panel inverter
garden lawn hedge tree soil seed plant flower harvest season winter summer spring autumn
morning evening week month year hour minute schedule meeting office branch store warehouse
supplier partner manager employee staff volunteer student teacher patient doctor nurse clinic
hospital pharmacy prescription appointment insurance claim coverage premium deductible
benefit pension salary holiday leave training course lesson exam certificate licence permit
regulation safety hazard inspection maintenance repair replacement installation assembly
instructions manual guide checklist procedure step stage phase project budget estimate quote
cost fee charge balance credit debit transfer bank card limit statement interest loan mortgage
property rent lease tenant landlord deposit utility bill meter reading council district region
city village harbour bridge road railway station airport flight ticket passenger luggage hotel
booking reservation cancellation guest room breakfast menu recipe ingredient flour sugar butter
cheese bread coffee tea juice bottle package label barcode size weight colour material cotton
steel wood glass plastic paper recycling waste cleaning detergent stain surface floor wall roof
quickly carefully usually always never often sometimes rarely immediately later together
important available necessary possible different similar simple difficult correct wrong early
late local national international public private annual monthly weekly daily free extra
standard premium basic advanced secure reliable fast slow large small long short high low full
empty open closed active inactive pending approved rejected completed damaged missing lost
check confirm cancel change replace install remove connect restart reset contact visit call
send receive include require provide allow prevent reduce increase improve protect keep follow
explain describe mention compare choose select enter save print sign register renew expire
""".split()

NAMES = """
Acme Northwind Contoso Fabrikam Globex Initech Umbrella Hooli Vandelay Stark Wayne Tyrell
Lisbon Oslo Porto Bergen Leeds Utrecht Ghent Lyon Turin Graz Krakow Tartu Cork Aarhus
""".split()

CODE_SNIPPET = (
    'curl -s -X POST "$BASE/api/orders" -H "Authorization: Bearer $TOKEN" \\\n'
    '  -d \'{"sku": "A-1042", "quantity": 2}\''
)


class ProseGenerator:
    """Deterministic, roughly natural text: Zipf-distributed words, sentences of varied length."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        vocabulary = list(WORDS)
        self.rng.shuffle(vocabulary)
        # Function words stay frequent: keep the first 40 in front after the shuffle above.
        vocabulary = WORDS[:40] + [w for w in vocabulary if w not in WORDS[:40]]
        self.vocabulary = vocabulary
        self.weights = [1.0 / (rank + 1) ** 0.9 for rank in range(len(vocabulary))]

    def sentence(self) -> str:
        rng = self.rng
        count = max(4, int(rng.gauss(16, 6)))
        words = rng.choices(self.vocabulary, self.weights, k=count)
        if rng.random() < 0.25:
            words.insert(rng.randrange(len(words)), rng.choice(NAMES))
        if rng.random() < 0.2:
            number = rng.choice([str(rng.randint(2, 120)), f"{rng.randint(1, 99)}%", "2024"])
            words.insert(rng.randrange(len(words)), number)
        if count > 10 and rng.random() < 0.5:
            cut = rng.randrange(3, count - 3)
            words[cut] += ","
        text = " ".join(words)
        end = rng.choices([".", "?", "!", ":"], [90, 6, 2, 2])[0]
        return text[0].upper() + text[1:] + end

    def paragraph(self, sentences: tuple[int, int] = (2, 8)) -> str:
        return " ".join(self.sentence() for _ in range(self.rng.randint(*sentences)))

    def title(self, words: int = 4) -> str:
        picked = self.rng.choices(self.vocabulary[40:], k=words)
        return " ".join(w.capitalize() for w in picked)

    def paragraphs(self, chars: int) -> list[str]:
        out: list[str] = []
        total = 0
        while total < chars:
            out.append(self.paragraph())
            total += len(out[-1]) + 2
        return out


def _html_page(gen: ProseGenerator, title: str, paragraphs: list[str]) -> str:
    body: list[str] = []
    for index, text in enumerate(paragraphs):
        if index % 4 == 0:
            body.append(f"<h2>{gen.title()}</h2>")
        if index % 7 == 3:
            items = "".join(f"<li>{gen.sentence()}</li>" for _ in range(gen.rng.randint(2, 5)))
            body.append(f"<ul>{items}</ul>")
        body.append(f"<p>{text}</p>")
    nav = "".join(f'<li><a href="/{w}">{w.capitalize()}</a></li>' for w in gen.vocabulary[40:52])
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{title}</title><style>body {{ font-family: sans-serif; }}</style>"
        "<script>window.dataLayer = window.dataLayer || [];</script></head>\n<body>"
        f'<header><a href="/">Home</a></header><nav><ul>{nav}</ul></nav>\n'
        f"<main><article><h1>{title}</h1>\n" + "\n".join(body) + "</article></main>\n"
        "<aside>Related: see our other guides.</aside>"
        "<footer>Copyright 2024. All rights reserved.</footer></body></html>\n"
    )


def _markdown(gen: ProseGenerator, title: str, paragraphs: list[str]) -> str:
    out = [f"# {title}", ""]
    for index, text in enumerate(paragraphs):
        if index % 4 == 0 and index:
            out += [f"## {gen.title()}", ""]
        out += [text, ""]
        if index % 6 == 2:
            out += [f"- {gen.sentence()}" for _ in range(gen.rng.randint(2, 5))] + [""]
        if index % 15 == 9:
            out += ["```bash", CODE_SNIPPET, "```", ""]
    return "\n".join(out)


def _csv_rows(gen: ProseGenerator, chars: int) -> list[list[str]]:
    rows: list[list[str]] = []
    total = 0
    while total < chars:
        row = [
            f"SKU-{len(rows) + 1000}",
            gen.title(3),
            gen.rng.choice(["hardware", "kitchen", "garden", "service", "spare part"]),
            " ".join(gen.sentence() for _ in range(gen.rng.randint(1, 3))),
            f"{gen.rng.uniform(2, 900):.2f}",
            gen.sentence() if gen.rng.random() < 0.4 else "",
        ]
        rows.append(row)
        total += sum(len(c) for c in row) + 6
    return rows


def _pdf_pages(paragraphs: list[str], page_chars: int = 3200) -> list[str]:
    pages: list[str] = []
    current: list[str] = []
    size = 0
    for text in paragraphs:
        current.append(text)
        size += len(text)
        if size >= page_chars:
            pages.append("\n".join(current))
            current, size = [], 0
    if current:
        pages.append("\n".join(current))
    return pages


def document_sizes(count: int, scale: float, seed: int) -> list[int]:
    """Characters per document: log-normal around 27k (a page to a small manual); 30 of
    them make about 1,500 chunks of the packaged MiniLM."""
    rng = random.Random(seed + 1)
    sizes = [
        min(150_000, max(2_000, int(rng.lognormvariate(math.log(27_000), 0.7))))
        for _ in range(count)
    ]
    return [max(500, int(s * scale)) for s in sizes]


def generate_documents(folder: Path, count: int, scale: float, seed: int) -> list[Path]:
    from tests import docgen

    gen = ProseGenerator(seed)
    paths: list[Path] = []
    for index, chars in enumerate(document_sizes(count, scale, seed)):
        kind = TYPES[index % len(TYPES)]
        title = gen.title()
        stem = f"{index + 1:03d}_{title.lower().replace(' ', '-')}"
        path = folder / f"{stem}.{kind}"
        if kind == "csv":
            header = ["sku", "name", "category", "description", "price", "notes"]
            docgen.make_csv(path, header, _csv_rows(gen, chars), blank_rows=False)
            paths.append(path)
            continue
        paragraphs = gen.paragraphs(chars)
        if kind == "txt":
            docgen.make_txt(path, f"{title}\n\n" + "\n\n".join(paragraphs) + "\n")
        elif kind == "md":
            path.write_text(_markdown(gen, title, paragraphs), encoding="utf-8")
        elif kind == "html":
            path.write_text(_html_page(gen, title, paragraphs), encoding="utf-8")
        elif kind == "docx":
            table = [["Item", "Detail", "Price"]] + [
                [gen.title(2), gen.sentence(), f"{gen.rng.uniform(1, 500):.2f}"]
                for _ in range(gen.rng.randint(3, 12))
            ]
            docgen.make_docx(path, [title, *paragraphs], table)
        else:
            docgen.make_pdf(path, _pdf_pages(paragraphs))
        paths.append(path)
    return paths


def corpus_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name not in CORPUS_META)


def small_documents(eval_folder: Path, lang: str, folder: Path) -> list[Path]:
    """One Markdown file per article of ``articles.<lang>.md`` (its ``# Title`` line and
    passages), named in the articles' order."""
    source = eval_folder / "xquad" / "derived" / f"articles.{lang}.md"
    articles: list[list[str]] = []
    for line in source.read_text(encoding="utf-8").splitlines():
        if line.startswith("# "):
            articles.append([])
        if articles:
            articles[-1].append(line)
    paths: list[Path] = []
    for index, lines in enumerate(articles, 1):
        slug = "-".join(lines[0][2:].lower().split())[:40]
        path = folder / f"{index:02d}_{slug}.md"
        path.write_text("\n".join(lines).strip() + "\n", encoding="utf-8")
        paths.append(path)
    return paths


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


def _now() -> float:
    return time.perf_counter()


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _upload_all(
    server: BenchServer, tenant: Any, chatbot_id: str, files: Sequence[Path], in_flight: int
) -> dict[str, dict[str, Any]]:
    from concurrent.futures import ThreadPoolExecutor

    rows: dict[str, dict[str, Any]] = {}

    def send(path: Path) -> Any:
        for _ in range(100):  # as a client does when told to wait for its other uploads
            response = server.upload(tenant, chatbot_id, path)
            if response.status_code != 429:
                break
            time.sleep(0.05)
        return response

    with ThreadPoolExecutor(max(1, in_flight)) as pool:
        responses = list(pool.map(send, files))
    for path, response in zip(files, responses, strict=True):
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code == 202:
            rows[body["id"]] = {"id": body["id"], "file": path.name, "upload": 202}
        else:
            rows[f"rejected:{path.name}"] = {
                "file": path.name,
                "upload": response.status_code,
                "file_type": "-",
                "status": f"rejected {response.status_code}",
                "chunk_count": 0,
                "error": f"{body.get('code', '')}: {body.get('detail', response.text[:200])}",
            }
    return rows


def ingest(
    server: BenchServer, files: Sequence[Path], timeout: float, in_flight: int = 1
) -> dict[str, Any]:
    """Upload every file, wait until none is queued/processing; the pipeline figures.

    The end is the last document's ``processed_at`` (set by the worker when it finishes; same
    machine, same clock), so the polling interval does not add to the measured time; the time
    at which polling saw the end is reported too.
    """
    tenant = server.register_tenant()
    bot = server.create_chatbot(tenant)
    last_shown = [0.0]

    def show(documents: list[dict[str, Any]]) -> None:
        if _now() - last_shown[0] < 10:
            return
        last_shown[0] = _now()
        counts = Counter(d["status"] for d in documents)
        chunks = sum(d["chunk_count"] for d in documents if d["status"] == "ready")
        print(f"  +{_now() - started:6.1f} s  {dict(sorted(counts.items()))}  chunks={chunks}")

    with CpuMeter(server) as meter:
        started_wall = datetime.now(UTC)
        started = _now()
        rows = _upload_all(server, tenant, bot["id"], files, in_flight)
        uploaded = _now() - started
        accepted = sum(1 for r in rows.values() if r["upload"] == 202)
        print(f"uploaded {len(files)} files in {uploaded:.2f} s ({accepted} accepted); waiting...")
        documents = (
            server.wait_for_documents(tenant, bot["id"], timeout=timeout, poll=0.5, on_poll=show)
            if accepted
            else []
        )
        observed = _now() - started
    for doc in documents:
        row = rows.setdefault(doc["id"], {"id": doc["id"], "file": doc["filename"], "upload": 202})
        row.update(
            file_type=doc["file_type"],
            status=doc["status"],
            chunk_count=doc["chunk_count"],
            pages=doc.get("pages"),
            attempts=doc["attempts"],
            error=doc.get("error") or "",
            size_bytes=doc["size_bytes"],
            processed_at=doc.get("processed_at"),
        )
    finished = [t for t in (_parse_time(d.get("processed_at")) for d in documents) if t]
    last_processed = (max(finished) - started_wall).total_seconds() if finished else None
    # Guard against a clock step during the run: then trust what polling saw.
    if last_processed is not None and 0 < last_processed <= observed:
        elapsed = last_processed
    else:
        elapsed = observed
    chunks = sum(d["chunk_count"] for d in documents if d["status"] == "ready")
    return {
        "chatbot_id": bot["id"],
        "documents": sorted(rows.values(), key=lambda r: r["file"]),
        "files": len(files),
        "chunks": chunks,
        "upload_seconds": uploaded,
        "seconds": elapsed,
        "observed_seconds": observed,
        "rate": chunks / elapsed if elapsed > 0 else 0.0,
        "cpu": meter.as_dict(),
    }


def worker_seconds(database_url: str) -> dict[str, float]:
    """Per-document processing seconds the worker recorded (metadata_json.seconds)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            result = conn.execute(text("SELECT id, metadata_json FROM documents"))
            out: dict[str, float] = {}
            for doc_id, metadata in result:
                if isinstance(metadata, str):
                    metadata = json.loads(metadata)
                seconds = (metadata or {}).get("seconds")
                if seconds is not None:
                    out[str(uuid.UUID(str(doc_id)))] = float(seconds)
            return out
    finally:
        engine.dispose()


def stored_chunks(chroma_path: Path, chatbot_id: str) -> list[tuple[str, int, str]]:
    """(document id, chunk index, text) of every stored chunk, in document/chunk order."""
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    client = chromadb.PersistentClient(
        path=str(chroma_path), settings=ChromaSettings(anonymized_telemetry=False)
    )
    try:
        collection = client.get_collection(
            f"chatbot_{uuid.UUID(chatbot_id).hex}", embedding_function=None
        )
    except Exception:  # no document produced a chunk
        return []
    data = collection.get(include=["documents", "metadatas"])
    rows = [
        (str(meta["document_id"]), int(meta["chunk_index"]), text or "")
        for text, meta in zip(data["documents"] or [], data["metadatas"] or [], strict=True)
    ]
    return sorted(rows)


def _timed(fn: Callable[[], Any]) -> float:
    started = _now()
    fn()
    return _now() - started


def _measure(
    pieces: Sequence[Sequence[str]], fn: Callable[[Sequence[str]], Any], retries: int
) -> dict[str, Any]:
    """Time ``fn`` on every piece. Pieces timed while other processes used more than
    NOISY_SHARE of the CPU are timed again after the others (up to ``retries`` more passes)
    and their fastest time kept: a burst of other work on a shared machine then costs a
    re-run of a few pieces instead of spoiling the figure."""
    best: list[CpuMeter | None] = [None] * len(pieces)
    todo = list(range(len(pieces)))
    retimed = 0
    for attempt in range(retries + 1):
        if attempt:
            retimed += len(todo)
        noisy = []
        for index in todo:
            with CpuMeter() as meter:
                fn(pieces[index])
            kept = best[index]
            if kept is None or meter.wall < kept.wall:
                best[index] = meter
            if meter.others_share > NOISY_SHARE:
                noisy.append(index)
        todo = noisy
        if not todo:
            break
    meters = [m for m in best if m is not None]
    wall = sum(m.wall for m in meters)
    others = sum(m.others for m in meters)
    cpu = {
        "wall_seconds": wall,
        "our_cpu_seconds": sum(m.ours for m in meters),
        "other_cpu_seconds": others,
        "other_share": others / (wall * (os.cpu_count() or 1)) if wall > 0 else 0.0,
    }
    count = sum(len(piece) for piece in pieces)
    return {"rate": count / wall, "seconds": wall, "cpu": cpu, "retimed_pieces": retimed}


def padded_tokens(groups: Sequence[Sequence[tuple[str, int]]], batch_size: int) -> int:
    """Tokens the model computes for these encode() calls: sentence-transformers sorts each
    call's texts by length in characters and pads every batch to its longest member."""
    total = 0
    for group in groups:
        ordered = sorted(group, key=lambda item: -len(item[0]))
        for start in range(0, len(ordered), batch_size):
            batch = [length for _, length in ordered[start : start + batch_size]]
            total += len(batch) * max(batch)
    return total


_EMBEDDERS: dict[tuple[str, int], Any] = {}


def raw_encode(
    chunks: list[tuple[str, int, str]],
    model: str,
    batch_size: int,
    worker_batches: bool,
    retries: int = 2,
) -> dict[str, Any]:
    """Encode the stored chunk texts with the same model in this (now idle) process."""
    import torch

    from app.rag.embeddings import Embedder

    texts = [text for _, _, text in chunks]
    key = (model, batch_size)
    if key not in _EMBEDDERS:
        _EMBEDDERS[key] = Embedder(model, "cpu", batch_size)
    embedder = _EMBEDDERS[key]
    load = _timed(embedder.load)
    for _ in range(2):  # warm-up: first calls allocate and pick kernels
        embedder.embed_passages(texts[: 2 * batch_size])
    out: dict[str, Any] = {
        "model": embedder.model_name,
        "batch_size": batch_size,
        "torch_threads": torch.get_num_threads(),
        "load_seconds": load,
        "chunks": len(texts),
    }
    # Tokens per chunk as the model sees them: special tokens added, cut at max_seq_length.
    window = embedder.max_seq_length
    lengths = [min(window, embedder.token_length(t) + 2) for t in texts]
    out["tokens_mean"] = statistics.fmean(lengths) if lengths else 0.0
    out["tokens_max"] = max(lengths, default=0)
    # The worker embeds each document in steps of max(4 * batch, 32) chunks, so its batches
    # mix long chunks with each document's short last one: more padding than one sorted call.
    step = max(4 * batch_size, 32)
    by_doc: dict[str, list[tuple[str, int]]] = {}
    for (doc_id, _, text), length in zip(chunks, lengths, strict=True):
        by_doc.setdefault(doc_id, []).append((text, length))
    worker_groups = [
        doc[start : start + step] for doc in by_doc.values() for start in range(0, len(doc), step)
    ]
    out["padding"] = {
        "real_tokens": sum(lengths),
        "one_call": padded_tokens([list(zip(texts, lengths, strict=True))], batch_size),
        "worker_steps": padded_tokens(worker_groups, batch_size),
    }

    # One encode() call over all texts, cut into slices of whole batches of the order
    # sentence-transformers itself uses (longest first): the same batches as a single call,
    # but each slice can be re-timed if another process got in the way.
    ordered = sorted(texts, key=len, reverse=True)
    slice_size = 8 * batch_size
    slices = [ordered[i : i + slice_size] for i in range(0, len(ordered), slice_size)]
    out["model_encode"] = _measure(
        slices,
        lambda piece: embedder.model.encode(
            list(piece), batch_size=batch_size, show_progress_bar=False
        ),
        retries,
    )
    out["embed_passages"] = _measure(slices, embedder.embed_passages, retries)
    if worker_batches:
        groups = [[text for text, _ in group] for group in worker_groups]
        out["embed_passages_worker_batches"] = _measure(groups, embedder.embed_passages, retries)
    return out


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def _clip(text: str, width: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def print_table(rows: list[dict[str, Any]], seconds: dict[str, float], full_errors: bool) -> None:
    name_width = max([len(r["file"]) for r in rows] + [4])
    name_width = min(name_width, 44)
    print(f"\n{'file':<{name_width}}  type  status     chunks  pages  secs   reason")
    for row in rows:
        secs = seconds.get(row.get("id", ""), None)
        error = row.get("error") or ""
        print(
            f"{_clip(row['file'], name_width):<{name_width}}  {row.get('file_type', '-'):<4}  "
            f"{row.get('status', '?'):<9}  {row.get('chunk_count', 0):>6}  "
            f"{row.get('pages') if row.get('pages') is not None else '':>5}  "
            f"{f'{secs:.2f}' if secs is not None else '':>5}  "
            f"{error if full_errors else _clip(error, 100)}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--corpus",
        nargs="?",
        type=Path,
        const=DEFAULT_CORPUS,
        help=f"ingest every file of this folder (default without a value: {DEFAULT_CORPUS})",
    )
    parser.add_argument(
        "--small",
        action="store_true",
        help="the 48 XQuAD articles of --eval, one Markdown file each, uploaded at once "
        "(PostgreSQL unless --database-url is given)",
    )
    parser.add_argument(
        "--eval", type=Path, default=DEFAULT_EVAL, help=f"eval folder (default {DEFAULT_EVAL})"
    )
    parser.add_argument("--lang", default="en", help="articles' language with --small (en)")
    parser.add_argument("--docs", type=int, default=30, help="generated documents (default 30)")
    parser.add_argument(
        "--scale", type=float, default=1.0, help="size factor of generated documents (default 1)"
    )
    parser.add_argument("--seed", type=int, default=1234, help="seed of the generated text")
    parser.add_argument(
        "--model", default="minilm", help="EMBEDDING_MODEL (default minilm, the packaged model)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=32, help="EMBEDDING_BATCH_SIZE (default 32)"
    )
    database = parser.add_mutually_exclusive_group()
    database.add_argument(
        "--database-url", help="use this database (default: SQLite in a temp dir)"
    )
    database.add_argument(
        "--postgres",
        action="store_true",
        help="a fresh database bench_<hex> on postgres@127.0.0.1:5432, dropped afterwards",
    )
    parser.add_argument("--target", type=float, default=TARGET_RATIO, help="ratio to pass")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds to wait for ingestion")
    parser.add_argument(
        "--worker-batches",
        action="store_true",
        help="also time embed_passages with the worker's per-document batches (diagnosis)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs (each with a fresh server and its own raw timing right after it); the run "
        "with the median ratio is reported, which tames a machine shared with other work",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=2,
        help="times a slice of the raw-model timing is re-run when other processes used more "
        f"than {100 * NOISY_SHARE:.0f}%% of the CPU during it (default 2)",
    )
    add_run_options(parser)
    args = parser.parse_args(argv)
    extra_env = server_env(parser, args.env, {"EMBEDDING_BATCH_SIZE": str(args.batch_size)})
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.corpus and not args.corpus.is_dir():
        parser.error(f"{args.corpus} is not a folder")
    if args.small and args.corpus:
        parser.error("--small and --corpus are exclusive")
    if args.small and not args.database_url:
        args.postgres = True
    install_sigterm_handler()
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)  # progress lines show up at once

    workdir = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    runs: list[dict[str, Any]] = []
    try:
        if args.small:
            files = small_documents(args.eval, args.lang, workdir)
            source = f"XQuAD {args.lang} articles, one Markdown file each"
        elif args.corpus:
            files = corpus_files(args.corpus)
            source = str(args.corpus)
        else:
            files = generate_documents(workdir, args.docs, args.scale, args.seed)
            source = f"generated: {args.docs} documents, scale {args.scale}, seed {args.seed}"
        size = sum(p.stat().st_size for p in files)
        print(f"documents: {len(files)} files, {size / 1e6:.1f} MB ({source})")
        for index in range(args.repeat):
            if args.repeat > 1:
                print(f"\n--- run {index + 1} of {args.repeat} ---")
            runs.append(run_once(args, files, extra_env))
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except ServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    report(args, runs)
    return 0


def run_once(
    args: argparse.Namespace, files: list[Path], extra_env: dict[str, str]
) -> dict[str, Any]:
    """One server: ingest everything, stop it, then time the raw model on the stored chunks."""
    server = BenchServer(
        model=args.model,
        database_url=args.database_url,
        postgres=args.postgres,
        extra_env=extra_env,
        keep=args.keep,
    )
    try:
        started = _now()
        server.start()
        db_kind = "postgresql" if str(server.database_url).startswith("postgresql") else "sqlite"
        print(
            f"server ready on {server.base_url} in {_now() - started:.1f} s "
            f"(model {args.model}, {db_kind}, INGEST_WORKERS=1, batch {args.batch_size})"
        )
        in_flight = SMALL_UPLOADS_IN_FLIGHT if args.small else 1
        result = ingest(server, files, args.timeout, in_flight)
        server.stop()
        seconds = worker_seconds(str(server.database_url))
        for row in result["documents"]:
            row["worker_seconds"] = seconds.get(row.get("id", ""))
        chunks = stored_chunks(server.chroma_path, result["chatbot_id"])
    except BaseException:
        if server.process is not None:
            print("stopping the server...", file=sys.stderr)
            server.stop(timeout=5)  # do not wait for the worker to finish its document
        raise
    finally:
        server.cleanup()
    if len(chunks) != result["chunks"]:
        print(
            f"warning: Chroma holds {len(chunks)} chunks, the documents report {result['chunks']}"
        )
    print(
        f"pipeline: {result['chunks']} chunks in {result['seconds']:.1f} s; timing the raw model..."
    )
    encode = (
        raw_encode(chunks, args.model, args.batch_size, args.worker_batches, args.retries)
        if chunks
        else None
    )
    return {"result": result, "seconds": seconds, "encode": encode}


def _noise(cpu: dict[str, float]) -> str:
    share = cpu["other_share"]
    flag = "  <- BUSY MACHINE" if share > NOISY_SHARE else ""
    return f"other processes used {100 * share:.0f}% of the CPU{flag}"


def _ratio(run: dict[str, Any]) -> float | None:
    encode = run["encode"]
    if not encode:
        return None
    return float(run["result"]["rate"] / encode["model_encode"]["rate"])


def report(args: argparse.Namespace, runs: list[dict[str, Any]]) -> None:
    last = runs[-1]
    rows = last["result"]["documents"]
    print_table(rows, last["seconds"], full_errors=bool(args.corpus))
    statuses = Counter(r.get("status") for r in rows)
    print(f"\nend status: {dict(sorted(statuses.items(), key=lambda kv: str(kv[0])))}")
    if len(runs) > 1:
        print("\nruns (ratio: the pipeline against the model.encode timing right after it):")
        for index, run in enumerate(runs, 1):
            result, encode = run["result"], run["encode"] or {}
            line = (
                f"  {index}: pipeline {result['rate']:.1f} chunks/s "
                f"(others {100 * result['cpu']['other_share']:.0f}%)"
            )
            for key, label in (("model_encode", "model.encode"), ("embed_passages", "passages")):
                if key in encode:
                    timing = encode[key]
                    line += (
                        f", {label} {timing['rate']:.1f} "
                        f"(others {100 * timing['cpu']['other_share']:.0f}%)"
                    )
            ratio = _ratio(run)
            print(line + (f", ratio {ratio:.3f}" if ratio is not None else ""))

    # The machine's speed drifts over minutes (other work, other virtual machines on the host),
    # so a pipeline run is compared with the raw timing made right after it, and with several
    # runs the run with the median ratio is the one reported.
    rated = sorted((r for r in runs if _ratio(r) is not None), key=lambda r: _ratio(r) or 0.0)
    chosen = rated[(len(rated) - 1) // 2] if rated else runs[-1]
    result, seconds, encode = chosen["result"], chosen["seconds"], chosen["encode"]
    busy = sum(seconds.values())
    pipeline = result["rate"]
    cpu = result["cpu"]
    noisy = cpu["other_share"] > NOISY_SHARE
    which = (
        f"run {runs.index(chosen) + 1} of {len(runs)}, the median ratio; " if len(runs) > 1 else ""
    )
    print(f"\n== pipeline ({which}upload -> queue -> extract -> chunk -> embed -> Chroma) ==")
    print(f"chunks stored            {result['chunks']}")
    print(
        f"first upload -> all done {result['seconds']:.2f} s (last processed_at; polling saw it "
        f"at {result['observed_seconds']:.2f} s; uploads took {result['upload_seconds']:.2f} s)"
    )
    print(f"worker busy              {busy:.2f} s (sum of per-document seconds)")
    print(f"CPU                      server+bench {cpu['our_cpu_seconds']:.1f} s; {_noise(cpu)}")
    print(f"pipeline rate            {pipeline:.1f} chunks/s")
    figures: dict[str, Any] = {
        "model": args.model,
        "corpus": str(args.corpus) if args.corpus else None,
        "small": f"xquad {args.lang}" if args.small else None,
        "generated": (
            None if args.corpus or args.small else {"docs": args.docs, "scale": args.scale}
        ),
        "files": result["files"],
        "runs": [
            {
                "pipeline_rate": run["result"]["rate"],
                "pipeline_cpu": run["result"]["cpu"],
                "encode": run["encode"],
                "ratio": _ratio(run),
            }
            for run in runs
        ],
        "pipeline": {
            "chunks": result["chunks"],
            "seconds": result["seconds"],
            "observed_seconds": result["observed_seconds"],
            "upload_seconds": result["upload_seconds"],
            "worker_busy_seconds": busy,
            "rate": pipeline,
            "cpu": cpu,
        },
        "documents": rows,
    }
    if not encode:
        print("no chunks stored: nothing to compare with")
    else:
        raw = encode["model_encode"]["rate"]
        passages = encode["embed_passages"]["rate"]
        print(
            f"\n== raw model on the same {encode['chunks']} chunks (this process, right after "
            f"the server stopped; {encode['torch_threads']} torch threads, "
            f"batch {encode['batch_size']}) =="
        )
        print(
            f"tokens per chunk         mean {encode['tokens_mean']:.0f}, "
            f"max {encode['tokens_max']} (with special tokens)"
        )
        names = [
            ("model_encode", "model.encode"),
            ("embed_passages", "embed_passages"),
            ("embed_passages_worker_batches", "worker's batches"),
        ]
        for key, label in names:
            if key in encode:
                timing = encode[key]
                noisy = noisy or timing["cpu"]["other_share"] > NOISY_SHARE
                retimed = timing.get("retimed_pieces", 0)
                print(
                    f"{label:<24} {timing['rate']:.1f} chunks/s ({timing['seconds']:.2f} s; "
                    f"{_noise(timing['cpu'])}"
                    + (f"; {retimed} slices re-timed" if retimed else "")
                    + ")"
                )
        pad = encode["padding"]
        extra = 100 * (pad["worker_steps"] / pad["one_call"] - 1)
        print(
            f"padded tokens            one sorted call {pad['one_call']}, worker's per-document "
            f"steps {pad['worker_steps']} ({extra:+.1f}%)"
        )
        ratio = pipeline / raw
        verdict = "PASS" if ratio >= args.target else "FAIL"
        print(
            f"\nratio pipeline / model.encode    {ratio:.3f}  {verdict} (target >= {args.target})"
        )
        print(f"ratio pipeline / embed_passages  {pipeline / passages:.3f}")
        # Less sensitive to other processes than wall time (but blind to idle gaps).
        pipeline_cpu = cpu["our_cpu_seconds"] / max(result["chunks"], 1)
        raw_cpu = encode["model_encode"]["cpu"]["our_cpu_seconds"] / encode["chunks"]
        print(
            f"CPU-seconds per chunk            pipeline {1000 * pipeline_cpu:.1f} ms, "
            f"model.encode {1000 * raw_cpu:.1f} ms (ratio {raw_cpu / pipeline_cpu:.3f})"
        )
        if noisy:
            print(
                f"WARNING: other processes used more than {100 * NOISY_SHARE:.0f}% of the CPU "
                "during a timed phase; the ratio is not reliable. Re-run on an idle machine "
                "(or with --repeat)."
            )
        figures.update(
            encode=encode,
            ratio=ratio,
            ratio_embed_passages=pipeline / passages,
            cpu_ratio=raw_cpu / pipeline_cpu,
            target=args.target,
            passed=ratio >= args.target,
            noisy=noisy,
        )
    write_figures(args.json, figures)


if __name__ == "__main__":
    sys.exit(main())

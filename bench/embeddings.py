"""Embedding speed and quality per backend (EMBEDDING_BACKEND / EMBEDDING_QUANTIZE), in one run.

Each variant (torch fp32, onnx fp32 / int8, openvino fp32 / int8) runs in its own process, one
after the other, with the same thread count (``--threads``, default 2, for torch and the
exported runtimes alike); the export is built (or found in ``--cache-dir``) before any timing.
Per language of ../shared/eval (XQuAD en and de: 240 passages, 1190 questions), each process
measures:

- passages/second: ``Embedder.embed_passages`` on the 240 gold passages in slices of
  ``max(4 x EMBEDDING_BATCH_SIZE, 32)``, as the ingestion worker calls it;
- single-query latency p50: ``Embedder.embed_query`` one question at a time, every question;
- answer-in-context@5: every question against the 240 passages, exact cosine top-5, the gold
  answer string in one of them (bench/retrieval.py's ceiling metric and helpers).

The torch process is the baseline: ratios (speed) and relative quality changes are against it.
The recommended default is the fastest variant on passages/s whose answer-in-context@5 is
within 1 % of torch's in every language. Each process also reports the CPU share other
processes took while it was timed (a busy machine explains a bad figure).

    .venv/bin/python bench/embeddings.py                      # all variants, en and de
    .venv/bin/python bench/embeddings.py --variants torch openvino-int8 --lang en
    .venv/bin/python bench/embeddings.py --json bench/results/embeddings.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
for _key, _value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1")):
    os.environ.setdefault(_key, _value)

from bench._server import CpuMeter, write_figures  # noqa: E402
from bench.retrieval import DEFAULT_EVAL, at_k, first_rank, load_eval  # noqa: E402

VARIANTS = ("torch", "onnx", "onnx-int8", "openvino", "openvino-int8")
MAX_LOSS = 0.01
K = 5


def _split(variant: str) -> tuple[str, str]:
    backend, _, quantize = variant.partition("-")
    return backend, quantize or "none"


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """One variant, in this process."""
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from app.rag.embeddings import Embedder

    backend, quantize = _split(args.child)
    embedder = Embedder(
        args.model,
        batch_size=args.batch_size,
        backend=backend,
        quantize=quantize,
        cache_dir=args.cache_dir,
    )
    started = time.perf_counter()
    embedder.load()
    out: dict[str, Any] = {
        "variant": args.child,
        "served_by": embedder.backend,
        "load_seconds": time.perf_counter() - started,
        "langs": {},
    }
    embedder.embed_passages(["warm up"] * 8)
    embedder.embed_query("warm up")
    step = max(4 * args.batch_size, 32)  # what the ingestion worker hands embed_passages
    for lang in args.lang:
        data = load_eval(args.eval, lang)
        texts = [p["text"] for p in data["corpus"]]
        queries = data["queries"]
        with CpuMeter() as passages_cpu:
            vectors: list[list[float]] = []
            for start in range(0, len(texts), step):
                vectors += embedder.embed_passages(texts[start : start + step])
        latencies = []
        question_vectors = []
        with CpuMeter() as queries_cpu:
            for query in queries:
                t0 = time.perf_counter()
                question_vectors.append(embedder.embed_query(query["text"]))
                latencies.append(time.perf_counter() - t0)
        scores = (
            np.asarray(question_vectors, dtype=np.float32) @ np.asarray(vectors, dtype=np.float32).T
        )
        order = np.argsort(-scores, axis=1, kind="stable")[:, :K]
        ranks = [
            first_rank([texts[i] for i in row], q["answers"])
            for q, row in zip(queries, order, strict=True)
        ]
        out["langs"][lang] = {
            "passages": len(texts),
            "passages_per_second": len(texts) / passages_cpu.wall,
            "query_p50_ms": 1000 * statistics.median(latencies),
            "answer_in_context_at_5": at_k(ranks, K),
            "questions": len(queries),
            "other_cpu_share": max(passages_cpu.others_share, queries_cpu.others_share),
        }
    return out


def run_child(args: argparse.Namespace, variant: str) -> dict[str, Any]:
    command = [
        sys.executable, str(Path(__file__).resolve()), "--child", variant,
        "--threads", str(args.threads),
        "--batch-size", str(args.batch_size), "--model", args.model,
        "--eval", str(args.eval), "--cache-dir", str(args.cache_dir), "--lang", *args.lang,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
    if done.returncode != 0:
        raise SystemExit(f"{variant} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def report(results: list[dict[str, Any]], langs: list[str]) -> dict[str, Any]:
    base = results[0]
    rows = []
    print(
        f"\n{'variant':<15}{'served by':<15}{'lang':<6}{'passages/s':>11}{'ratio':>7}"
        f"{'query p50':>11}{'ratio':>9}{'aic@5':>8}{'vs torch':>10}{'others':>8}"
    )
    for result in results:
        worst = 0.0
        slowest = None
        for lang in langs:
            row, ref = result["langs"][lang], base["langs"][lang]
            speed = row["passages_per_second"] / ref["passages_per_second"]
            latency = ref["query_p50_ms"] / row["query_p50_ms"]
            change = row["answer_in_context_at_5"] / ref["answer_in_context_at_5"] - 1
            worst = min(worst, change)
            slowest = speed if slowest is None else min(slowest, speed)
            print(
                f"{result['variant']:<15}{result['served_by']:<15}{lang:<6}"
                f"{row['passages_per_second']:>11.1f}{speed:>6.2f}x"
                f"{row['query_p50_ms']:>9.1f}ms{latency:>8.2f}x"
                f"{row['answer_in_context_at_5']:>8.4f}{100 * change:>+9.2f}%"
                f"{100 * row['other_cpu_share']:>7.0f}%"
            )
        rows.append(
            {
                "variant": result["variant"],
                "served_by": result["served_by"],
                "passages_speedup": slowest,
                "worst_quality_change": worst,
            }
        )
    eligible = [
        r for r in rows if r["served_by"] == r["variant"] and r["worst_quality_change"] > -MAX_LOSS
    ]
    best = max(eligible, key=lambda r: r["passages_speedup"] or 0.0)
    print(
        f"\nrecommended default: {best['variant']} ({best['passages_speedup']:.2f}x passages/s "
        f"in the slower language, quality {100 * best['worst_quality_change']:+.2f}% at worst; "
        f"fastest variant losing < {100 * MAX_LOSS:.0f}% answer-in-context@{K})"
    )
    print(
        "'others': the CPU share other processes took while timed (figures from a busy machine "
        "are not comparable)."
    )
    return {"variants": results, "summary": rows, "recommended": best["variant"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--lang", nargs="+", default=["en", "de"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--eval", type=Path, default=DEFAULT_EVAL)
    parser.add_argument(
        "--cache-dir", type=Path, default=REPO / "embedding_cache", help="exports (kept)"
    )
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args)))
        return 0
    variants = ["torch"] + [v for v in args.variants if v != "torch"]
    results = []
    for variant in variants:
        print(f"measuring {variant} ({args.threads} threads)...", flush=True)
        results.append(run_child(args, variant))
        print(f"  loaded in {results[-1]['load_seconds']:.1f} s (build included if it was absent)")
    write_figures(args.json, report(results, args.lang))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Build the exact-match question set from real documents: questions a visitor types with a
code, number or name in them, which an embedding model alone tends to miss.

Each question is built around one string that occurs exactly once in the documents' text (as
the worker extracts it): a code or number (a token with a digit, or capitals only), a field of
a CSV row with its value ("ISO4217-currency_numeric_code 971"), or a capitalised name. A
question is answered when one of the returned sources contains that string. Reproducible: the
same documents and seed give the same file.

    .venv/bin/python bench/exact_questions.py            # writes bench/exact_questions.jsonl
    .venv/bin/python bench/exact_questions.py --per-document 20 --out /tmp/q.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DEFAULT_CORPUS = (REPO.parent / "shared" / "corpus").resolve()
DEFAULT_OUT = REPO / "bench" / "exact_questions.jsonl"
# Text documents of the corpus with codes, numbers and names (English, German, a CSV table).
DOCUMENTS = [
    ("country-codes_multilingual.csv", "csv"),
    ("wikipedia_mozilla_en.html", "html"),
    ("german_heise_news.html", "html"),
    ("mojibake_norwich-city.txt", "txt"),
    ("form-tables-footnotes_test07.docx", "docx"),
]
SEED = 20261203

_TOKEN = re.compile(r"(?<![\w.-])[\w][\w./-]*[\w](?![\w-])")
_FIELD = re.compile(r"(?:^|; )([A-Za-z][\w -]{1,40}): ([^;\n]{2,40})(?=;|$)", re.MULTILINE)
_CODE_TEMPLATES = [
    "What is {s}?",
    "Where is {s} mentioned?",
    "What does it say about {s}?",
    "Tell me about {s}.",
]
_NAME_TEMPLATES = ["Who or what is {s}?", "What do you know about {s}?"]


def _extract(path: Path, file_type: str) -> str:
    from app.rag.extract import extract_text

    sections = extract_text(path, file_type, max_pages=500, max_chars=20_000_000)
    return "\n\n".join(s.text for s in sections)


def _kind(token: str) -> str | None:
    """code (letters and digits, or an acronym), number (5+ digits), name (capitalised);
    None for anything else, URLs and paths included."""
    if not 3 <= len(token) <= 30 or "/" in token or token.lower().startswith(("www", "http")):
        return None
    if any(c.isdigit() for c in token) and any(c.isalpha() for c in token):
        return "code"
    if token.isdigit() and len(token) >= 5:
        return "number"
    if token.isupper() and token.isalpha() and len(token) <= 6:
        return "code"
    if token[0].isupper() and token[1:].islower() and token.isalpha() and len(token) >= 5:
        return "name"
    return None


def build(corpus: Path, per_document: int, seed: int) -> list[dict[str, object]]:
    texts = {name: _extract(corpus / name, kind) for name, kind in DOCUMENTS}
    everything = "\n\n".join(texts.values())
    # Once in all the documents, whatever the case (the lexical index ignores case), so that
    # exactly one passage holds the answer.
    counts = Counter(t.lower() for t in _TOKEN.findall(everything))
    rng = random.Random(seed)
    questions: list[dict[str, object]] = []
    for name, file_type in DOCUMENTS:
        text = texts[name]
        candidates: list[tuple[str, str]] = []
        if file_type == "csv":
            for field, value in _FIELD.findall(text):
                value = value.strip()
                pair = f"{field}: {value}"
                if everything.count(pair) == 1 and _kind(value) in ("code", "number"):
                    # the value alone may be common ("4"); the field and value are unique
                    candidates.append(("field", pair))
        else:
            for token in sorted(set(_TOKEN.findall(text))):
                kind = _kind(token)
                if kind is not None and counts[token.lower()] == 1:
                    candidates.append((kind, token))
        candidates.sort()
        for kind, string in rng.sample(candidates, min(per_document, len(candidates))):
            if kind == "field":
                field, value = string.split(": ", 1)
                question = f"Which entry has {field} {value}?"
            elif kind == "name":
                question = rng.choice(_NAME_TEMPLATES).format(s=string)
            else:
                question = rng.choice(_CODE_TEMPLATES).format(s=string)
            questions.append(
                {
                    "_id": f"exact-{len(questions):03d}",
                    "text": question,
                    "answers": [string],
                    "kind": kind,
                    "document": name,
                }
            )
    return questions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--per-document", type=int, default=15)
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    questions = build(args.corpus, args.per_document, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as handle:
        for question in questions:
            handle.write(json.dumps(question, ensure_ascii=False) + "\n")
    kinds = Counter(str(q["kind"]) for q in questions)
    print(f"wrote {len(questions)} questions to {args.out}: {dict(kinds)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

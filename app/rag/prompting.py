"""Builds the chat messages: system prompt, delimited context, recent turns, the question."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

from app.rag.vector_store import Hit

PROMPTS = Path(__file__).with_name("prompts")


@cache
def template(name: str) -> str:
    return (PROMPTS / f"{name}.txt").read_text(encoding="utf-8").strip()


@dataclass(frozen=True)
class Turn:
    question: str
    answer: str


def _passage(number: int, hit: Hit) -> str:
    where = str(hit.metadata.get("filename", "document"))
    page = hit.metadata.get("page")
    if page is not None:
        where += f", page {page}"
    # Delimiters inside a passage must not close our context block early.
    text = hit.text.replace("</context>", "</ context>")
    return f"[{number}] ({where})\n{text}"


def build_messages(
    system_prompt: str | None, hits: list[Hit], history: list[Turn], question: str
) -> list[dict[str, str]]:
    persona = (system_prompt or "").strip() or template("default_persona")
    messages = [{"role": "system", "content": template("system").format(system_prompt=persona)}]
    for turn in history:
        messages.append({"role": "user", "content": turn.question})
        messages.append({"role": "assistant", "content": turn.answer})
    context = "\n\n".join(_passage(i, hit) for i, hit in enumerate(hits, start=1))
    messages.append(
        {"role": "user", "content": template("user").format(context=context, question=question)}
    )
    return messages


def extractive_answer(hits: list[Hit], max_passages: int = 2, max_chars: int = 600) -> str:
    """Without an LLM: quote the best passages, with where they come from."""
    parts = ["From the documents:"]
    for hit in hits[:max_passages]:
        text = " ".join(hit.text.split())
        if len(text) > max_chars:
            cut = text[:max_chars]
            stop = max(cut.rfind(". "), cut.rfind("。"))
            text = (cut[: stop + 1] if stop > max_chars // 3 else cut.rstrip()) + " …"
        where = str(hit.metadata.get("filename", "document"))
        page = hit.metadata.get("page")
        if page is not None:
            where += f", page {page}"
        parts.append(f"“{text}” ({where})")
    return "\n\n".join(parts)

"""Fixtures of the query tests: a tenant whose chatbot has one ready document."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from app.runtime import Runtime
from tests import docgen
from tests.factories import create_chatbot, register, upload, wait_for_document
from tests.query.money import Bot

FACTS = (
    "Acme support is open Monday to Friday from 9:00 to 17:00 Central European Time.\n\n"
    "Returns are accepted within 30 days of delivery when the item is unused.\n\n"
    "The Acme Turbo blender has a 1200 watt motor and a two year warranty."
)


@pytest.fixture
def bot(client: httpx.Client, runtime: Runtime, tmp_path: Path) -> Bot:
    tenant = register(client)
    chatbot = create_chatbot(client, tenant, system_prompt="You are Acme's support bot.")
    doc = upload(client, tenant, chatbot["id"], docgen.make_txt(tmp_path / "faq.txt", FACTS))
    assert wait_for_document(client, tenant, chatbot["id"], doc["id"])["status"] == "ready"
    return tenant, chatbot, doc

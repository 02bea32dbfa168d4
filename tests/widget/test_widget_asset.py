"""GET /widget.js and the widget's public profile read, over HTTP (no browser)."""

from __future__ import annotations

import gzip
import hashlib
import re
import uuid
from pathlib import Path

from app.models import Chatbot
from tests.factories import create_chatbot, register

WIDGET_SOURCE = Path(__file__).resolve().parents[2] / "app" / "static" / "widget.js"
SITE = "https://shop.example.com"


def test_widget_script_is_served_with_type_cache_and_etag(client):
    source = WIDGET_SOURCE.read_bytes()
    version = hashlib.sha256(source).hexdigest()[:12]
    plain = client.get("/widget.js", headers={"Accept-Encoding": "identity"})
    assert plain.status_code == 200
    assert plain.headers["content-type"] == "text/javascript; charset=utf-8"
    assert plain.content == source
    assert plain.headers["etag"] == f'"{version}"'
    assert plain.headers["cache-control"] == "public, max-age=300"
    assert plain.headers["x-content-type-options"] == "nosniff"
    assert "content-encoding" not in plain.headers

    versioned = client.get(f"/widget.js?v={version}", headers={"Accept-Encoding": "identity"})
    assert versioned.headers["cache-control"] == "public, max-age=31536000, immutable"
    stale = client.get("/widget.js?v=0123456789ab", headers={"Accept-Encoding": "identity"})
    assert stale.headers["cache-control"] == "public, max-age=300"
    assert stale.content == source

    for tag in (f'"{version}"', f'W/"{version}"', f'"other", "{version}"'):
        revalidated = client.get("/widget.js", headers={"If-None-Match": tag})
        assert revalidated.status_code == 304, tag
        assert revalidated.content == b"" and revalidated.headers["etag"] == f'"{version}"'
    assert client.get("/widget.js", headers={"If-None-Match": '"old"'}).status_code == 200
    head = client.head("/widget.js")
    assert head.status_code == 200 and head.headers["etag"] == f'"{version}"'


def test_widget_script_fits_its_gzip_budget(client):
    # iter_raw: the bytes as they travel, before the client decodes them.
    with client.stream("GET", "/widget.js", headers={"Accept-Encoding": "gzip"}) as response:
        assert response.headers["content-encoding"] == "gzip"
        wire = b"".join(response.iter_raw())
    assert gzip.decompress(wire) == WIDGET_SOURCE.read_bytes()
    assert len(wire) <= 12 * 1024, f"widget.js is {len(wire)} bytes gzipped; the budget is 12 KB"


def test_snippet_points_at_the_versioned_script(client, settings):
    tenant = register(client)
    chatbot = create_chatbot(client, tenant)
    body = client.get(f"/api/chatbots/{chatbot['id']}/snippet", headers=tenant.headers).json()
    version = hashlib.sha256(WIDGET_SOURCE.read_bytes()).hexdigest()[:12]
    base = settings.PUBLIC_BASE_URL.rstrip("/")
    assert body["script_url"] == f"{base}/widget.js?v={version}"
    assert f'src="{base}/widget.js?v={version}"' in body["snippet"]
    assert f'data-chatbot-id="{chatbot["id"]}"' in body["snippet"]
    assert f'data-api-key="{chatbot["api_key"]}"' in body["snippet"]
    # The URL in the snippet is the one the server answers.
    path = body["script_url"].removeprefix(base)
    assert client.get(path).headers["cache-control"].endswith("immutable")


def _profile(client, chatbot, **headers):  # type: ignore[no-untyped-def]
    return client.get(
        f"/api/public/{chatbot['id']}", headers={"X-API-Key": chatbot["api_key"], **headers}
    )


def test_public_profile_shows_only_what_the_widget_displays(client):
    tenant = register(client)
    chatbot = create_chatbot(
        client,
        tenant,
        welcome_message="Hi! Ask me about <b>returns</b>.",
        system_prompt="secret instructions",
        allowed_origins=[SITE],
    )
    response = _profile(client, chatbot, Origin=SITE)
    assert response.status_code == 200, response.text
    assert response.json() == {
        "chatbot_id": chatbot["id"],
        "name": chatbot["name"],
        "welcome_message": "Hi! Ask me about <b>returns</b>.",
        "question_max_length": 2000,
    }
    assert response.headers["access-control-allow-origin"] == SITE
    assert "secret" not in response.text and chatbot["api_key"] not in response.text
    # A server-side caller (no Origin) gets no CORS headers.
    server_side = _profile(client, chatbot)
    assert server_side.status_code == 200
    assert "access-control-allow-origin" not in server_side.headers


def test_public_profile_refusals_are_readable_by_the_asking_page(client):
    tenant = register(client)
    chatbot = create_chatbot(client, tenant, allowed_origins=[SITE])
    elsewhere = "https://evil.example.net"

    refused = _profile(client, chatbot, Origin=elsewhere)
    assert refused.status_code == 403
    assert refused.json()["code"] == "origin_not_allowed"
    assert refused.headers["access-control-allow-origin"] == elsewhere
    assert chatbot["name"] not in refused.text

    wrong_key = client.get(
        f"/api/public/{chatbot['id']}", headers={"X-API-Key": "cbk_wrong", "Origin": SITE}
    )
    assert wrong_key.status_code == 401 and wrong_key.json()["code"] == "invalid_api_key"
    assert wrong_key.headers["access-control-allow-origin"] == SITE
    missing = client.get(f"/api/public/{uuid.uuid4()}", headers={"X-API-Key": "x", "Origin": SITE})
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"
    assert missing.headers["access-control-allow-origin"] == SITE

    # The preflight lets any page ask, so the refusal above reaches it.
    preflight = client.options(
        f"/api/public/{chatbot['id']}",
        headers={
            "Origin": elsewhere,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "x-api-key",
        },
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == elsewhere
    assert preflight.headers["access-control-allow-methods"] == "GET, OPTIONS"
    # The question endpoint's preflight stays closed to that page.
    query_preflight = client.options(
        f"/api/public/{chatbot['id']}/query",
        headers={"Origin": elsewhere, "Access-Control-Request-Method": "POST"},
    )
    assert query_preflight.status_code == 403
    assert "access-control-allow-origin" not in query_preflight.headers


def test_public_profile_follows_key_rotation_and_changes(client, db_session):
    tenant = register(client)
    chatbot = create_chatbot(client, tenant, welcome_message="Hello")
    old_key = chatbot["api_key"]
    rotated = client.post(f"/api/chatbots/{chatbot['id']}/rotate_key", headers=tenant.headers)
    assert rotated.status_code == 200
    assert _profile(client, chatbot).status_code == 401
    chatbot["api_key"] = rotated.json()["api_key"]
    assert old_key != chatbot["api_key"]
    patched = client.patch(
        f"/api/chatbots/{chatbot['id']}",
        json={"name": "Renamed", "welcome_message": None},
        headers=tenant.headers,
    )
    assert patched.status_code == 200
    body = _profile(client, chatbot).json()
    assert body["name"] == "Renamed" and body["welcome_message"] is None
    row = db_session.get(Chatbot, uuid.UUID(chatbot["id"]))
    assert row.name == "Renamed" and row.api_key == chatbot["api_key"]


def test_public_profile_is_rate_limited_apart_from_questions(
    client, runtime, settings, monkeypatch
):
    monkeypatch.setattr(settings, "RATE_LIMIT_PUBLIC_READS", "3/minute")
    tenant = register(client)
    chatbot = create_chatbot(client, tenant, allowed_origins=[SITE])
    statuses = [_profile(client, chatbot, Origin=SITE).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    limited = _profile(client, chatbot, Origin=SITE)
    assert limited.json()["code"] == "rate_limited"
    assert re.fullmatch(r"[1-9][0-9]*", limited.headers["retry-after"])
    assert limited.headers["access-control-allow-origin"] == SITE
    # Questions have their own counters: the profile reads did not use them up.
    asked = client.post(
        f"/api/public/{chatbot['id']}/query",
        json={"question": "Anything?"},
        headers={"X-API-Key": chatbot["api_key"], "Origin": SITE},
    )
    assert asked.status_code == 200, asked.text
    assert asked.json()["mode"] == "fallback"  # no documents yet

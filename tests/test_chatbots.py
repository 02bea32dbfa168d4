from __future__ import annotations

import uuid

from sqlalchemy import select

from app.models import Chatbot
from tests.factories import add_user, create_chatbot, register


def test_create_get_list_update_chatbot(client, db_session):
    tenant = register(client)
    bot = create_chatbot(
        client,
        tenant,
        name="Support",
        description="Answers support questions",
        system_prompt="Be brief.",
        temperature=0.5,
        top_k=7,
        allowed_origins=["https://www.Acme.example/"],
        welcome_message="Hi!",
    )
    assert bot["api_key"].startswith("cbk_") and len(bot["api_key"]) >= 40
    assert bot["allowed_origins"] == ["https://www.acme.example"]
    assert bot["top_k"] == 7 and bot["demo_message_count"] == 0
    assert bot["customer_id"] == tenant.customer_id

    got = client.get(f"/api/chatbots/{bot['id']}", headers=tenant.headers)
    assert got.status_code == 200 and got.json()["api_key"] == bot["api_key"]

    listing = client.get("/api/chatbots", headers=tenant.headers).json()
    assert listing["total"] == 1 and listing["items"][0]["id"] == bot["id"]

    patched = client.patch(
        f"/api/chatbots/{bot['id']}",
        json={"name": "Support v2", "temperature": None},
        headers=tenant.headers,
    )
    assert patched.status_code == 200
    assert patched.json()["name"] == "Support v2"
    assert patched.json()["temperature"] is None
    assert patched.json()["top_k"] == 7
    row = db_session.get(Chatbot, uuid.UUID(bot["id"]))
    assert row.name == "Support v2" and row.temperature is None and row.system_prompt == "Be brief."


def test_invalid_chatbot_settings_rejected(client, db_session):
    tenant = register(client)
    for body in (
        {"name": ""},
        {"name": "   "},
        {"name": "x" * 201},
        {"name": "ok", "temperature": 2.5},
        {"name": "ok", "top_k": 0},
        {"name": "ok", "top_k": 21},
        {"name": "ok", "allowed_origins": ["not an origin"]},
        {"name": "ok", "allowed_origins": ["https://a.example/path"]},
        {"name": "bad\x00name"},
        {"name": "ok", "system_prompt": "x" * 8001},
    ):
        response = client.post("/api/chatbots", json=body, headers=tenant.headers)
        assert response.status_code == 422, body
        assert response.json()["code"] == "validation_error"
    bot = create_chatbot(client, tenant)
    response = client.patch(
        f"/api/chatbots/{bot['id']}", json={"name": None}, headers=tenant.headers
    )
    assert response.status_code == 422
    total = client.get("/api/chatbots", headers=tenant.headers).json()["total"]
    assert total == 1


def test_snippet_is_a_script_tag_with_id_and_key(client, settings):
    tenant = register(client)
    bot = create_chatbot(client, tenant)
    response = client.get(f"/api/chatbots/{bot['id']}/snippet", headers=tenant.headers)
    assert response.status_code == 200
    body = response.json()
    base = settings.PUBLIC_BASE_URL.rstrip("/")
    assert body["chatbot_id"] == bot["id"]
    assert body["script_url"].startswith(f"{base}/widget.js?v=")
    snippet = body["snippet"]
    assert snippet.startswith(f'<script src="{body["script_url"]}"')
    assert f'data-chatbot-id="{bot["id"]}"' in snippet
    assert f'data-api-key="{bot["api_key"]}"' in snippet
    assert snippet.endswith("</script>")


def test_rotate_key_invalidates_old_key(client, db_session):
    tenant = register(client)
    bot = create_chatbot(client, tenant)
    old_key = bot["api_key"]
    response = client.post(f"/api/chatbots/{bot['id']}/rotate_key", headers=tenant.headers)
    assert response.status_code == 200
    new_key = response.json()["api_key"]
    assert response.json()["chatbot_id"] == bot["id"]
    assert new_key != old_key and new_key.startswith("cbk_")
    db_session.expire_all()
    assert db_session.get(Chatbot, uuid.UUID(bot["id"])).api_key == new_key
    assert db_session.scalar(select(Chatbot).where(Chatbot.api_key == old_key)) is None
    got = client.get(f"/api/chatbots/{bot['id']}", headers=tenant.headers).json()
    assert got["api_key"] == new_key


def test_member_cannot_rotate_key_or_delete(client, db_session):
    admin = register(client)
    member = add_user(client, admin)
    bot = create_chatbot(client, member)  # members may create and use chatbots
    rotate = client.post(f"/api/chatbots/{bot['id']}/rotate_key", headers=member.headers)
    assert rotate.status_code == 403
    assert rotate.json()["code"] == "admin_required"
    delete = client.delete(f"/api/chatbots/{bot['id']}", headers=member.headers)
    assert delete.status_code == 403
    db_session.expire_all()
    row = db_session.get(Chatbot, uuid.UUID(bot["id"]))
    assert row is not None and row.api_key == bot["api_key"]


def test_delete_chatbot_removes_row_and_files(client, db_session, settings):
    tenant = register(client)
    bot = create_chatbot(client, tenant)
    folder = settings.UPLOAD_DIR / tenant.customer_id / bot["id"]
    folder.mkdir(parents=True)
    (folder / "stored.bin").write_bytes(b"x")
    response = client.delete(f"/api/chatbots/{bot['id']}", headers=tenant.headers)
    assert response.status_code == 204
    assert db_session.get(Chatbot, uuid.UUID(bot["id"])) is None
    assert not folder.exists()
    assert client.get(f"/api/chatbots/{bot['id']}", headers=tenant.headers).status_code == 404


def test_other_customer_sees_404_everywhere_and_changes_nothing(client, db_session):
    a = register(client)
    b = register(client)
    bot = create_chatbot(client, a, name="A's bot")
    base = f"/api/chatbots/{bot['id']}"
    calls = [
        ("GET", base, None),
        ("PATCH", base, {"name": "hijacked"}),
        ("GET", f"{base}/snippet", None),
        ("POST", f"{base}/rotate_key", None),
        ("DELETE", base, None),
    ]
    missing = f"/api/chatbots/{uuid.uuid4()}"
    for method, path, body in calls:
        response = client.request(method, path, json=body, headers=b.headers)
        assert response.status_code == 404, (method, path)
        assert response.json()["code"] == "not_found"
        twin = client.request(method, path.replace(base, missing), json=body, headers=b.headers)
        assert twin.status_code == 404 and twin.json() == response.json()
    listing = client.get("/api/chatbots", headers=b.headers).json()
    assert listing["total"] == 0
    db_session.expire_all()
    row = db_session.get(Chatbot, uuid.UUID(bot["id"]))
    assert row is not None and row.name == "A's bot" and row.api_key == bot["api_key"]


def test_unauthenticated_chatbot_calls_are_401(client):
    assert client.get("/api/chatbots").status_code == 401
    assert client.post("/api/chatbots", json={"name": "x"}).status_code == 401


def test_malformed_id_is_422(client):
    tenant = register(client)
    response = client.get("/api/chatbots/not-a-uuid", headers=tenant.headers)
    assert response.status_code == 422
    assert response.json()["code"] == "validation_error"


def test_invalid_origins_rejected(client):
    tenant = register(client)
    for origin in ("https://exa mple.com", "https://a.example:99999", "ftp://a.example"):
        response = client.post(
            "/api/chatbots", json={"name": "x", "allowed_origins": [origin]}, headers=tenant.headers
        )
        assert response.status_code == 422, origin
    ok = client.post(
        "/api/chatbots",
        json={"name": "x", "allowed_origins": ["http://localhost:3000", "https://[::1]:8443"]},
        headers=tenant.headers,
    )
    assert ok.status_code == 201, ok.text


def test_changes_are_committed_before_the_response(client, live_url):
    """Over real HTTP, a created chatbot is readable by the very next request."""
    import httpx

    tenant = register(client)
    with httpx.Client(base_url=live_url, headers=tenant.headers, timeout=30) as http:
        for i in range(30):
            created = http.post("/api/chatbots", json={"name": f"bot {i}"})
            assert created.status_code == 201
            assert http.get(f"/api/chatbots/{created.json()['id']}").status_code == 200

from __future__ import annotations

import time
import uuid

from jose import jwt
from sqlalchemy import select

from app.models import Customer, Role, UsageToken, User
from tests.factories import PASSWORD, add_user, login, register, unique


def _token(settings, **claims):  # type: ignore[no-untyped-def]
    now = int(time.time())
    base = {"iat": now, "exp": now + 600}
    base.update(claims)
    return jwt.encode(
        {k: v for k, v in base.items() if v is not None}, settings.SECRET_KEY, algorithm="HS256"
    )


def test_register_creates_customer_admin_and_balance(client, db_session, settings):
    username = unique("alice_")
    response = client.post(
        "/auth/register",
        json={
            "username": username,
            "password": PASSWORD,
            "customer_name": "  Acme Inc.  ",
            "contact_email": f"{username}@Example.com",
        },
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == settings.ACCESS_TOKEN_EXPIRE_MINUTES * 60
    assert body["user"]["username"] == username
    assert body["user"]["role"] == "admin"
    assert body["customer"]["name"] == "Acme Inc."
    assert "password" not in response.text and "password_hash" not in response.text

    user = db_session.scalar(select(User).where(User.username == username))
    assert user is not None and user.role == Role.admin
    assert user.password_hash.startswith("$argon2id$")
    customer = db_session.get(Customer, user.customer_id)
    assert customer.contact_email == f"{username}@example.com"
    usage = db_session.scalar(select(UsageToken).where(UsageToken.customer_id == customer.id))
    assert usage.tokens_remaining == settings.SIGNUP_TOKENS
    assert usage.tokens_used == 0

    me = client.get("/auth/me", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert me.status_code == 200
    assert me.json()["customer"]["id"] == str(customer.id)
    assert me.json()["role"] == "admin"


def test_duplicate_username_and_email_conflict(client, db_session):
    tenant = register(client)
    again = client.post(
        "/auth/register",
        json={
            "username": tenant.username,
            "password": PASSWORD,
            "customer_name": "Other",
            "contact_email": f"{unique('x')}@example.com",
        },
    )
    assert again.status_code == 409
    assert again.json()["code"] == "username_taken"

    same_email = client.post(
        "/auth/register",
        json={
            "username": unique("bob_"),
            "password": PASSWORD,
            "customer_name": "Other",
            "contact_email": tenant.customer["contact_email"].upper(),
        },
    )
    assert same_email.status_code == 409
    assert same_email.json()["code"] == "email_taken"
    count = db_session.scalar(
        select(Customer.id).where(Customer.contact_email == tenant.customer["contact_email"])
    )
    assert count is not None
    assert len(db_session.scalars(select(Customer).where(Customer.name == "Other")).all()) == 0


def test_weak_password_and_bad_email_rejected(client, db_session):
    username = unique("weak_")
    weak = client.post(
        "/auth/register",
        json={
            "username": username,
            "password": "short",
            "customer_name": "Weak",
            "contact_email": f"{username}@example.com",
        },
    )
    assert weak.status_code == 422
    assert weak.json()["code"] == "validation_error"
    assert "password" in weak.json()["detail"]
    bad_email = client.post(
        "/auth/register",
        json={
            "username": username,
            "password": PASSWORD,
            "customer_name": "Weak",
            "contact_email": "not-an-email",
        },
    )
    assert bad_email.status_code == 422
    assert db_session.scalar(select(User).where(User.username == username)) is None


def test_nul_characters_rejected(client):
    response = client.post(
        "/auth/register",
        json={
            "username": unique("nul_"),
            "password": "pass\x00word-long",
            "customer_name": "Nul",
            "contact_email": f"{unique('n')}@example.com",
        },
    )
    assert response.status_code == 422
    assert response.json()["code"] == "validation_error"


def test_login_good_and_wrong_password(client):
    tenant = register(client)
    token = login(client, tenant.username, PASSWORD)
    assert client.get("/auth/me", headers={"Authorization": f"Bearer {token}"}).status_code == 200

    wrong = client.post("/auth/token", data={"username": tenant.username, "password": "nope-nope"})
    assert wrong.status_code == 401
    assert wrong.json()["code"] == "invalid_credentials"
    assert wrong.headers["www-authenticate"] == "Bearer"
    unknown = client.post("/auth/token", data={"username": unique("ghost_"), "password": "x" * 9})
    assert unknown.status_code == 401
    assert unknown.json() == wrong.json()


def test_repeated_failures_are_throttled(client, settings):
    tenant = register(client)
    for _ in range(settings.LOGIN_MAX_FAILURES):
        r = client.post("/auth/token", data={"username": tenant.username, "password": "bad-pass"})
        assert r.status_code == 401
    blocked = client.post("/auth/token", data={"username": tenant.username, "password": PASSWORD})
    assert blocked.status_code == 429
    assert blocked.json()["code"] == "too_many_attempts"
    assert int(blocked.headers["retry-after"]) > 0


def test_attempts_from_one_ip_throttle_other_usernames(client, settings, monkeypatch):
    monkeypatch.setattr(settings, "LOGIN_MAX_ATTEMPTS_PER_IP", 6)
    tenant = register(client)
    for _ in range(6):  # one attempt each on many usernames: no username reaches its limit
        wrong = client.post(
            "/auth/token", data={"username": unique("ghost_"), "password": "bad-pass"}
        )
        assert wrong.status_code == 401
    blocked = client.post("/auth/token", data={"username": tenant.username, "password": PASSWORD})
    assert blocked.status_code == 429 and blocked.json()["code"] == "too_many_attempts"


def test_expired_token_rejected(client, settings):
    tenant = register(client)
    past = int(time.time()) - 7200
    token = _token(
        settings,
        sub=tenant.user["id"],
        customer_id=tenant.customer_id,
        iat=past,
        exp=past + 60,
    )
    response = client.get("/auth/me", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert response.json()["code"] == "not_authenticated"


def test_wrong_signature_rejected(client):
    tenant = register(client)
    now = int(time.time())
    forged = jwt.encode(
        {"sub": tenant.user["id"], "customer_id": tenant.customer_id, "iat": now, "exp": now + 60},
        "another-secret-key-entirely",
        algorithm="HS256",
    )
    assert client.get("/auth/me", headers={"Authorization": f"Bearer {forged}"}).status_code == 401


def test_alg_none_rejected(client):
    import base64
    import json

    tenant = register(client)
    now = int(time.time())

    def b64(obj: dict) -> str:  # type: ignore[type-arg]
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    claims = {
        "sub": tenant.user["id"],
        "customer_id": tenant.customer_id,
        "iat": now,
        "exp": now + 60,
    }
    for alg in ("none", "None", "NONE"):
        token = f"{b64({'alg': alg, 'typ': 'JWT'})}.{b64(claims)}."
        r = client.get("/auth/me", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 401, alg


def test_token_missing_claims_rejected(client, settings):
    tenant = register(client)
    no_exp = jwt.encode(
        {"sub": tenant.user["id"], "customer_id": tenant.customer_id, "iat": int(time.time())},
        settings.SECRET_KEY,
        algorithm="HS256",
    )
    assert client.get("/auth/me", headers={"Authorization": f"Bearer {no_exp}"}).status_code == 401
    no_iat = _token(settings, sub=tenant.user["id"], customer_id=tenant.customer_id, iat=None)
    assert client.get("/auth/me", headers={"Authorization": f"Bearer {no_iat}"}).status_code == 401


def test_token_of_deleted_user_stops_working(client, db_session):
    admin = register(client)
    member = add_user(client, admin)
    assert client.get("/auth/me", headers=member.headers).status_code == 200
    deleted = client.delete(f"/api/users/{member.user['id']}", headers=admin.headers)
    assert deleted.status_code == 204
    assert db_session.get(User, uuid.UUID(member.user["id"])) is None
    response = client.get("/auth/me", headers=member.headers)
    assert response.status_code == 401


def test_missing_token_is_401(client):
    response = client.get("/auth/me")
    assert response.status_code == 401
    assert response.json()["code"] == "not_authenticated"
    garbage = client.get("/auth/me", headers={"Authorization": "Bearer not.a.jwt"})
    assert garbage.status_code == 401


def test_sign_in_with_nul_or_oversized_fields_is_422(client):
    nul = client.post("/auth/token", data={"username": "alice\x00", "password": "whatever-1"})
    assert nul.status_code == 422
    assert nul.json()["code"] == "validation_error"
    long = client.post("/auth/token", data={"username": "alice", "password": "x" * 100_000})
    assert long.status_code == 422

from __future__ import annotations

import uuid

from sqlalchemy import select

from app.models import Role, User
from tests.factories import PASSWORD, add_user, register, unique


def test_admin_adds_member_who_can_sign_in(client, db_session):
    admin = register(client)
    member = add_user(client, admin, role="member")
    assert member.user["role"] == "member"
    assert member.user["customer_id"] == admin.customer_id
    me = client.get("/auth/me", headers=member.headers)
    assert me.status_code == 200 and me.json()["role"] == "member"
    row = db_session.get(User, uuid.UUID(member.user["id"]))
    assert row.role == Role.member and str(row.customer_id) == admin.customer_id

    listing = client.get("/api/users", headers=member.headers)
    assert listing.status_code == 200
    body = listing.json()
    assert body["total"] == 2 and body["limit"] == 50 and body["offset"] == 0
    assert {u["username"] for u in body["items"]} == {admin.username, member.username}


def test_member_cannot_add_or_delete_users(client, db_session):
    admin = register(client)
    member = add_user(client, admin)
    name = unique("sneaky_")
    response = client.post(
        "/api/users",
        json={"username": name, "password": PASSWORD, "role": "admin"},
        headers=member.headers,
    )
    assert response.status_code == 403
    assert response.json()["code"] == "admin_required"
    assert db_session.scalar(select(User).where(User.username == name)) is None
    delete = client.delete(f"/api/users/{admin.user['id']}", headers=member.headers)
    assert delete.status_code == 403
    assert db_session.get(User, uuid.UUID(admin.user["id"])) is not None


def test_last_admin_cannot_be_deleted(client, db_session):
    admin = register(client)
    response = client.delete(f"/api/users/{admin.user['id']}", headers=admin.headers)
    assert response.status_code == 409
    assert response.json()["code"] == "last_admin"
    assert db_session.get(User, uuid.UUID(admin.user["id"])) is not None

    second = add_user(client, admin, role="admin")
    assert (
        client.delete(f"/api/users/{admin.user['id']}", headers=second.headers).status_code == 204
    )
    assert db_session.get(User, uuid.UUID(admin.user["id"])) is None


def test_users_of_other_customer_are_invisible(client, db_session):
    a = register(client)
    b = register(client)
    member_a = add_user(client, a)
    response = client.delete(f"/api/users/{member_a.user['id']}", headers=b.headers)
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"
    assert db_session.get(User, uuid.UUID(member_a.user["id"])) is not None
    names = {u["username"] for u in client.get("/api/users", headers=b.headers).json()["items"]}
    assert member_a.username not in names and a.username not in names


def test_duplicate_username_on_add(client):
    admin = register(client)
    response = client.post(
        "/api/users",
        json={"username": admin.username, "password": PASSWORD, "role": "member"},
        headers=admin.headers,
    )
    assert response.status_code == 409
    assert response.json()["code"] == "username_taken"


def test_pagination_bounds(client):
    admin = register(client)
    for params, expected in (
        ("limit=0", 422),
        ("limit=201", 422),
        ("offset=-1", 422),
        ("offset=1000001", 422),
        ("limit=1&offset=1", 200),
    ):
        response = client.get(f"/api/users?{params}", headers=admin.headers)
        assert response.status_code == expected, params
    page = client.get("/api/users?limit=1&offset=1", headers=admin.headers).json()
    assert page["items"] == [] and page["total"] == 1 and page["limit"] == 1

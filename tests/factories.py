"""Plain factory functions: fresh rows with unique names, through the real API."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from httpx import Client  # the app's TestClient, or any client with a base_url (bench)

PASSWORD = "correct-horse-battery"


@dataclass
class Tenant:
    username: str
    password: str
    token: str
    user: dict[str, Any]
    customer: dict[str, Any]

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    @property
    def customer_id(self) -> str:
        return str(self.customer["id"])


def unique(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(4)}"


def register(client: Client, **overrides: Any) -> Tenant:
    username = overrides.pop("username", unique("user_"))
    body = {
        "username": username,
        "password": overrides.pop("password", PASSWORD),
        "customer_name": overrides.pop("customer_name", unique("Customer ")),
        "contact_email": overrides.pop("contact_email", f"{unique('ops-')}@example.com"),
        **overrides,
    }
    response = client.post("/auth/register", json=body)
    assert response.status_code == 201, response.text
    data = response.json()
    return Tenant(username, body["password"], data["access_token"], data["user"], data["customer"])


def add_user(client: Client, admin: Tenant, role: str = "member") -> Tenant:
    username = unique(f"{role}_")
    response = client.post(
        "/api/users",
        json={"username": username, "password": PASSWORD, "role": role},
        headers=admin.headers,
    )
    assert response.status_code == 201, response.text
    token = login(client, username, PASSWORD)
    return Tenant(username, PASSWORD, token, response.json(), admin.customer)


def login(client: Client, username: str, password: str) -> str:
    response = client.post("/auth/token", data={"username": username, "password": password})
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def create_chatbot(client: Client, tenant: Tenant, **fields: Any) -> dict[str, Any]:
    body = {"name": unique("Bot "), **fields}
    response = client.post("/api/chatbots", json=body, headers=tenant.headers)
    assert response.status_code == 201, response.text
    return dict(response.json())


def upload(
    client: Client,
    tenant: Tenant,
    chatbot_id: str,
    path: Path,
    filename: str | None = None,
    expect: int = 202,
) -> dict[str, Any]:
    with open(path, "rb") as handle:
        response = client.post(
            f"/api/upload/{chatbot_id}",
            files={"file": (filename or path.name, handle, "application/octet-stream")},
            headers=tenant.headers,
        )
    assert response.status_code == expect, response.text
    return dict(response.json())


def wait_for_document(
    client: Client, tenant: Tenant, chatbot_id: str, document_id: str, timeout: float = 180
) -> dict[str, Any]:
    """Poll until the document is ready or failed."""
    deadline = time.monotonic() + timeout
    while True:
        response = client.get(
            f"/api/chatbots/{chatbot_id}/documents/{document_id}", headers=tenant.headers
        )
        assert response.status_code == 200, response.text
        body = dict(response.json())
        if body["status"] in ("ready", "failed"):
            return body
        assert time.monotonic() < deadline, f"document still {body['status']}: {body}"
        time.sleep(0.2)

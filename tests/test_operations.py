from __future__ import annotations

from tests.factories import register


def test_health_and_ready(client):
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200
    assert ready.json()["checks"]["database"] == "ok"


def test_request_id_is_echoed_or_generated(client):
    response = client.get("/health", headers={"X-Request-ID": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"
    generated = client.get("/health", headers={"X-Request-ID": "bad id with spaces"})
    assert generated.headers["x-request-id"] != "bad id with spaces"
    assert len(generated.headers["x-request-id"]) == 16


def test_unknown_route_and_method_use_error_shape(client):
    missing = client.get("/no/such/path")
    assert missing.status_code == 404
    assert set(missing.json()) == {"detail", "code"}
    wrong_method = client.put("/auth/register", json={})
    assert wrong_method.status_code == 405
    assert wrong_method.json()["code"] == "method_not_allowed"


def test_malformed_json_body_is_422_not_500(client):
    response = client.post(
        "/auth/register", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["code"] == "validation_error"


def test_unexpected_errors_hide_the_stack_trace(app):
    from fastapi.testclient import TestClient

    @app.get("/__boom_for_test")
    def boom() -> None:
        raise RuntimeError("secret internals")

    # Not as a context manager: the session's client already ran the lifespan.
    response = TestClient(app, raise_server_exceptions=False).get("/__boom_for_test")
    app.router.routes = [
        r for r in app.router.routes if getattr(r, "path", "") != "/__boom_for_test"
    ]
    assert response.status_code == 500
    assert response.json() == {
        "detail": "Internal server error; the error was logged.",
        "code": "internal_error",
    }
    assert "secret internals" not in response.text


def test_openapi_declares_error_responses(client):
    spec = client.get("/openapi.json").json()
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            if path in ("/health", "/metrics"):
                continue
            declared = {int(code) for code in op["responses"] if code.isdigit()}
            assert declared & {401, 404, 409, 422, 429, 503}, (method, path)
    tokens = spec["paths"]["/auth/token"]["post"]["responses"]
    assert {"200", "401", "429"} <= set(tokens)
    schema = tokens["401"]["content"]["application/json"]["schema"]["$ref"]
    assert schema.endswith("/ErrorBody")
    assert client.get("/docs").status_code == 200


def test_metrics_expose_request_counts(client):
    register(client)
    text = client.get("/metrics").text
    assert "http_requests_total" in text
    assert 'route="/auth/register"' in text
    assert "chatbot_answers_total" in text and "ingest_documents_total" in text


def test_internal_error_carries_request_id(app):
    from fastapi.testclient import TestClient

    @app.get("/__boom_with_id")
    def boom() -> None:
        raise ValueError("hidden")

    local = TestClient(app, raise_server_exceptions=False)
    response = local.get("/__boom_with_id", headers={"X-Request-ID": "trace-500"})
    app.router.routes = [
        r for r in app.router.routes if getattr(r, "path", "") != "/__boom_with_id"
    ]
    assert response.status_code == 500
    assert response.headers["x-request-id"] == "trace-500"
    assert "hidden" not in response.text


def test_times_are_utc_whatever_the_session_timezone(client, db_session, is_postgres):
    from sqlalchemy import text

    from app.models import Customer

    tenant = register(client)
    if is_postgres:
        db_session.execute(text("SET TIME ZONE 'America/New_York'"))
    customer = db_session.get(Customer, __import__("uuid").UUID(tenant.customer_id))
    assert customer.created_at.utcoffset().total_seconds() == 0
    me = client.get("/auth/me", headers=tenant.headers).json()
    assert me["created_at"].endswith("Z")

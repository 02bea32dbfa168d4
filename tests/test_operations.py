from __future__ import annotations

from tests.factories import register


def test_health_and_ready(client, runtime):  # runtime: the model is loaded
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200
    assert ready.json() == {
        "status": "ready",
        "checks": {"database": "ok", "vector_store": "ok", "embedding_model": "ok"},
    }


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


UNDECLARED = {"/health", "/metrics", "/widget.js", "/ready"}


def test_openapi_declares_error_responses(client):
    """Every route declares its errors with our schema: 500 always (a route without
    `errors(...)` fails here), 401 where a token is needed, 404 where a path names a row."""
    spec = client.get("/openapi.json").json()
    for path, methods in spec["paths"].items():
        if path in UNDECLARED:
            continue
        for method, op in methods.items():
            declared = {int(code) for code in op["responses"] if code.isdigit()}
            where = (method, path)
            assert 500 in declared, where
            if op.get("security"):
                assert 401 in declared, where
            if "{" in path and path != "/api/{customer_id}/{chatbot_id}/query":
                assert 404 in declared, where
            for code in declared - {200, 201, 202, 204, 304}:
                ref = op["responses"][str(code)]["content"]["application/json"]["schema"]["$ref"]
                assert ref.endswith("/ValidationErrorBody" if code == 422 else "/ErrorBody"), where
    tokens = spec["paths"]["/auth/token"]["post"]["responses"]
    assert {"200", "401", "429"} <= set(tokens)
    assert client.get("/docs").status_code == 200


def _metric(client, line_prefix: str) -> float:  # type: ignore[no-untyped-def]
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(line_prefix + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_count_requests_and_answers(client, runtime):
    registered = 'http_requests_total{method="POST",route="/auth/register",status="201"}'
    fallback = 'chatbot_answers_total{mode="fallback",outcome="ok"}'
    before = _metric(client, registered), _metric(client, fallback)
    tenant = register(client)
    chatbot = client.post("/api/chatbots", json={"name": "M"}, headers=tenant.headers).json()
    asked = client.post(
        f"/api/public/{chatbot['id']}/query",
        json={"question": "Anything?"},
        headers={"X-API-Key": chatbot["api_key"]},
    )
    assert asked.status_code == 200 and asked.json()["mode"] == "fallback"
    assert _metric(client, registered) == before[0] + 1
    assert _metric(client, fallback) == before[1] + 1


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

from __future__ import annotations

import pytest

from app.core.config import PLACEHOLDER_SECRET_KEY, Settings


def test_secret_key_fails_closed_unless_development_is_said(monkeypatch):
    monkeypatch.delenv("ENVIRONMENT", raising=False)
    default = Settings(SECRET_KEY=PLACEHOLDER_SECRET_KEY, _env_file=None)
    assert default.ENVIRONMENT == "production"
    assert "placeholder" in (default.secret_key_problem() or "")
    short = Settings(ENVIRONMENT="test", SECRET_KEY="x" * 31, _env_file=None)
    assert "shorter than 32 bytes" in (short.secret_key_problem() or "")
    dev = Settings(ENVIRONMENT="development", SECRET_KEY=PLACEHOLDER_SECRET_KEY, _env_file=None)
    assert dev.secret_key_problem() is None
    prod = Settings(ENVIRONMENT="production", SECRET_KEY="x" * 32, _env_file=None)
    assert prod.secret_key_problem() is None


def test_the_server_refuses_to_start_with_a_weak_secret(database):
    from fastapi.testclient import TestClient

    from app.main import create_app

    app = create_app(
        Settings(ENVIRONMENT="production", SECRET_KEY=PLACEHOLDER_SECRET_KEY, _env_file=None)
    )
    with pytest.raises(RuntimeError, match="SECRET_KEY is the placeholder"):
        with TestClient(app):
            pass


def test_empty_optional_settings_mean_unset():
    settings = Settings(CHROMA_URL="", FIREWORKS_API_KEY="", CHUNK_SIZE="", _env_file=None)
    assert settings.CHROMA_URL is None
    assert settings.FIREWORKS_API_KEY is None
    assert settings.CHUNK_SIZE is None


def test_default_database_is_sqlite_under_data(monkeypatch):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    settings = Settings(_env_file=None)
    assert settings.DATABASE_URL == "sqlite:///./data/app.db"
    assert settings.ACCESS_TOKEN_EXPIRE_MINUTES == 60


def test_env_example_lists_every_setting():
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / ".env.example").read_text()
    listed = set(re.findall(r"^([A-Z][A-Z_0-9]*)=", text, re.MULTILINE))
    assert listed == set(Settings.model_fields)

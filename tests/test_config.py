from __future__ import annotations

import pytest
from pydantic import ValidationError

from app.core.config import PLACEHOLDER_SECRET_KEY, Settings


def test_placeholder_secret_refused_outside_development():
    with pytest.raises(ValidationError, match="SECRET_KEY"):
        Settings(ENVIRONMENT="production", SECRET_KEY=PLACEHOLDER_SECRET_KEY, _env_file=None)
    dev = Settings(ENVIRONMENT="development", SECRET_KEY=PLACEHOLDER_SECRET_KEY, _env_file=None)
    assert dev.SECRET_KEY == PLACEHOLDER_SECRET_KEY
    prod = Settings(ENVIRONMENT="production", SECRET_KEY="x" * 40, _env_file=None)
    assert prod.ENVIRONMENT == "production"


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

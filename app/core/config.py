"""Application settings: the one place that reads the environment."""

from __future__ import annotations

from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PLACEHOLDER_SECRET_KEY = "dev-insecure-change-me"  # noqa: S105 - a marker, refused outside development


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    # --- runtime ---
    # production unless said otherwise: development (./scripts/serve sets it) is the only mode
    # that accepts the placeholder SECRET_KEY.
    ENVIRONMENT: Literal["development", "test", "production"] = "production"
    LOG_LEVEL: str = "INFO"
    LOG_JSON: bool = True

    # --- storage ---
    DATABASE_URL: str = "sqlite:///./data/app.db"
    DB_POOL_SIZE: int = Field(default=10, ge=1)
    DB_MAX_OVERFLOW: int = Field(default=20, ge=0)
    UPLOAD_DIR: Path = Path("uploads")
    CHROMA_PATH: Path = Path("chroma_dbs")
    CHROMA_URL: str | None = None
    CHROMA_AUTH_TOKEN: str | None = None
    # Chroma collection handles kept per process (least recently used dropped first).
    CHROMA_HANDLE_CACHE_SIZE: int = Field(default=1000, ge=0)

    @field_validator(
        "CHROMA_URL",
        "CHROMA_AUTH_TOKEN",
        "FIREWORKS_API_KEY",
        "CHUNK_SIZE",
        "CHUNK_OVERLAP",
        "BILLING_WEBHOOK_SECRET",
        "INVOICE_FONT_PATH",
        mode="before",
    )
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value

    # --- auth ---
    SECRET_KEY: str = PLACEHOLDER_SECRET_KEY
    ALGORITHM: Literal["HS256", "HS384", "HS512"] = "HS256"
    ACCESS_TOKEN_EXPIRE_MINUTES: int = Field(default=60, ge=1)
    LOGIN_MAX_FAILURES: int = Field(default=5, ge=1)
    LOGIN_LOCKOUT_SECONDS: int = Field(default=300, ge=1)
    # Sign-in attempts (successful ones too) from one client IP per LOGIN_LOCKOUT_SECONDS.
    LOGIN_MAX_ATTEMPTS_PER_IP: int = Field(default=30, ge=1)

    # --- product ---
    PUBLIC_BASE_URL: str = "http://localhost:8000"
    SIGNUP_TOKENS: int = Field(default=100_000, ge=0)
    CORS_ALLOW_ORIGINS: list[str] = Field(default_factory=list)

    # --- ingestion ---
    MAX_UPLOAD_MB: int = Field(default=25, ge=1)
    INGEST_WORKERS: int = Field(default=1, ge=0)
    INGEST_POLL_SECONDS: float = Field(default=1.0, gt=0)
    INGEST_LEASE_SECONDS: int = Field(default=300, ge=5)
    INGEST_MAX_ATTEMPTS: int = Field(default=3, ge=1)
    # A standalone worker (`python -m app.ingest`) serves its Prometheus metrics on this port
    # (0: off), on WORKER_METRICS_HOST (loopback unless the scraper is on another machine).
    WORKER_METRICS_PORT: int = Field(default=0, ge=0, le=65535)
    WORKER_METRICS_HOST: str = "127.0.0.1"
    # Small documents of one customer a worker claims in one turn and embeds together, and
    # the most their uploads may weigh together (a larger document is claimed alone).
    INGEST_BATCH_DOCUMENTS: int = Field(default=16, ge=1)
    INGEST_BATCH_BYTES: int = Field(default=262_144, ge=0)
    # Claim and extract a worker's next turn while it embeds the current one.
    INGEST_PREFETCH: bool = True
    # CPU priority (nice, 0-19) of ingestion threads: embedding passages yields the CPU to
    # questions (in the API process and beside it on one machine); 0 keeps the default.
    INGEST_NICE: int = Field(default=10, ge=0, le=19)
    # Linux: ingestion threads (and what they start) also under SCHED_IDLE, so they run only
    # on cores no other thread wants. Off by default: on a machine that questions keep fully
    # busy, a document then makes almost no progress (nice alone leaves it about a tenth of
    # the CPU), its lease can run out and a parse can reach EXTRACT_TIMEOUT_SECONDS.
    INGEST_SCHED_IDLE: bool = False
    EXTRACT_TIMEOUT_SECONDS: int = Field(default=120, ge=1)
    EXTRACT_MAX_MEMORY_MB: int = Field(default=2048, ge=128)
    PDF_MAX_PAGES: int = Field(default=2000, ge=1)
    MAX_EXTRACTED_CHARS: int = Field(default=20_000_000, ge=1000)
    # In tokens of the embedding model; None: fitted to the model's max sequence length.
    CHUNK_SIZE: int | None = Field(default=None, ge=32)
    CHUNK_OVERLAP: int | None = Field(default=None, ge=0)
    # structure: chunks follow the document's blocks under their headings, the heading path
    # embedded with each; recursive: text packed up to CHUNK_SIZE, headings ignored.
    CHUNKING: Literal["structure", "recursive"] = "structure"
    # structure: blocks shorter than this many tokens are merged with the blocks after them.
    CHUNK_MIN_SIZE: int = Field(default=64, ge=0)

    # --- embeddings ---
    EMBEDDING_MODEL: str = "intfloat/multilingual-e5-large"
    EMBEDDING_DEVICE: str = "cpu"
    EMBEDDING_BATCH_SIZE: int = Field(default=32, ge=1)
    # What computes the vectors on CPU: torch, or an ONNX Runtime / OpenVINO export of the same
    # model built once into EMBEDDING_CACHE_DIR (`python -m app.cli embeddings build`, else on
    # first load); a backend that cannot be built or loaded falls back to torch (one log line).
    EMBEDDING_BACKEND: Literal["torch", "onnx", "openvino"] = "openvino"
    # int8: OpenVINO statically quantized on shipped calibration passages, ONNX dynamically.
    EMBEDDING_QUANTIZE: Literal["none", "int8"] = "int8"
    EMBEDDING_CACHE_DIR: Path = Path("embedding_cache")
    # Question vectors remembered per process (model + exact text; ~1.5 kB each for MiniLM,
    # 4 kB for e5-large); 0 turns the cache off.
    QUERY_EMBEDDING_CACHE_SIZE: int = Field(default=2048, ge=0)

    # --- answering ---
    FIREWORKS_API_KEY: str | None = None
    LLM_MODEL: str = "accounts/fireworks/models/qwen2p5-coder-32b-instruct"
    LLM_BASE_URL: str = "https://api.fireworks.ai/inference/v1"
    LLM_TIMEOUT_SECONDS: float = Field(default=60.0, gt=0)
    LLM_MAX_RETRIES: int = Field(default=2, ge=0)
    LLM_MAX_TOKENS: int = Field(default=1024, ge=1)
    LLM_TEMPERATURE: float = Field(default=0.2, ge=0, le=2)
    HISTORY_TURNS: int = Field(default=4, ge=0)
    # ...and at most this many characters of them (older turns dropped first).
    HISTORY_MAX_CHARS: int = Field(default=8000, ge=0)
    MIN_SCORE: float = Field(default=0.0, ge=-1, le=1)
    # How passages are found (a chatbot's retrieval_mode overrides it): dense (the embedding
    # model), lexical (the database's full-text search), hybrid (both, fused by rank).
    RETRIEVAL_MODE: Literal["dense", "hybrid", "lexical"] = "hybrid"
    # Passages each retriever proposes before fusion keeps the chatbot's top_k.
    RETRIEVAL_CANDIDATES: int = Field(default=20, ge=1, le=200)
    # hybrid and lexical: the passages holding an exact term of the question (a code, a number,
    # a name) that at most this many of the chatbot's passages hold form a third ranking in
    # the fusion; 0: off.
    RETRIEVAL_EXACT_MAX_PASSAGES: int = Field(default=3, ge=0, le=20)
    FALLBACK_MESSAGE: str = "I could not find anything about that in the documents I was given."
    SSE_HEARTBEAT_SECONDS: float = Field(default=15.0, gt=0)
    DEMO_MESSAGE_LIMIT: int = Field(default=10, ge=0)

    # --- billing ---
    PLATFORM_NAME: str = "Chatbot Platform"
    # Price of 1,000 tokens, in CURRENCY; amounts are Decimal, rounded half-to-even to cents.
    PRICE_PER_1K_TOKENS: Decimal = Field(
        default=Decimal("0.50"), gt=0, max_digits=10, decimal_places=4
    )
    CURRENCY: str = Field(default="USD", pattern=r"^[A-Z]{3}$")
    INVOICE_DUE_DAYS: int = Field(default=30, ge=0, le=365)
    INVOICE_MIN_TOKENS: int = Field(default=10_000, ge=1)
    INVOICE_MAX_TOKENS: int = Field(default=100_000_000, ge=1)
    # /api/usage says low_balance: true below this many tokens.
    LOW_BALANCE_TOKENS: int = Field(default=10_000, ge=0)
    # Signs payment-provider webhooks (HMAC-SHA256); empty: the webhook answers 503.
    BILLING_WEBHOOK_SECRET: str | None = None
    BILLING_WEBHOOK_TOLERANCE_SECONDS: int = Field(default=300, ge=1)
    # A TrueType font for invoice PDFs (any script); empty: DejaVu Sans where installed.
    INVOICE_FONT_PATH: Path | None = None

    # --- limits: what one client, visitor or tenant may use (see SECURITY.md) ---
    # Every request body, JSON or form (uploads have MAX_UPLOAD_MB and the limits below).
    MAX_REQUEST_BYTES: int = Field(default=1024 * 1024, ge=1024)
    # An upload must arrive within this many seconds (a slow sender is cut off with 408).
    MAX_UPLOAD_SECONDS: int = Field(default=300, ge=1)
    # A multipart part's headers (field name, file name, content type), in bytes.
    MAX_MULTIPART_HEADER_BYTES: int = Field(default=16 * 1024, ge=256)
    MAX_CONCURRENT_UPLOADS_PER_CUSTOMER: int = Field(default=4, ge=1)
    MAX_CHATBOTS_PER_CUSTOMER: int = Field(default=50, ge=1)
    MAX_DOCUMENTS_PER_CHATBOT: int = Field(default=1000, ge=1)
    # Free demo messages per customer in all (survives deleting and re-creating chatbots).
    DEMO_MESSAGES_PER_CUSTOMER: int = Field(default=50, ge=0)
    RATE_LIMIT_REGISTRATIONS_PER_IP: str = "5/hour"
    # Answers one chatbot may be generating at once (across all API processes).
    MAX_CONCURRENT_ANSWERS_PER_CHATBOT: int = Field(default=8, ge=1)
    # Public questions per session (session_id) of a chatbot per day.
    RATE_LIMIT_PUBLIC_PER_SESSION: str = "100/day"
    # The longest question accepted (characters); at most 10000.
    QUESTION_MAX_CHARS: int = Field(default=2000, ge=1, le=10_000)
    # A reservation whose request never settled (a crashed process) is given back after this.
    RESERVATION_TTL_SECONDS: int = Field(default=900, ge=60)
    # Documents of one customer being ingested at once (the rest wait their turn).
    INGEST_MAX_PER_CUSTOMER: int = Field(default=2, ge=1)
    # A failed embedding-model load is retried in the background this often (queries: 503).
    MODEL_RETRY_SECONDS: float = Field(default=30.0, gt=0)
    # Production may turn off the interactive docs (/docs, /redoc, /openapi.json) and /metrics.
    ENABLE_DOCS: bool = True
    ENABLE_METRICS: bool = True

    # --- rate limits ---
    RATE_LIMIT_STORAGE_URL: str = "memory://"
    # Every key this deployment writes to a Redis storage starts with it (and "reset" deletes
    # only those): give deployments or test runs that share one Redis database their own.
    RATE_LIMIT_KEY_PREFIX: str = Field(default="LIMITS", pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    RATE_LIMIT_PUBLIC_PER_CLIENT: str = "60/minute"
    RATE_LIMIT_PUBLIC_PER_CHATBOT: str = "600/minute"
    # The widget's profile read (GET /api/public/{id}), once per page view, per key + client IP.
    RATE_LIMIT_PUBLIC_READS: str = "120/minute"

    def secret_key_problem(self) -> str | None:
        """Why SECRET_KEY must not sign tokens here, or None. It fails closed: only an explicit
        ENVIRONMENT=development accepts the placeholder or a short key."""
        if self.SECRET_KEY == PLACEHOLDER_SECRET_KEY:
            weakness = "the placeholder"
        elif len(self.SECRET_KEY.encode()) < 32:
            weakness = "shorter than 32 bytes"
        else:
            return None
        if self.ENVIRONMENT == "development":
            return None
        return (
            f"SECRET_KEY is {weakness} and ENVIRONMENT is {self.ENVIRONMENT}: set a random "
            "SECRET_KEY (python -c 'import secrets; print(secrets.token_urlsafe(48))'), or "
            "ENVIRONMENT=development on a machine of your own"
        )

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.CHUNK_SIZE and self.CHUNK_OVERLAP and self.CHUNK_OVERLAP >= self.CHUNK_SIZE:
            raise ValueError("CHUNK_OVERLAP must be smaller than CHUNK_SIZE")
        if self.EMBEDDING_BACKEND == "torch" and self.EMBEDDING_QUANTIZE != "none":
            raise ValueError(
                "EMBEDDING_QUANTIZE=int8 needs EMBEDDING_BACKEND=openvino or onnx "
                "(or set EMBEDDING_QUANTIZE=none for torch)"
            )
        if self.INVOICE_MIN_TOKENS > self.INVOICE_MAX_TOKENS:
            raise ValueError("INVOICE_MIN_TOKENS must not be larger than INVOICE_MAX_TOKENS")
        return self

    @property
    def max_upload_bytes(self) -> int:
        return self.MAX_UPLOAD_MB * 1024 * 1024


@lru_cache
def get_settings() -> Settings:
    return Settings()

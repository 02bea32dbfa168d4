"""Faster CPU runtimes for the sentence-transformers model: ONNX Runtime and OpenVINO, in fp32
or int8.

The loaded sentence-transformers model is exported once (its whole forward pass: transformer,
pooling and any dense layers; the vectors are normalised here) and cached under
EMBEDDING_CACHE_DIR, one folder per model and variant, written atomically under a file lock so
that two processes never build the same one twice. Tokenisation stays the model's own fast
tokenizer with the same truncation and padding as sentence-transformers, so an fp32 export gives
the torch vectors to float precision.

int8: OpenVINO is quantized statically with NNCF, calibrated on the passages shipped in
``calibration_passages.txt`` (English, German and many other languages; never downloaded);
ONNX dynamically (weights int8, activations quantized per batch), which needs no calibration.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import numpy as np
    from sentence_transformers import SentenceTransformer

log = logging.getLogger("app.rag.embeddings")

BACKENDS = ("torch", "onnx", "openvino")
QUANTIZATIONS = ("none", "int8")
CALIBRATION_FILE = Path(__file__).with_name("calibration_passages.txt")
# Bump when the export format changes: older cached folders are then ignored, not misread.
EXPORT_FORMAT = 1
# The shapes an exported model is run on. OpenVINO's CPU plugin keeps state for every input
# shape it has seen (a few hundred KB each, never given back), so a process that embeds texts
# of every length in batches of every size grows without end. Batches are therefore cut into
# powers of two (27 texts: 16 + 8 + 2 + 1) and padded to a multiple of LENGTH_STEP tokens
# (attention-masked padding: the vectors do not change): a few dozen shapes in all.
LENGTH_STEP = 32


class BackendUnavailable(RuntimeError):
    """The backend cannot be built or loaded here (package missing, export error)."""


@dataclass(frozen=True)
class Variant:
    backend: str  # onnx | openvino
    quantize: str  # none | int8

    @property
    def label(self) -> str:
        return self.backend if self.quantize == "none" else f"{self.backend}-{self.quantize}"


class Runner(Protocol):
    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray: ...


def calibration_passages(limit: int | None = None) -> list[str]:
    lines = CALIBRATION_FILE.read_text(encoding="utf-8").splitlines()
    passages = [line for line in lines if line.strip() and not line.startswith("#")]
    return passages[:limit] if limit else passages


def _input_names(model: SentenceTransformer) -> list[str]:
    names = list(getattr(model.tokenizer, "model_input_names", ["input_ids", "attention_mask"]))
    return [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in names]


def tokenize(model: SentenceTransformer, texts: Sequence[str], names: list[str]) -> dict[str, Any]:
    """What sentence-transformers feeds the transformer, as int64 numpy arrays."""
    encoded = model.tokenizer(
        list(texts),
        padding=True,
        truncation="longest_first",
        max_length=model.max_seq_length,
        return_tensors="np",
    )
    return {name: encoded[name].astype("int64") for name in names}


def pad_length(
    inputs: dict[str, np.ndarray], step: int, max_length: int, pad_id: int
) -> dict[str, np.ndarray]:
    """Tokenized inputs padded on the right to a multiple of `step` tokens (never beyond
    `max_length`, unless they are longer already): input ids with `pad_id`, masks with 0."""
    import numpy as np

    length = inputs["input_ids"].shape[1]
    target = max(length, min(-(-length // step) * step, max_length))
    if target == length:
        return inputs
    padded = {}
    for name, array in inputs.items():
        value = pad_id if name == "input_ids" else 0
        padded[name] = np.pad(array, ((0, 0), (0, target - length)), constant_values=value)
    return padded


def power_of_two_batches(count: int, batch_size: int) -> list[int]:
    """`count` texts as batches of powers of two, each at most `batch_size`, largest first."""
    sizes = []
    while count > 0:
        size = 1 << (min(count, max(1, batch_size)).bit_length() - 1)
        sizes.append(size)
        count -= size
    return sizes


def cache_folder(cache_dir: Path, model_name: str, source: str, variant: Variant) -> Path:
    """One folder per model (its identity, where it was loaded from and the weights' sizes and
    times: a replaced model is a new folder) and variant."""
    fingerprint = [model_name, source, str(EXPORT_FORMAT)]
    folder = Path(source)
    if folder.is_dir():
        for path in sorted(folder.rglob("*")):
            if path.suffix in {".safetensors", ".bin", ".json"} and path.is_file():
                stat = path.stat()
                fingerprint.append(f"{path.relative_to(folder)}:{stat.st_size}:{stat.st_mtime_ns}")
    digest = hashlib.sha256("\n".join(fingerprint).encode()).hexdigest()[:12]
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", model_name.strip("/").split("/")[-1])[:60]
    return Path(cache_dir).expanduser() / f"{slug}-{digest}" / variant.label


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _wrap(model: SentenceTransformer, names: list[str]) -> Any:
    """The model's forward pass (transformer, pooling, dense layers) as a traceable module with
    named inputs."""
    import torch

    class SentenceEmbedding(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(
            self,
            input_ids: torch.Tensor,
            attention_mask: torch.Tensor,
            token_type_ids: torch.Tensor | None = None,
        ) -> torch.Tensor:
            features = {"input_ids": input_ids, "attention_mask": attention_mask}
            if token_type_ids is not None:
                features["token_type_ids"] = token_type_ids
            embedding: torch.Tensor = self.inner(features)["sentence_embedding"]
            return embedding

    if names[:2] != ["input_ids", "attention_mask"]:
        raise BackendUnavailable(f"unsupported model inputs {names}")
    return SentenceEmbedding().eval()


def _example(model: SentenceTransformer, names: list[str]) -> dict[str, Any]:
    import torch

    sample = tokenize(model, ["An example sentence.", "Ein zweiter, etwas längerer Satz."], names)
    return {n: torch.from_numpy(sample[n]) for n in names}


def _export(model: SentenceTransformer, variant: Variant, out: Path) -> None:
    """Write the variant into the empty folder ``out``. Raises BackendUnavailable."""
    import torch

    names = _input_names(model)
    wrapped = _wrap(model, names)
    example = _example(model, names)
    if variant.backend == "openvino":
        try:
            import openvino as ov
        except ImportError as exc:
            raise BackendUnavailable("the openvino package is not installed") from exc
        with torch.no_grad():
            ov_model = ov.convert_model(
                wrapped,
                example_input=example,
                input=[(n, ov.PartialShape([-1, -1]), ov.Type.i64) for n in names],
            )
        if variant.quantize == "int8":
            ov_model = _quantize_openvino(model, ov_model, names)
        ov.save_model(ov_model, str(out / "model.xml"), compress_to_fp16=False)
    else:
        try:
            import onnxruntime  # noqa: F401
        except ImportError as exc:
            raise BackendUnavailable("the onnxruntime package is not installed") from exc
        fp32 = out / "model.onnx"
        axes = {n: {0: "batch", 1: "tokens"} for n in names}
        with torch.no_grad():
            torch.onnx.export(
                wrapped,
                tuple(example[n] for n in names),
                str(fp32),
                input_names=names,
                output_names=["sentence_embedding"],
                dynamic_axes={**axes, "sentence_embedding": {0: "batch"}},
                opset_version=17,
                dynamo=False,
            )
        if variant.quantize == "int8":
            _quantize_onnx(fp32, out / "model.int8.onnx")
            fp32.unlink()
            for extra in out.glob("*.onnx.data"):
                extra.unlink()


def _quantize_openvino(model: SentenceTransformer, ov_model: Any, names: list[str]) -> Any:
    try:
        import nncf
    except ImportError as exc:
        raise BackendUnavailable("the nncf package (int8 quantization) is not installed") from exc
    items = [tokenize(model, [text], names) for text in calibration_passages()]
    return nncf.quantize(
        ov_model,
        nncf.Dataset(items),
        model_type=nncf.ModelType.TRANSFORMER,
        subset_size=len(items),
    )


def _quantize_onnx(source: Path, target: Path) -> None:
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as exc:  # onnxruntime.quantization needs the onnx package
        raise BackendUnavailable(f"onnx int8 quantization is unavailable ({exc})") from exc
    quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True)


def build(
    model: SentenceTransformer, model_name: str, source: str, variant: Variant, cache_dir: Path
) -> tuple[Path, bool]:
    """The cached export's folder, building it if absent; (folder, built now)."""
    folder = cache_folder(cache_dir, model_name, source, variant)
    if (folder / "meta.json").is_file():
        return folder, False
    with _file_lock(folder.parent / f".{variant.label}.lock"):
        if (folder / "meta.json").is_file():  # another process built it meanwhile
            return folder, False
        started = time.perf_counter()
        work = Path(tempfile.mkdtemp(prefix=f".{variant.label}-", dir=folder.parent))
        try:
            _export(model, variant, work)
            meta = {
                "model": model_name,
                "source": source,
                "variant": variant.label,
                "format": EXPORT_FORMAT,
                "inputs": _input_names(model),
                "seconds": round(time.perf_counter() - started, 1),
            }
            (work / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
            if folder.exists():  # an incomplete folder from an older crash
                shutil.rmtree(folder)
            os.replace(work, folder)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
    log.info(
        "embedding backend built",
        extra={"model": model_name, "variant": variant.label, "path": str(folder)},
    )
    return folder, True


def load_runner(folder: Path, variant: Variant, threads: int) -> Runner:
    """The compiled model of a built folder: inputs (numpy int64) to unnormalised vectors."""
    if variant.backend == "openvino":
        try:
            import openvino as ov
        except ImportError as exc:
            raise BackendUnavailable("the openvino package is not installed") from exc
        core = ov.Core()
        compiled = core.compile_model(
            str(folder / "model.xml"),
            "CPU",
            {
                "INFERENCE_NUM_THREADS": max(1, threads),
                "PERFORMANCE_HINT": "LATENCY",
                # Left to itself OpenVINO computes in bf16 on CPUs that have it (AMX): fp32 would
                # no longer give the torch vectors, and int8 gains nothing by it.
                "INFERENCE_PRECISION_HINT": "f32",
            },
        )
        local = threading.local()  # an infer request serves one call at a time

        def run_openvino(inputs: dict[str, np.ndarray]) -> np.ndarray:
            request = getattr(local, "request", None)
            if request is None:
                request = local.request = compiled.create_infer_request()
            result: np.ndarray = request.infer(inputs)[0].copy()
            return result

        return run_openvino
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise BackendUnavailable("the onnxruntime package is not installed") from exc
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    name = "model.int8.onnx" if variant.quantize == "int8" else "model.onnx"
    session = ort.InferenceSession(str(folder / name), options, providers=["CPUExecutionProvider"])

    def run_onnx(inputs: dict[str, np.ndarray]) -> np.ndarray:
        result: np.ndarray = session.run(None, inputs)[0]
        return result

    return run_onnx


class ExportedEncoder:
    """``encode`` as sentence-transformers does it (length-sorted batches, the same
    tokenisation), on an exported model; L2-normalised float32 rows in the input order."""

    def __init__(
        self,
        model: SentenceTransformer,
        runner: Runner,
        variant: Variant,
        folder: Path,
        passage_runner: Callable[[], Runner] | None = None,
    ):
        self.model = model
        self.runner = runner
        # Passages (ingestion) on a compiled model of their own, made on first use: one
        # OpenVINO compiled model runs one request at a time, so a question would otherwise
        # wait behind a whole batch of passages (0.5 s p50 while a large document was
        # embedded). Made in the ingesting thread, its threads take that thread's lowered
        # priority (INGEST_NICE, INGEST_SCHED_IDLE), so questions keep the CPU first.
        self._passage_factory = passage_runner
        self._passage_runner: Runner | None = None
        self._passage_lock = threading.Lock()
        self.variant = variant
        self.folder = folder
        self.names = _input_names(model)
        self.pad_id = int(getattr(model.tokenizer, "pad_token_id", None) or 0)
        self.max_length = int(model.max_seq_length or 1 << 30)

    def passages_runner(self) -> Runner:
        if self._passage_factory is None:
            return self.runner
        with self._passage_lock:
            if self._passage_runner is None:
                try:
                    self._passage_runner = self._passage_factory()
                except Exception as exc:  # e.g. out of memory: share the questions' model
                    reason = " ".join(str(exc).split())[:300] or type(exc).__name__
                    log.warning("passages share the questions' compiled model: %s", reason)
                    self._passage_runner = self.runner
            return self._passage_runner

    def encode(
        self, texts: Sequence[str], batch_size: int, *, passages: bool = False
    ) -> np.ndarray:
        """Vectors of `texts`; `passages`: on the ingestion's compiled model."""
        import numpy as np

        runner = self.passages_runner() if passages else self.runner

        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = np.empty((len(texts), 0), dtype=np.float32)
        rows: list[np.ndarray] = []
        start = 0
        for size in power_of_two_batches(len(order), batch_size):
            batch = [texts[i] for i in order[start : start + size]]
            start += size
            inputs = tokenize(self.model, batch, self.names)
            inputs = pad_length(inputs, LENGTH_STEP, self.max_length, self.pad_id)
            rows.append(np.asarray(runner(inputs)))
        if rows:
            stacked = np.concatenate(rows).astype(np.float32, copy=False)
            norms = np.linalg.norm(stacked, axis=1, keepdims=True)
            stacked = stacked / np.maximum(norms, 1e-12)
            out = np.empty_like(stacked)
            out[np.asarray(order)] = stacked
        return out

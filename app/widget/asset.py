"""The embeddable widget script: read once, gzipped once, versioned by its content."""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

WIDGET_PATH = Path(__file__).resolve().parents[1] / "static" / "widget.js"


@dataclass(frozen=True)
class WidgetAsset:
    body: bytes
    gzipped: bytes
    version: str  # the first 12 hex digits of the content's SHA-256

    @property
    def etag(self) -> str:
        return f'"{self.version}"'


@lru_cache(maxsize=1)
def widget_asset() -> WidgetAsset:
    body = WIDGET_PATH.read_bytes()
    return WidgetAsset(
        body=body,
        gzipped=gzip.compress(body, compresslevel=9, mtime=0),
        version=hashlib.sha256(body).hexdigest()[:12],
    )

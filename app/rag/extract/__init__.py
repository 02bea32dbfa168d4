"""Turn an uploaded file into plain text, page by page where the format has pages.

``detect_file_type`` names an upload's type from its bytes, ``extract_text`` extracts in this
process, and ``Sandbox`` extracts in worker processes capped in memory and time (what the
ingest worker uses). Every failure is an ``ExtractionError`` whose message tells the uploader
what to do, or ``ExtractorUnavailable`` when the fault is ours and the document is retried.

Importing this package starts nothing: a ``Sandbox`` starts its workers on first use.
"""

from app.rag.extract.core import SUPPORTED_TYPES, extract_text
from app.rag.extract.detect import detect_file_type
from app.rag.extract.messages import MSG_EMPTY, ExtractionError, ExtractorUnavailable
from app.rag.extract.sandbox import Sandbox
from app.rag.extract.sections import Section

__all__ = [
    "MSG_EMPTY",
    "SUPPORTED_TYPES",
    "ExtractionError",
    "ExtractorUnavailable",
    "Sandbox",
    "Section",
    "detect_file_type",
    "extract_text",
]

"""Structured logs: one JSON object per line, so a PACS administrator's log shipper can index them.

Fields passed with ``extra=`` (association id, calling AE, study reference, status) become keys.
Patient data never goes in: callers log hashed study references, never names, IDs or UIDs.
"""
from __future__ import annotations

import json
import logging
import sys
import time

__all__ = ["JsonFormatter", "setup_logging"]

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        doc.update({k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")})
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def setup_logging(fmt: str = "json", level: int = logging.INFO) -> None:
    """Logs to stderr, JSON lines or plain text; pynetdicom's chatter kept to warnings."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("pynetdicom", "openjpeg", "highdicom"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # pydicom's validation of what it reads warns with the malformed value quoted, which can hold
    # patient data; the service validates what it needs itself (scp.py, the reader)
    import pydicom.config

    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE

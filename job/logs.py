"""Logging for the job: one format, `metrics:` lines for consoles to scrape, secrets redacted everywhere."""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Callable
from typing import Any

log = logging.getLogger("job")

_SECRETS: set[str] = set()
_METRICS_SINKS: list[Callable[[dict[str, Any]], None]] = []


class RedactSecrets(logging.Filter):
    """Replaces every registered secret in a record's final message (args included) with ***."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _SECRETS:
            message = record.getMessage()
            for secret in _SECRETS:
                message = message.replace(secret, "***")
            record.msg, record.args = message, None
            if record.exc_text:
                for secret in _SECRETS:
                    record.exc_text = record.exc_text.replace(secret, "***")
        return True


def register_secret(value: str | None) -> None:
    """Never let this value reach a log line (short values are ignored: they would redact ordinary words)."""
    if value and len(value) >= 8:
        _SECRETS.add(value)


def redact(text: str) -> str:
    for secret in _SECRETS:
        text = text.replace(secret, "***")
    return text


class _Stderr(logging.StreamHandler):
    """A stream handler that writes to whatever `sys.stderr` is at each record, never to the stream it was made with
    (which a caller that captured stderr, or a test, may have closed since)."""

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def setup(level: int = logging.INFO) -> None:
    """Log to stderr with timestamps; quiet the chattiest libraries. Safe to call twice."""
    root = logging.getLogger()
    if not any(getattr(h, "_job_handler", False) for h in root.handlers):
        handler = _Stderr()
        handler._job_handler = True  # type: ignore[attr-defined]
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        handler.addFilter(RedactSecrets())
        root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("urllib3", "botocore", "boto3", "s3transfer", "filelock", "httpx", "fsspec", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def plain(value: Any) -> str:
    """A number as a plain decimal (never scientific notation), so regexes like [0-9.]+ match it."""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        import numpy as np  # here, not at the top: the launchers import the job's light modules without numpy

        return np.format_float_positional(value, unique=True, trim="-")
    return str(value)


def metrics_line(values: dict[str, Any]) -> str:
    """`metrics: key=value key=value` with plain decimals."""
    return "metrics: " + " ".join(f"{k}={plain(v)}" for k, v in values.items() if v is not None)


def emit_metrics(values: dict[str, Any]) -> None:
    """Print a `metrics:` line to stdout (flushed): SageMaker metric definitions and consoles scrape these; the same
    values go to every sink (the MLflow tracker), under the same names."""
    print(metrics_line(values), flush=True)
    for sink in list(_METRICS_SINKS):
        sink({k: v for k, v in values.items() if v is not None})


def add_metrics_sink(sink: Callable[[dict[str, Any]], None]) -> None:
    """Also hand every `metrics:` line's values to `sink` (which must return at once and never raise)."""
    _METRICS_SINKS.append(sink)


def remove_metrics_sink(sink: Callable[[dict[str, Any]], None]) -> None:
    if sink in _METRICS_SINKS:
        _METRICS_SINKS.remove(sink)

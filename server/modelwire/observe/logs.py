"""JSON log lines: every log record, and one `call` line per RPC. No prompt text, no secret."""

from __future__ import annotations

import itertools
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from modelwire.observe.call_record import CallRecord

ACCESS_LOGGER = "modelwire.access"
_STANDARD_FIELDS = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
}


class JsonFormatter(logging.Formatter):
    """One JSON object per record. Formats every call's line, so what does not change per record
    is made once: the encoder, and the timestamp up to its second."""

    def __init__(self) -> None:
        super().__init__()
        self._encoder = json.JSONEncoder(default=str)
        self._second = -1
        self._second_text = ""

    def _timestamp(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        return f"{self._second_text}.{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": self._timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        # An access line's fields are the last of its attributes: only those are looked at.
        attributes: Iterable[tuple[str, object]] = record.__dict__.items()
        if isinstance(record, _AccessRecord):
            attributes = itertools.islice(attributes, record.standard, None)
        line.update({key: value for key, value in attributes if key not in _STANDARD_FIELDS})
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return self._encoder.encode(line)


class TextFormatter(logging.Formatter):
    """For humans: the message, then a record's extra fields as key=value (values quoted when they
    hold spaces or control characters, so one record stays one line)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = [
            (key, value) for key, value in record.__dict__.items() if key not in _STANDARD_FIELDS
        ]
        if extra:
            line += " " + " ".join(f"{key}={_text_value(value)}" for key, value in extra)
        return line


def _text_value(value: object) -> str:
    text = str(value)
    return text if text.isprintable() and " " not in text and text else json.dumps(text)


def configure_logging(level: str, log_format: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


_access = logging.getLogger(ACCESS_LOGGER)


class _AccessRecord(logging.LogRecord):
    """An access line's record, a LogRecord like any other to handlers and formatters, made at a
    third of LogRecord's cost (callgrind): `LogRecord.__init__` works out the caller's file name,
    module, thread and process names for every record, which do not change between the lines of
    one thread; they are copied from the first record the thread made. `standard` is the number
    of attributes before the line's own fields."""

    __slots__ = ("standard",)
    standard: int


# Per thread: the attributes of its first access record, and the logging module's start time.
_prototypes: dict[int, tuple[dict[str, object], float]] = {}
os.register_at_fork(after_in_child=_prototypes.clear)


def _access_record(level: int, fields: dict[str, object]) -> logging.LogRecord:
    if logging.getLogRecordFactory() is not logging.LogRecord:  # an application's own records
        return _access.makeRecord(ACCESS_LOGGER, level, "", 0, "call", (), None, extra=fields)
    thread = threading.get_ident()
    prototype = _prototypes.get(thread)
    if prototype is None:
        first = logging.LogRecord(ACCESS_LOGGER, level, "", 0, "call", (), None)
        start = first.created - first.relativeCreated / 1000
        attributes = dict(first.__dict__)
        if "taskName" in attributes:  # Python 3.12+: a task's, not the thread's
            attributes["taskName"] = None
        prototype = _prototypes[thread] = (attributes, start)
    attributes, start = prototype
    now = time.time()
    record = _AccessRecord.__new__(_AccessRecord)
    record.__dict__.update(attributes)
    record.levelno = level
    record.levelname = logging.getLevelName(level)
    record.created = now
    record.msecs = int((now - int(now)) * 1000) + 0.0
    record.relativeCreated = (now - start) * 1000
    record.standard = len(attributes)
    record.__dict__.update(fields)
    return record


@dataclass(frozen=True)
class AccessSampling:
    """Which calls' access lines are written: every refused, failed or slow call, and other
    successful ones at `rate` (their lines say `sampled`, the rate, so counts can be scaled
    back; a line always written does not, as scaling it would count it 1/rate times)."""

    rate: float = 1.0
    # Seconds to a unary call's answer, or to a stream's first message, that make a call slow.
    slow_s: float = 1.0
    draw: Callable[[], float] = field(default=random.random, compare=False)

    def verdict(self, record: CallRecord) -> float | None:
        """None: the line is left out; 1.0: always written; else the rate it was drawn at."""
        if self.rate >= 1.0 or record.code != "OK":
            return 1.0
        first = record.first_chunk_at
        waited = record.latency_s if first is None else first - record.started
        if waited >= self.slow_s:
            return 1.0
        return self.rate if self.draw() < self.rate else None


def log_call(record: CallRecord, level: int = logging.INFO, sampled: float | None = None) -> None:
    """The call's line. Its record is made directly: `Logger.info` would walk the stack to find
    the caller's file and line, which this line never shows (a quarter of its cost), and
    LogRecord's own __init__ would work out what does not change between lines
    (`_access_record`)."""
    if not _access.isEnabledFor(level):
        return
    fields: dict[str, object] = {
        "request_id": record.request_id,
        "method": record.method,
        "model": record.model,
        "caller": record.caller,
        "tenant": record.tenant,
        "code": record.code,
        "latency_ms": round(record.latency_s * 1000, 3),
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
    }
    if record.relayed_by is not None:
        fields["relayed_by"] = record.relayed_by
    if record.cost is not None:
        # What the call was charged (docs/configuration.md#quota): its usage's parts and cost.
        fields["cost"] = record.cost
        fields["cached_prompt_tokens"] = record.cached_prompt_tokens
        fields["cache_write_tokens"] = record.cache_write_tokens
        fields["reasoning_tokens"] = record.reasoning_tokens
        if record.usage_estimated:
            fields["usage_estimated"] = True
    if record.first_chunk_at is not None:
        fields["messages"] = record.chunks
        fields["ttft_ms"] = round((record.first_chunk_at - record.started) * 1000, 3)
    if record.error_kind is not None:
        fields["error"] = record.error_kind
    if record.attempts:
        fields["attempts"] = record.attempts
    if record.answered_by is not None and record.answered_by != record.model:
        fields["answered_by"] = record.answered_by
    if record.context is not None:
        fields["context"] = record.context
    if sampled is not None:
        fields["sampled"] = sampled
    _access.handle(_access_record(level, fields))

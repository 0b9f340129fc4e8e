"""The access line's record is made without LogRecord's own __init__ (observe/logs.py): handlers,
filters and formatters must see what a LogRecord made by `Logger.makeRecord` would give them."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from modelwire.observe.call_record import begin_call
from modelwire.observe.logs import ACCESS_LOGGER, JsonFormatter, TextFormatter, log_call


class Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def kept() -> Iterator[Kept]:
    handler = Kept()
    access = logging.getLogger(ACCESS_LOGGER)
    access.addHandler(handler)
    access.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        access.removeHandler(handler)
        access.setLevel(logging.NOTSET)


def _line() -> None:
    record = begin_call("/modelwire.v1.ModelWorker/Generate", "req-1")
    record.model = "m"
    log_call(record)


def test_an_access_record_has_a_log_records_attributes(kept: Kept) -> None:
    _line()
    _line()  # the second is copied from the thread's first
    made = logging.getLogger(ACCESS_LOGGER).makeRecord(
        ACCESS_LOGGER, logging.INFO, "", 0, "call", (), None, extra={"request_id": "req-1"}
    )
    for record in kept.records:
        assert set(vars(record)) >= set(vars(made))
        for name in ("name", "levelname", "levelno", "msg", "args", "thread", "process"):
            assert getattr(record, name) == getattr(made, name), name
        assert abs(record.created - made.created) < 5
        assert abs(record.relativeCreated - made.relativeCreated) < 5000
        assert record.getMessage() == "call"
    assert kept.records[1].created >= kept.records[0].created


def test_the_formatters_show_the_lines_fields_and_what_a_filter_added(kept: Kept) -> None:
    def stamp(record: logging.LogRecord) -> bool:
        record.replica = "r1"
        return True

    kept.addFilter(stamp)
    _line()
    record = kept.records[0]
    line = json.loads(JsonFormatter().format(record))
    assert (line["level"], line["logger"], line["msg"]) == ("INFO", ACCESS_LOGGER, "call")
    assert (line["request_id"], line["model"], line["code"]) == ("req-1", "m", "OK")
    assert line["replica"] == "r1"
    assert "thread" not in line and "standard" not in line
    text = TextFormatter().format(record)
    assert "request_id=req-1" in text and "replica=r1" in text and "standard" not in text


def test_an_applications_record_factory_makes_the_record(kept: Kept) -> None:
    original = logging.getLogRecordFactory()

    def factory(*args: object, **kwargs: object) -> logging.LogRecord:
        record = original(*args, **kwargs)  # type: ignore[arg-type]
        record.host = "h1"
        return record

    logging.setLogRecordFactory(factory)
    try:
        _line()
    finally:
        logging.setLogRecordFactory(original)
    assert kept.records[0].host == "h1"  # type: ignore[attr-defined]
    assert kept.records[0].request_id == "req-1"  # type: ignore[attr-defined]

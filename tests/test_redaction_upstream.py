"""The worker's API key and the caller's request text never reach a caller's error or the log
(issue 22, items 2 and 3): an upstream that echoes the key far into a long message has it
redacted before the message is cut, on every path (status errors, error events, JSON instead of
events, errors in a 200 body, transport errors), and a key's start left at a cut is redacted too;
every string a caller gave (tool descriptions and schemas, output schemas, image URLs, tool-call
ids, reasoning and its signature, embedding inputs) is scrubbed, also when an HTML page escapes it.
"""

from __future__ import annotations

import dataclasses
import enum
import html
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import grpc
import pytest

from conftest import running_worker
from fake_upstream import (
    Exchange,
    FakeUpstream,
    Responder,
    is_anthropic,
    load_toml_config,
    received_credential,
    stream_prologue,
)
from modelwire.app.server import Worker
from modelwire.client import ModelwireCallError, ModelWorkerClient
from modelwire.client.requests import image, json_schema_format, message, tool, tool_result
from modelwire.v1 import worker_pb2 as pb

# 59 characters, like the key of the review's reproduction; no 8 leading characters may show.
KEY = "sk-proj-SECRETKEY0123456789abcdefghijklmnopqrstuvwxyzABCDEFG"
KEY_START = KEY[:8]
KEY_ENV = "MODELWIRE_REDACTION_TEST_KEY"
MESSAGE_LIMIT = 1000  # what an upstream's message is cut to (http/errors.py _MAX_MESSAGE)
Handler = Callable[[Exchange, Responder], Awaitable[None]]


def _toml(fake: FakeUpstream) -> str:
    return f"""
[server]
grace_period_s = 1.0

[[models]]
name = "oa"
provider = "openai"
api_base = "{fake.url}/v1"
upstream_model = "gpt-4o-mini"
api_key_env = "{KEY_ENV}"
context_length = 128000
capabilities = ["chat", "streaming", "tools", "json_schema", "vision", "embeddings"]
timeout_s = 2.0
max_retries = 0

[[models]]
name = "an"
provider = "anthropic"
api_base = "{fake.url}"
upstream_model = "claude-sonnet-4-5"
api_key_env = "{KEY_ENV}"
context_length = 200000
capabilities = ["chat", "streaming", "tools", "json_schema", "vision", "reasoning"]
timeout_s = 2.0
max_retries = 0
"""


@pytest.fixture(scope="module")
async def worker(
    fake: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Worker]:
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setenv(KEY_ENV, KEY)
    config = load_toml_config(tmp_path_factory.mktemp("redaction"), _toml(fake))
    try:
        async with running_worker(config) as worker:
            yield worker
    finally:
        monkeypatch.undo()


@pytest.fixture
async def client(fake: FakeUpstream, worker: Worker) -> AsyncIterator[ModelWorkerClient]:
    fake.reset_records()
    async with ModelWorkerClient(worker.address, timeout=10) as client:
        yield client
    fake.reset_records()


async def _outcome(
    client: ModelWorkerClient, model: str, kind: str, prompt: Any = "Hi", **options: Any
) -> ModelwireCallError:
    """The error that ended the call (the tests' upstreams always fail it)."""
    try:
        if kind == "unary":
            await client.generate(model, prompt, **options)
        else:
            async for _ in client.stream(model, prompt, **options):
                pass
    except ModelwireCallError as error:
        return error
    raise AssertionError("the call succeeded")


# --- item 2: the key, echoed far into a long message ----------------------------------------------


def _echo_with_key(exchange: Exchange, key_shown: int) -> str:
    """Filler, then the credential header the upstream got, placed so that the message's cut
    leaves `key_shown` characters of the key (all of it when the whole message fits)."""
    credential = received_credential(exchange)
    assert credential.endswith(KEY), "the key went upstream"
    header = credential[: -len(KEY)]
    before_key = "the upstream could not serve this request; request headers: " + header
    filler = "." * (MESSAGE_LIMIT - 1 - key_shown - len(before_key))
    return filler + before_key + KEY


def _error_body(
    exchange: Exchange, text: str, kind: str = "invalid_request_error"
) -> dict[str, Any]:
    if is_anthropic(exchange):
        return {"type": "error", "error": {"type": kind, "message": text}}
    return {"error": {"message": text, "type": kind, "param": None, "code": None}}


async def _send(respond: Responder, status: int, body: bytes, content_type: str) -> None:
    await respond.head(
        status, {"Content-Length": str(len(body))}, chunked=False, content_type=content_type
    )
    await respond.raw(body)


def status_echo(status: int) -> Callable[[int], Handler]:
    def echo(key_shown: int) -> Handler:
        async def reply(exchange: Exchange, respond: Responder) -> None:
            await respond.json(status, _error_body(exchange, _echo_with_key(exchange, key_shown)))

        return reply

    return echo


def html_echo(key_shown: int) -> Handler:
    """A proxy's error page, not JSON: its text is the message."""

    async def reply(exchange: Exchange, respond: Responder) -> None:
        body = _echo_with_key(exchange, key_shown).encode()
        await _send(respond, 502, body, "text/html")

    return reply


def stream_error_event(key_shown: int) -> Handler:
    async def reply(exchange: Exchange, respond: Responder) -> None:
        await stream_prologue(exchange, respond)
        text = _echo_with_key(exchange, key_shown)
        if is_anthropic(exchange):
            error = {"type": "error", "error": {"type": "api_error", "message": text}}
            await respond.event(error, event="error")
        else:
            await respond.event({"error": {"message": text, "code": 500}})
        await respond.end()

    return reply


def json_instead_of_events(key_shown: int) -> Handler:
    async def reply(exchange: Exchange, respond: Responder) -> None:
        text = _echo_with_key(exchange, key_shown)
        await respond.json(200, _error_body(exchange, text, "api_error"))

    return reply


KEY_ECHOES = {
    "HTTP 400": ("unary", status_echo(400), grpc.StatusCode.INVALID_ARGUMENT),
    "HTTP 500 to a stream": ("stream", status_echo(500), grpc.StatusCode.UNAVAILABLE),
    "HTML 502 page": ("unary", html_echo, grpc.StatusCode.UNAVAILABLE),
    "error event": ("stream", stream_error_event, grpc.StatusCode.UNAVAILABLE),
    "JSON error instead of events": ("stream", json_instead_of_events, grpc.StatusCode.UNAVAILABLE),
    "error in a 200 body": ("unary", json_instead_of_events, grpc.StatusCode.UNAVAILABLE),
}


@pytest.mark.parametrize("key_shown", [len(KEY), 54, 20, 8], ids=lambda n: f"cut-after-{n}")
@pytest.mark.parametrize("path", sorted(KEY_ECHOES))
@pytest.mark.parametrize("model", ["oa", "an"])
async def test_a_key_echoed_at_the_cut_never_reaches_the_caller_or_the_log(
    client: ModelWorkerClient,
    fake: FakeUpstream,
    caplog: pytest.LogCaptureFixture,
    model: str,
    path: str,
    key_shown: int,
) -> None:
    kind, echo, code = KEY_ECHOES[path]
    fake.script(echo(key_shown))
    with caplog.at_level(logging.DEBUG):
        error = await _outcome(client, model, kind)

    assert error.code == code, error
    assert "the upstream could not serve this request" in error.message, error.message
    logged = caplog.text + "\n".join(repr(record.args) for record in caplog.records)
    for text in (error.message, logged):
        assert KEY_START not in text, text[-200:]
    if key_shown == len(KEY):
        assert "[redacted]" in error.message
    assert KEY in received_credential(fake.exchanges[0])


def test_a_transport_error_is_redacted_before_it_is_cut() -> None:
    from modelwire.providers.http.client import error_for_transport
    from modelwire.providers.http.options import Secret

    failure = aiohttp.ClientPayloadError("." * 950 + " while sending Bearer " + KEY)
    error = error_for_transport(failure, 1.0, Secret(KEY).redact, streaming=False)
    assert "ClientPayloadError" in str(error) and KEY_START not in str(error), str(error)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"key {KEY} is wrong", "key [redacted] is wrong"),
        (f"headers: Bearer {KEY[:30]}", "headers: Bearer [redacted]"),
        (f"headers: Bearer {KEY[:12]}… and more", "headers: Bearer [redacted]… and more"),
        (f"'{KEY[:9]}...' was cut by the upstream", "'[redacted]...' was cut by the upstream"),
        (f"the key ends the text: {KEY[:8]}", "the key ends the text: [redacted]"),
        # Fewer than 8 characters, or the key's start followed by other text: no cut left them.
        (f"too short to tell: {KEY[:7]}…", f"too short to tell: {KEY[:7]}…"),
        ("keys look like sk-proj-abc123, see docs", "keys look like sk-proj-abc123, see docs"),
    ],
)
def test_secret_redacts_the_key_and_its_start_at_a_cut(text: str, expected: str) -> None:
    from modelwire.providers.http.options import Secret

    assert Secret(KEY).redact(text) == expected


def test_error_messages_come_from_the_body_redacted_before_the_cut() -> None:
    from modelwire.providers.http.errors import message_from_body
    from modelwire.providers.http.options import Secret

    body = json.dumps({"error": {"message": "." * 960 + " Bearer " + KEY}}).encode()
    shown = message_from_body(body, Secret(KEY).redact)
    assert KEY_START not in shown and len(shown) <= MESSAGE_LIMIT


# --- item 3: every caller-given string is scrubbed ------------------------------------------

TOOL_DESCRIPTION = "SECRET-TOOL-DESCRIPTION internal routing notes for acme corp"
SCHEMA_PROPERTY = "internal_account_number_field"
OUTPUT_PROPERTY = "quarterly_private_revenue_figure"
SIGNED_URL = (
    "https://bucket.s3.amazonaws.com/private/scan.png"
    "?X-Amz-Signature=abcdef0123456789deadbeef&X-Amz-Credential=AKIAEXAMPLE"
)
TOOL_CALL_ID = "call_Zq8TOOLCALLID4471"
REASONING = "CONFIDENTIAL-REASONING weighing the merger terms"
SIGNATURE = "EqSIGNATURE-4471-opaque-bytes-from-the-provider"
# What each field's echo must not show: a piece of it that is the caller's alone.
MARKERS = {
    "tool description": "SECRET-TOOL-DESCRIPTION",
    "tool schema": SCHEMA_PROPERTY,
    "output schema": OUTPUT_PROPERTY,
    "image URL": "abcdef0123456789deadbeef",
    "tool call id": "TOOLCALLID4471",
}


def _rich_request(model: str, field: str) -> tuple[list[pb.ModelMessage], dict[str, Any]]:
    """A request carrying the field: an output schema alone (Anthropic takes it as a forced tool
    call, so not beside tools), every other field in one conversation with a tool."""
    if field == "output schema":
        output = {"type": "object", "properties": {OUTPUT_PROPERTY: {"type": "number"}}}
        output_format = json_schema_format("ledger", output)
        return [message("user", "Summarise the ledger.")], {"output_format": output_format}
    messages = [
        message("user", "Read the scanned ledger page, please.", image(SIGNED_URL)),
        message("assistant", tool_calls=[pb.ToolCall(id=TOOL_CALL_ID, name="lookup_ledger")]),
        tool_result(TOOL_CALL_ID, '{"rows": 12}'),
        message("user", "Now summarise it."),
    ]
    if model == "an":
        thought = message(
            "assistant", "Noted.", reasoning=REASONING, reasoning_signature=SIGNATURE.encode()
        )
        messages.insert(1, thought)
        messages.insert(2, message("user", "Go on."))
    schema = {"type": "object", "properties": {SCHEMA_PROPERTY: {"type": "string"}}}
    return messages, {"tools": [tool("lookup_ledger", schema, description=TOOL_DESCRIPTION)]}


def echo_around(marker: str, *, as_html: bool = False) -> Handler:
    """A 400 (or an HTML 500 page) quoting the part of the request body around `marker`, in the
    form it was sent (JSON-escaped inside the body)."""

    async def reply(exchange: Exchange, respond: Responder) -> None:
        body = exchange.body.decode()
        where = body.index(json.dumps(marker)[1:-1])
        quoted = body[max(0, where - 150) : where + 150]
        if as_html:
            page = f"<html><body><p>while handling: {html.escape(quoted)}</p></body></html>"
            await _send(respond, 500, page.encode(), "text/html")
            return
        text = f"cannot accept this part of the request: {quoted}"
        await respond.json(400, _error_body(exchange, text))

    return reply


# Chat Completions takes no reasoning back, so only the anthropic provider sends it upstream.
ECHOED_FIELDS = [(model, field) for model in ("oa", "an") for field in sorted(MARKERS)]
ECHOED_FIELDS += [("an", "reasoning"), ("an", "reasoning signature")]


@pytest.mark.parametrize("as_html", [False, True], ids=["json-400", "html-500"])
@pytest.mark.parametrize(("model", "field"), ECHOED_FIELDS)
async def test_every_caller_given_string_is_scrubbed_from_an_upstream_echo(
    client: ModelWorkerClient,
    fake: FakeUpstream,
    caplog: pytest.LogCaptureFixture,
    model: str,
    field: str,
    as_html: bool,
) -> None:
    marker = {"reasoning": REASONING, "reasoning signature": SIGNATURE}.get(field) or MARKERS[field]
    messages, options = _rich_request(model, field)
    fake.script(echo_around(marker, as_html=as_html))
    with caplog.at_level(logging.DEBUG):
        error = await _outcome(client, model, "unary", messages, **options)

    assert fake.exchanges, error
    sent = fake.exchanges[0].body.decode()
    assert json.dumps(marker)[1:-1] in sent, "the field did reach the upstream"
    assert error.code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAVAILABLE), error
    assert "[request text]" in error.message, error.message
    for text in (error.message, caplog.text):
        assert marker[:20] not in text and marker[-20:] not in text, text


async def test_embedding_inputs_are_scrubbed_from_an_upstream_echo(
    client: ModelWorkerClient,
    fake: FakeUpstream,
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret_input = "ACME-PAYROLL-2026 salaries of the board, do not share"
    fake.script(echo_around(secret_input))
    with caplog.at_level(logging.DEBUG), pytest.raises(ModelwireCallError) as raised:
        await client.embed("oa", [secret_input])

    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    for text in (raised.value.message, caplog.text):
        assert "ACME-PAYROLL" not in text and "salaries of the board" not in text, text


def test_html_escaped_echoes_are_recognised() -> None:
    """The review's case: an HTML page escaping `&` and `'` split the prompt into runs too short
    to be found, so pieces of it showed (`[request text]amp;[request text]&#x27;t tell anyone`)."""
    from modelwire.core.redaction import MASK, remember_request_text, scrub

    prompt = 'Q3 numbers & projections for R&D <draft>, "internal" only: don\'t tell anyone'
    remember_request_text([prompt])
    for escaped in (
        html.escape(prompt),
        html.escape(prompt, quote=False),
        html.escape(prompt).replace("&#x27;", "&#39;").replace("&quot;", "&#34;"),
        html.escape(json.dumps(prompt)[1:-1]),
    ):
        shown = scrub(f"<p>while handling: {escaped}</p>")
        assert shown == f"<p>while handling: {MASK}</p>", shown


def _strings_in(value: object) -> list[str]:
    """Every string a domain value holds (bytes as UTF-8), found by walking its fields."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, bytes):
        return [value.decode()]
    if isinstance(value, enum.Enum) or value is None:
        return []
    if dataclasses.is_dataclass(value):
        return [s for f in dataclasses.fields(value) for s in _strings_in(getattr(value, f.name))]
    if isinstance(value, dict):
        return [s for item in value.items() for part in item for s in _strings_in(part)]
    if isinstance(value, (tuple, list)):
        return [s for item in value for s in _strings_in(item)]
    return []


@pytest.mark.parametrize("output", ["json_schema", "grammar"])
def test_every_string_of_a_request_is_remembered_for_the_scrub(output: str) -> None:
    """Each string field of a request filled with text of its own: all are remembered, but the
    model name and the request id (the worker's own log key) and metadata keys."""
    from modelwire.core import types as t
    from modelwire.worker.service import _request_texts

    fmt: t.OutputFormat = t.GrammarFormat('root ::= "grammar field"')
    if output == "json_schema":
        fmt = t.JsonSchemaFormat("out_name_field", '{"out": "schema field"}')
    image = t.Image(url="https://img/url-field")
    call = t.ToolCall("call-id-field", "call_name_field", '{"args": 1}')
    request = t.ModelRequest(
        model="model-name-field",
        messages=(
            t.ModelMessage(t.Role.SYSTEM, "system content field", name="system-name-field"),
            t.ModelMessage(t.Role.USER, "", parts=("text part field", image)),
            t.ModelMessage(
                t.Role.ASSISTANT,
                "assistant content field",
                tool_calls=(call,),
                reasoning="reasoning text",
                reasoning_signature=b"signature field",
            ),
            t.ModelMessage(t.Role.TOOL, "tool result field", tool_call_id="call-id-field"),
        ),
        sampling=t.SamplingParams(stop=("stop string field",)),
        context=t.RequestContext(
            request_id="request-id-field",
            user="user field",
            metadata={"key": "metadata value field"},
        ),
        tools=(t.Tool("tool_name_field", "tool description field", '{"tool": "schema"}'),),
        tool_choice=t.NamedTool("tool_name_field"),
        output_format=fmt,
    )
    remembered = set(_request_texts(request))
    expected = set(_strings_in(request)) - {"model-name-field", "request-id-field", "key"}
    assert expected - remembered == set()

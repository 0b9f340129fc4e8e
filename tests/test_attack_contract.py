"""Issue 22's providers-and-contract half, tried again as a hostile caller and a misbehaving
upstream or proxy would, after it landed: what still got through, each fixed.

- The API key base64-encoded (a proxy or server echoing a credential header encoded), split by a
  line break, or shown by its end passed the redaction, which knew only the whole key and its
  start at a cut.
- A proxy that refuses the CONNECT (HTTP 407) makes aiohttp quote the proxy's URL, user and
  password included; that reached the caller's UNAVAILABLE message and the worker's log.
- An OpenAI-compatible stream that sends an id seen before on an index now feeding another call
  got a second call with the same id (the caller cannot answer either by tool_call_id).
- The 64-level nesting check of caller JSON walked a megabyte of `[[],[],…]` in several times
  the parse's time, on the event loop, for every schema.
- A GBNF grammar with about 300 nested groups made the Python GBNF checker raise RecursionError
  (INTERNAL); tests/test_attack_contract_local.py checks the same through the embedded model.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from conftest import running_worker
from fake_upstream import Exchange, FakeUpstream, Responder, load_toml_config, openai_usage_chunk
from modelwire.client import ModelwireCallError, ModelWorkerClient
from modelwire.core import strict_json
from modelwire.providers.http.options import Secret
from modelwire.providers.llama.gbnf_check import MAX_GROUP_NESTING, GbnfSyntaxError, check_gbnf
from modelwire.v1 import worker_pb2 as pb

KEY = "sk-proj-SECRETKEY0123456789abcdefghijklmnopqrstuvwxyzABCDEFG"
# Pieces of the key that no redacted text may show (its start, "sk-proj-", is every key's).
KEY_PIECES = (KEY[8:20], KEY[20:32], KEY[32:44], KEY[-12:])


def _encoded(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


KEY_ECHOES = {
    "base64 of the Authorization header": _encoded(f"Authorization: Bearer {KEY}"),
    "base64 of x-api-key (another alignment)": _encoded(f"x-api-key: {KEY}"),
    "base64 of the key at the third alignment": _encoded(f"k={KEY}"),
    "URL-safe base64 of the key": base64.urlsafe_b64encode(KEY.encode()).decode(),
    "split by a line break": f"header: Bearer {KEY[:20]}\n{KEY[20:]}",
    "shown by its end": f"the key ending in ...{KEY[-30:]} is not valid",
    "its middle": f"fragment {KEY[15:40]} seen",
}


@pytest.mark.parametrize("echo", sorted(KEY_ECHOES))
def test_the_key_is_redacted_encoded_split_or_in_part(echo: str) -> None:
    shown = Secret(KEY).redact(KEY_ECHOES[echo])
    assert not [piece for piece in KEY_PIECES if piece in shown], shown
    encoded_pieces = [_encoded(piece)[:8] for piece in KEY_PIECES]
    assert not [piece for piece in encoded_pieces if piece in shown], shown
    assert "[redacted]" in shown


def test_what_only_looks_like_a_key_is_left_alone() -> None:
    """Fewer than 12 characters of the key in a row (OpenAI's own "sk-proj-****…" mask, a word
    the key happens to contain) are no leak, and the message keeps them."""
    texts = (
        "Incorrect API key provided: sk-proj-********************DEFG.",
        "keys look like sk-proj-abc123",
        "SECRETKEY is a word here",
        _encoded("hello world"),
    )
    for text in texts:
        assert Secret(KEY).redact(text) == text


# --- a proxy's credentials ----------------------------------------------------------------------

PROXY_PASSWORD = "pr0xyPASSWORD4471"


async def _refusing_proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """An HTTP proxy that answers every CONNECT 407 (wrong credentials)."""
    try:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
    finally:
        writer.close()


async def test_a_proxy_s_credentials_never_reach_the_caller_or_the_log(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = await asyncio.start_server(_refusing_proxy, "127.0.0.1", 0)
    port = proxy.sockets[0].getsockname()[1]
    monkeypatch.setenv("HTTPS_PROXY", f"http://modelwire:{PROXY_PASSWORD}@127.0.0.1:{port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    config = load_toml_config(
        tmp_path,
        """
[[models]]
name = "oa"
provider = "openai"
api_base = "https://api.openai.invalid/v1"
upstream_model = "gpt-4o-mini"
context_length = 128000
timeout_s = 5.0
max_retries = 0
""",
    )
    caplog.set_level(logging.INFO)
    try:
        async with running_worker(config) as worker:
            async with ModelWorkerClient(worker.address, timeout=10) as client:
                with pytest.raises(ModelwireCallError) as refused:
                    await client.generate("oa", "Hi")
    finally:
        proxy.close()
        await proxy.wait_closed()
    error = refused.value
    assert error.code == grpc.StatusCode.UNAVAILABLE, error
    assert "407" in error.message and "[redacted]@127.0.0.1" in error.message, error.message
    logged = caplog.text + "\n".join(repr(record.args) for record in caplog.records)
    for text in (error.message, logged):
        assert PROXY_PASSWORD not in text


# --- streamed tool calls: an id seen before ------------------------------------------------------

_TOML = """
[server]
grace_period_s = 1.0

[[models]]
name = "oa"
provider = "openai"
api_base = "{url}/v1"
upstream_model = "gpt-4o-mini"
context_length = 128000
timeout_s = 5.0
max_retries = 0
"""


@pytest.fixture(scope="module")
async def client(
    fake: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[ModelWorkerClient]:
    config = load_toml_config(tmp_path_factory.mktemp("attack"), _TOML.format(url=fake.url))
    async with running_worker(config) as worker:
        async with ModelWorkerClient(worker.address, timeout=10) as client:
            yield client


def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "c",
        "object": "chat.completion.chunk",
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def _call(index: int, call_id: str, name: str, arguments: str) -> dict[str, Any]:
    call: dict[str, Any] = {"index": index, "function": {"arguments": arguments}}
    if call_id:
        call["id"] = call_id
    if name:
        call["function"]["name"] = name
    return _chunk({"tool_calls": [call]})


def _script(fake: FakeUpstream, chunks: list[dict[str, Any]]) -> None:
    async def answer(exchange: Exchange, respond: Responder) -> None:
        await respond.head(200)
        for payload in chunks:
            await respond.event(payload)
        await respond.event(openai_usage_chunk(5, 5))
        await respond.event("[DONE]")
        await respond.end()

    fake.script(answer)


async def test_a_streamed_id_seen_before_continues_its_own_call(
    fake: FakeUpstream, client: ModelWorkerClient
) -> None:
    """Parallel calls at one index (Gemini's way), then more arguments for the first under its
    id: they are the first call's, never a third call repeating its id."""
    _script(
        fake,
        [
            _call(0, "call_a", "lookup", '{"city": '),
            _call(0, "call_b", "weather", '{"day": 1}'),
            _call(0, "call_a", "lookup", '"Oslo"}'),
            _chunk({}, "tool_calls"),
        ],
    )
    chunks = [chunk async for chunk in client.stream("oa", "Hi")]
    deltas = [
        (delta.index, delta.id, delta.name, delta.arguments_delta)
        for chunk in chunks
        for delta in chunk.tool_call_deltas
    ]
    assert deltas == [
        (0, "call_a", "lookup", '{"city": '),
        (1, "call_b", "weather", '{"day": 1}'),
        (0, "", "", '"Oslo"}'),
    ]
    assert chunks[-1].finish_reason == pb.FINISH_REASON_TOOL_CALLS


async def test_vllm_s_prompt_longer_than_the_model_is_a_context_refusal(
    fake: FakeUpstream, client: ModelWorkerClient
) -> None:
    """vLLM checks the prompt alone before sampling and says so in a sentence of its own, with no
    machine code: the tight matching of context refusals missed it (INVALID_ARGUMENT)."""
    said = (
        "The decoder prompt (length 5000) is longer than the maximum model length of 4096. "
        "Make sure that `max_model_len` is no smaller than the number of text tokens."
    )

    async def answer(exchange: Exchange, respond: Responder) -> None:
        await respond.json(
            400,
            {
                "object": "error",
                "message": said,
                "type": "BadRequestError",
                "param": None,
                "code": 400,
            },
        )

    fake.script(answer)
    with pytest.raises(ModelwireCallError) as refused:
        await client.generate("oa", "Hi")
    assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION, refused.value


# --- the nesting bound's cost --------------------------------------------------------------------


def test_the_nesting_check_costs_less_than_the_parse() -> None:
    """A megabyte of empty arrays side by side: the depth walk (one list append per container)
    must cost no more than json's own parse, not several times it, on the event loop."""
    text = "[" + ",".join(["[]"] * 350_000) + "]"
    value = json.loads(text)

    def best(run: Any) -> float:
        times = []
        for _ in range(5):
            started = time.perf_counter()
            run()
            times.append(time.perf_counter() - started)
        return min(times)

    parse = best(lambda: json.loads(text))
    walk = best(lambda: strict_json._depth_exceeds(value, strict_json.MAX_NESTING))
    assert walk < 2 * parse, (walk, parse)


# --- GBNF: groups inside groups ------------------------------------------------------------------


@pytest.mark.parametrize("depth", [MAX_GROUP_NESTING + 1, 400, 30_000])
def test_gbnf_groups_nested_past_the_bound_are_a_syntax_error(depth: int) -> None:
    grammar = "root ::= " + "(" * depth + '"a"' + ")" * depth
    with pytest.raises(GbnfSyntaxError, match=f"groups nested more than {MAX_GROUP_NESTING} deep"):
        check_gbnf(grammar, lambda text: True)


def test_gbnf_groups_up_to_the_bound_and_side_by_side_parse() -> None:
    nested = "(" * MAX_GROUP_NESTING + '"a"' + ")" * MAX_GROUP_NESTING
    check_gbnf("root ::= " + nested, lambda text: True)
    check_gbnf("root ::= " + '("a" ("b")?)' * 5000, lambda text: True)

"""Coalesced deltas (core/coalesce.py, gateway/coalesce.py; issue 27's decision): deltas waiting
when the next message may be sent go as one, a paced stream still gets one message per delta, and
nothing changes order, meaning or amount."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import AsyncExitStack, aclosing
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest

from conftest import running_worker
from failover_calls import AUTH, openai_model, request, table
from fake_upstream import (
    Exchange,
    Responder,
    fake_upstream,
    load_toml_config,
    openai_chunk,
    openai_usage_chunk,
)
from fleet import (
    CallerSide,
    Joining,
    registered,
    registered_worker,
    running_controller,
    running_gateway,
)
from modelwire.app.config import Config
from modelwire.core.coalesce import coalesce_outputs, coalesced
from modelwire.core.settings import ModelConfig
from modelwire.core.settings import WorkerServerConfig as ServerConfig
from modelwire.core.types import FinishReason, ModelOutput, ToolCallDelta, Usage
from modelwire.gateway.coalesce import merge_messages
from modelwire.gateway.server import GENERATE_STREAM
from modelwire.v1 import worker_pb2 as pb
from modelwire.v1 import worker_pb2_grpc as pb_grpc
from modelwire.worker.convert import output_to_pb

# --- how deltas merge -----------------------------------------------------------------------


def test_texts_concatenate_and_finish_and_usage_stay_on_the_last() -> None:
    usage = Usage(prompt_tokens=3, completion_tokens=4)
    merged = coalesce_outputs(
        [
            ModelOutput(text="a"),
            ModelOutput(text="b"),
            ModelOutput(text="c", finish_reason=FinishReason.STOP, usage=usage),
        ]
    )
    assert merged == [ModelOutput(text="abc", finish_reason=FinishReason.STOP, usage=usage)]


def test_reasoning_then_text_merge_but_reasoning_after_text_starts_a_new_message() -> None:
    merged = coalesce_outputs(
        [
            ModelOutput(reasoning="think "),
            ModelOutput(reasoning="more"),
            ModelOutput(text="answer"),
            ModelOutput(reasoning="again"),
            ModelOutput(text="end"),
        ]
    )
    assert merged == [
        ModelOutput(text="answer", reasoning="think more"),
        ModelOutput(text="end", reasoning="again"),
    ]


def test_tool_call_pieces_join_by_index_in_the_order_they_came() -> None:
    merged = coalesce_outputs(
        [
            ModelOutput(tool_call_deltas=(ToolCallDelta(0, "call_a", "lookup", '{"w'),)),
            ModelOutput(
                tool_call_deltas=(
                    ToolCallDelta(0, arguments_delta='ord": 1}'),
                    ToolCallDelta(1, "call_b", "define", "{"),
                )
            ),
            ModelOutput(tool_call_deltas=(ToolCallDelta(1, arguments_delta="}"),)),
            ModelOutput(finish_reason=FinishReason.TOOL_CALLS),
        ]
    )
    assert merged == [
        ModelOutput(
            tool_call_deltas=(
                ToolCallDelta(0, "call_a", "lookup", '{"word": 1}'),
                ToolCallDelta(1, "call_b", "define", "{}"),
            ),
            finish_reason=FinishReason.TOOL_CALLS,
        )
    ]


def test_text_after_a_tool_call_and_a_second_signature_start_new_messages() -> None:
    call = ToolCallDelta(0, "c", "f", "{}")
    merged = coalesce_outputs(
        [
            ModelOutput(reasoning="r1", reasoning_signature=b"sig1"),
            ModelOutput(reasoning="r2", reasoning_signature=b"sig2"),
            ModelOutput(tool_call_deltas=(call,)),
            ModelOutput(text="after"),
        ]
    )
    assert merged == [
        ModelOutput(reasoning="r1", reasoning_signature=b"sig1"),
        ModelOutput(reasoning="r2", reasoning_signature=b"sig2", tool_call_deltas=(call,)),
        ModelOutput(text="after"),
    ]


def test_nothing_joins_a_message_that_finished() -> None:
    done = ModelOutput(text="x", finish_reason=FinishReason.STOP)
    assert coalesce_outputs([done, ModelOutput()]) == [done, ModelOutput()]


# --- when they merge --------------------------------------------------------------------------


def _texts(items: Sequence[str]) -> list[str]:
    return ["".join(items)]


async def test_a_stream_paced_behind_its_reader_gets_one_message_per_delta() -> None:
    taken = asyncio.Event()

    async def paced() -> AsyncIterator[str]:
        for word in ("one", "two", "three", "four"):
            yield word
            await taken.wait()  # the next comes once the previous was taken
            taken.clear()

    got = []
    async with aclosing(coalesced(paced(), _texts)) as messages:
        async for message in messages:
            got.append(message)
            taken.set()
    assert got == ["one", "two", "three", "four"]


async def test_a_backlog_becomes_fewer_messages_with_the_same_content() -> None:
    async def burst() -> AsyncIterator[str]:
        for index in range(50):
            yield f"{index} "

    got = [message async for message in coalesced(burst(), _texts)]
    assert got[0] == "0 " and len(got) == 2
    assert "".join(got) == "".join(f"{index} " for index in range(50))


async def test_an_error_comes_after_the_deltas_read_before_it() -> None:
    async def broken() -> AsyncIterator[str]:
        yield "a"
        yield "b"
        yield "c"
        raise RuntimeError("upstream broke")

    got: list[str] = []
    with pytest.raises(RuntimeError, match="upstream broke"):
        async for message in coalesced(broken(), _texts):
            got.append(message)
    assert "".join(got) == "abc"


async def test_closing_cancels_the_reader_and_runs_the_streams_cleanup() -> None:
    cleaned = asyncio.Event()
    waiting = asyncio.Event()

    async def endless() -> AsyncGenerator[str, None]:
        try:
            yield "first"
            waiting.set()
            await asyncio.Event().wait()
            yield "never"
        finally:
            cleaned.set()

    source = endless()
    async with aclosing(coalesced(source, _texts)) as messages:
        assert await anext(messages) == "first"
        consumer = asyncio.ensure_future(anext(messages))
        await waiting.wait()
        consumer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await consumer
    # Cleaned before the close returned, not whenever the reader gets to it.
    assert cleaned.is_set()


async def test_a_late_reader_holds_at_most_the_bound_ahead() -> None:
    produced = 0
    held = asyncio.Event()

    async def many() -> AsyncIterator[str]:
        nonlocal produced
        for index in range(100):
            produced += 1
            if produced == 1 + 8:  # the first (taken) and the bound (waiting)
                held.set()
            yield str(index)

    async with aclosing(coalesced(many(), _texts, limit=8)) as messages:
        await anext(messages)
        await held.wait()
        for _ in range(20):  # whatever the reader could do now, it has done
            await asyncio.sleep(0)
        assert produced == 1 + 8
        assert await anext(messages) == "".join(str(index) for index in range(1, 9))


# --- the worker's stream: an OpenAI-wire upstream over real HTTP ------------------------------

DELTAS = [f"w{index} " for index in range(40)]


async def _all_at_once(exchange: Exchange, respond: Responder) -> None:
    """Every delta, the usage and the end in one write: all waiting when the worker reads."""
    await respond.head(200)
    events = [openai_chunk(delta) for delta in DELTAS] + [
        openai_chunk(finish_reason="stop"),
        openai_usage_chunk(5, len(DELTAS)),
    ]
    body = b"".join(f"data: {json.dumps(event)}\n\n".encode() for event in events)
    await respond.raw(body + b"data: [DONE]\n\n")
    await respond.end()


def _paced(received: asyncio.Queue[str]) -> Any:
    async def handler(exchange: Exchange, respond: Responder) -> None:
        """One delta at a time, each once the caller has the one before."""
        await respond.head(200)
        for delta in DELTAS[:6]:
            await respond.event(openai_chunk(delta))
            assert await received.get() == delta
        await respond.event(openai_chunk(finish_reason="stop"))
        await respond.event(openai_usage_chunk(5, 6))
        await respond.event("[DONE]")
        await respond.end()

    return handler


def _worker_config(tmp_path: Path, url: str) -> Config:
    text = table("[server]", {"grace_period_s": 1.0}) + openai_model("gpt", url)
    return load_toml_config(tmp_path, text)


async def _stream(stub: pb_grpc.ModelWorkerStub) -> list[pb.ModelOutput]:
    return [m async for m in stub.GenerateStream(request("gpt"), metadata=AUTH, timeout=20)]


async def test_the_worker_coalesces_an_upstreams_backlog(tmp_path: Path) -> None:
    async with fake_upstream() as upstream:
        upstream.script(_all_at_once)
        async with (
            running_worker(_worker_config(tmp_path, upstream.url)) as worker,
            grpc.aio.insecure_channel(worker.address) as channel,
        ):
            messages = await _stream(pb_grpc.ModelWorkerStub(channel))
    assert messages[0].text == DELTAS[0]
    assert len(messages) < len(DELTAS) // 2
    assert "".join(m.text for m in messages) == "".join(DELTAS)
    assert [m.finish_reason for m in messages[:-1]] == [pb.FINISH_REASON_UNSPECIFIED] * (
        len(messages) - 1
    )
    assert not any(m.HasField("usage") for m in messages[:-1])
    last = messages[-1]
    assert last.finish_reason == pb.FINISH_REASON_STOP
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (5, len(DELTAS))
    assert {m.model for m in messages} == {"gpt"}


async def test_a_paced_upstream_gets_one_message_per_delta_through_the_worker(
    tmp_path: Path,
) -> None:
    received: asyncio.Queue[str] = asyncio.Queue()
    async with fake_upstream() as upstream:
        upstream.script(_paced(received))
        async with (
            running_worker(_worker_config(tmp_path, upstream.url)) as worker,
            grpc.aio.insecure_channel(worker.address) as channel,
        ):
            stub = pb_grpc.ModelWorkerStub(channel)
            messages = []
            async for message in stub.GenerateStream(request("gpt"), metadata=AUTH, timeout=20):
                messages.append(message)
                if message.text:
                    received.put_nowait(message.text)
    assert [m.text for m in messages] == DELTAS[:6] + [""]
    assert messages[-1].finish_reason == pb.FINISH_REASON_STOP


async def test_the_http_facade_coalesces_an_upstreams_backlog_into_fewer_events(
    tmp_path: Path,
) -> None:
    async with fake_upstream() as upstream:
        upstream.script(_all_at_once)
        config = load_toml_config(
            tmp_path,
            table("[server]", {"grace_period_s": 1.0})
            + table("[http]", {"port": 0})
            + openai_model("gpt", upstream.url),
        )
        async with running_worker(config) as worker:
            assert worker.facade is not None
            url = f"http://127.0.0.1:{worker.facade.port}/v1/chat/completions"
            body = {"model": "gpt", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
            async with aiohttp.ClientSession() as session, session.post(url, json=body) as answer:
                assert answer.status == 200
                events = [line async for line in answer.content if line.startswith(b"data: {")]
    contents = [
        choice["delta"].get("content") or ""
        for event in events
        for choice in json.loads(event[len(b"data: ") :])["choices"]
    ]
    assert "".join(contents) == "".join(DELTAS)
    assert len(events) < len(DELTAS) // 2


# --- the gateway's stream ---------------------------------------------------------------------


def _echo_config(chunks: int) -> Config:
    model = ModelConfig(
        name="echo",
        provider="echo",
        options={"chunks": chunks, "chunk_text": "hi ", "chunk_interval_s": 0.001},
    )
    return Config(server=ServerConfig(host="127.0.0.1", port=0), models=(model,))


async def test_the_gateway_merges_what_waits_and_passes_a_lone_message_as_it_came() -> None:
    chunks = 30
    async with AsyncExitStack() as stack:
        controller = await stack.enter_async_context(running_controller())
        worker = await stack.enter_async_context(
            registered_worker(_echo_config(chunks), Joining(controller=controller.address))
        )
        await registered(worker)
        gateway = await stack.enter_async_context(running_gateway(controller.address))
        await asyncio.wait_for(gateway.router.synced.wait(), 10)
        raw = pb.ModelRequest(
            model="echo", messages=[pb.ModelMessage(role=pb.ROLE_USER, content="hi")]
        ).SerializeToString()
        forwarded: list[bytes] = []
        ended = asyncio.Event()
        forward = gateway.forward_stream

        async def counted(method: str, raw: bytes, context: Any) -> AsyncGenerator[bytes, None]:
            async with aclosing(forward(method, raw, context)) as msgs:
                async for message in msgs:
                    forwarded.append(message)
                    if pb.ModelOutput.FromString(message).finish_reason:
                        ended.set()
                    yield message

        gateway.forward_stream = counted  # type: ignore[method-assign]
        handler = gateway._stream(GENERATE_STREAM)
        async with aclosing(handler(raw, CallerSide())) as sent:  # type: ignore[type-var,arg-type]
            first = await anext(sent)
            await ended.wait()  # the worker's whole answer waits at the gateway
            rest = [message async for message in sent]
    assert first == forwarded[0]  # passed as it came: not decoded, not re-encoded
    assert len(forwarded) > 2 and len(rest) == 1
    outputs = [pb.ModelOutput.FromString(m) for m in [first, *rest]]
    assert "".join(o.text for o in outputs) == "hi " * chunks
    assert outputs[-1].finish_reason == pb.FINISH_REASON_STOP and outputs[-1].model == "echo"
    assert (
        outputs[-1].usage.completion_tokens
        == pb.ModelOutput.FromString(forwarded[-1]).usage.completion_tokens
    )


def test_the_gateway_never_merges_a_message_it_cannot_read_back_exactly() -> None:
    known = output_to_pb(ModelOutput(text="a"), "m").SerializeToString()
    newer = pb.ModelOutput(text="b", model="m", finish_reason=99).SerializeToString()
    assert merge_messages([known, newer]) == [known, newer]
    twice = output_to_pb(ModelOutput(text="aa"), "m").SerializeToString()
    assert merge_messages([known, known]) == [twice]

"""Attacks on coalesced deltas (core/coalesce.py, gateway/coalesce.py, their use in
worker/servicer.py, facade/server.py and gateway/server.py; issue 27's decision, docs/api.md
"Coalesced deltas"): latency-neutral, order and meaning kept, finish/usage last, every delta read
before an error delivered before it, and nothing left behind by a cancel, a deadline or a drain.

Most streams come from a scripted provider (`Scripted`, registered for the test): each call plays
an async generator the test wrote, so what is waiting when the next message may go is decided by
the script (deltas yielded without an await between them are all read before the consumer runs)
and by events the test sets, never by the clock. Tests that fail are findings, left failing."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import AsyncExitStack, aclosing, asynccontextmanager
from pathlib import Path
from typing import Any, NoReturn

import grpc
import pytest

from conftest import admission_reaches, running_worker
from fleet import (
    CallerSide,
    Joining,
    registered,
    registered_worker,
    running_controller,
    running_gateway,
)
from modelwire.app.config import Config
from modelwire.app.server import Worker
from modelwire.core.errors import UpstreamUnavailable
from modelwire.core.settings import ModelConfig
from modelwire.core.settings import WorkerServerConfig as ServerConfig
from modelwire.core.types import FinishReason, ModelOutput, ModelRequest, Usage
from modelwire.gateway.server import GENERATE_STREAM, Gateway
from modelwire.v1 import worker_pb2 as pb
from modelwire.v1 import worker_pb2_grpc as pb_grpc
from scripted import MODEL, PROVIDER, Play, Scripted, install_scripted

MIB = 1024 * 1024


@pytest.fixture(autouse=True)
def scripted(monkeypatch: pytest.MonkeyPatch) -> None:
    install_scripted(monkeypatch)


def scripted_config(grace_period_s: float = 1.0, **model: Any) -> Config:
    served = ModelConfig(name=MODEL, provider=PROVIDER, options={"chunk_text": "x"}, **model)
    return Config(
        server=ServerConfig(host="127.0.0.1", port=0, grace_period_s=grace_period_s),
        models=(served,),
    )


def stream_request(prompt: str = "Tell me a story.") -> pb.ModelRequest:
    return pb.ModelRequest(
        model=MODEL, messages=[pb.ModelMessage(role=pb.ROLE_USER, content=prompt)]
    )


def done(completion_tokens: int = 1) -> ModelOutput:
    return ModelOutput(
        finish_reason=FinishReason.STOP,
        usage=Usage(prompt_tokens=3, completion_tokens=completion_tokens),
    )


@asynccontextmanager
async def worker_stub(config: Config | None = None) -> AsyncIterator[tuple[Worker, Any]]:
    async with (
        running_worker(config or scripted_config()) as worker,
        grpc.aio.insecure_channel(worker.address) as channel,
    ):
        yield worker, pb_grpc.ModelWorkerStub(channel)


async def read_all(rpc: Any) -> tuple[list[pb.ModelOutput], grpc.StatusCode, str]:
    """The messages (read with `read`, so a test may have read some before), then the status."""
    messages: list[pb.ModelOutput] = []
    try:
        while (message := await rpc.read()) is not grpc.aio.EOF:
            messages.append(message)
    except grpc.aio.AioRpcError as error:
        return messages, error.code(), error.details() or ""
    return messages, grpc.StatusCode.OK, ""


def text_of(messages: Sequence[pb.ModelOutput]) -> str:
    return "".join(m.text for m in messages)


# --- sizes: a merged message is bounded by nothing ----------------------------------------------


def big_deltas_after_a_first(size: int, count: int) -> Play:
    """A short first delta, then `count` deltas of `size` characters with no await between them:
    all waiting together when the next message may go."""

    async def play(request: ModelRequest) -> AsyncIterator[ModelOutput]:
        yield ModelOutput(text="start ")
        for index in range(count):
            yield ModelOutput(text=chr(ord("a") + index) * size)
        yield done(count + 1)

    return play


async def test_large_deltas_each_within_grpcs_default_limit_still_reach_a_default_client() -> None:
    """Three 3 MiB deltas: each message was within gRPC's default 4 MiB receive limit, which every
    client in every language has unless it raises it; merged they are 9 MiB in one message."""
    Scripted.plays.append(big_deltas_after_a_first(3 * MIB, 3))
    async with worker_stub() as (_, stub):
        messages, code, details = await read_all(stub.GenerateStream(stream_request(), timeout=30))
    assert code == grpc.StatusCode.OK, (code, details)
    assert text_of(messages) == "start " + "a" * 3 * MIB + "b" * 3 * MIB + "c" * 3 * MIB
    assert all(m.ByteSize() <= 4 * MIB for m in messages)


async def test_large_deltas_through_a_gateway_still_reach_a_default_client() -> None:
    """The same behind a gateway: its channel to the worker and its caller both have the 4 MiB
    default; the gateway merges what waits for its caller too (gateway/coalesce.py)."""
    Scripted.plays.append(big_deltas_after_a_first(3 * MIB, 3))
    async with fleet() as (_, gateway):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
            rpc = pb_grpc.ModelWorkerStub(channel).GenerateStream(stream_request(), timeout=30)
            messages, code, details = await read_all(rpc)
    assert code == grpc.StatusCode.OK, (code, details)
    assert text_of(messages) == "start " + "a" * 3 * MIB + "b" * 3 * MIB + "c" * 3 * MIB
    assert all(m.ByteSize() <= 4 * MIB for m in messages)


# --- the gateway: a worker failing mid-stream -------------------------------------------------


class AbortRecorder(CallerSide):
    """A gRPC caller's side of a forwarded call as grpc.aio behaves: `abort` sends the status at
    once (grpc's `_ServicerContext.abort` sends it from whichever task calls it) and raises
    AbortError; a message the handler yields after that never reaches the caller."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.status: tuple[grpc.StatusCode, str] | None = None
        self.aborted = asyncio.Event()
        self.lost: list[bytes] = []

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing: Any = ()) -> NoReturn:
        self.status = (code, details)
        self.aborted.set()
        raise grpc.aio.AbortError("Locally aborted.")

    def deliver(self, message: bytes) -> None:
        (self.lost if self.status is not None else self.sent).append(message)


@asynccontextmanager
async def fleet(config: Config | None = None) -> AsyncIterator[tuple[Worker, Gateway]]:
    async with AsyncExitStack() as stack:
        controller = await stack.enter_async_context(running_controller())
        worker = await stack.enter_async_context(
            registered_worker(config or scripted_config(), Joining(controller=controller.address))
        )
        await registered(worker)
        gateway = await stack.enter_async_context(running_gateway(controller.address))
        yield worker, gateway


def fails_after_a_burst(first_taken: asyncio.Event, burst: int) -> Play:
    """One delta; once the caller has it, `burst` deltas at once and the upstream's failure."""

    async def play(request: ModelRequest) -> AsyncIterator[ModelOutput]:
        yield ModelOutput(text="d0 ")
        await first_taken.wait()
        for index in range(1, burst + 1):
            yield ModelOutput(text=f"d{index} ")
        raise UpstreamUnavailable("upstream connection reset")

    return play


async def test_the_gateway_delivers_every_delta_read_before_a_workers_failure_then_the_status() -> (
    None
):
    """The worker fails after a burst while the gateway's caller side has not asked for the next
    message yet. The gateway's read-ahead task reads the burst and the failure; forwarding's
    `_pass_on` then calls `context.abort` from that task, which sends the status at once: the
    deltas still waiting for the caller's side are never sent (grpc.aio refuses a message after
    abort). docs/api.md: an error comes after the deltas read before it."""
    first_taken = asyncio.Event()
    burst = 20
    Scripted.plays.append(fails_after_a_burst(first_taken, burst))
    async with fleet() as (_, gateway):
        context = AbortRecorder()
        read_to_the_end = asyncio.Event()
        forward = gateway.forward_stream

        async def watched(method: str, raw: bytes, context: Any) -> AsyncGenerator[bytes, None]:
            try:
                async with aclosing(forward(method, raw, context)) as messages:
                    async for message in messages:
                        yield message
            finally:
                read_to_the_end.set()  # what reads ahead has read the worker's whole answer

        gateway.forward_stream = watched  # type: ignore[method-assign]
        handler = gateway._stream(GENERATE_STREAM)
        raw = stream_request().SerializeToString()
        async with aclosing(handler(raw, context)) as sent:  # type: ignore[type-var,arg-type]
            context.deliver(await anext(sent))
            first_taken.set()
            await asyncio.wait_for(read_to_the_end.wait(), 10)
            with pytest.raises(grpc.aio.AbortError):
                async for message in sent:
                    context.deliver(message)
    assert context.status is not None and context.status[0] == grpc.StatusCode.UNAVAILABLE
    delivered = "".join(pb.ModelOutput.FromString(m).text for m in context.sent)
    lost = "".join(pb.ModelOutput.FromString(m).text for m in context.lost)
    assert (delivered, lost) == ("".join(f"d{i} " for i in range(burst + 1)), "")


async def test_through_a_real_gateway_a_caller_gets_the_deltas_before_a_workers_failure() -> None:
    """The same over real sockets, with a caller reading as fast as it can: the first message is
    large and the caller's flow-control window small (no BDP probing, as a distant caller's window
    is small for its bandwidth), so the gateway's write of it is still under way when the worker's
    short last delta and failure arrive at its read-ahead task; the abort from that task sends
    the status behind the large message and ahead of the short one."""
    big = "B" * (3 * MIB)

    async def play(request: ModelRequest) -> AsyncIterator[ModelOutput]:
        yield ModelOutput(text=big)
        yield ModelOutput(text="tail")
        raise UpstreamUnavailable("upstream connection reset")

    calls = 5
    Scripted.plays.extend([play] * calls)
    outcomes = []
    async with fleet() as (_, gateway):
        options = [("grpc.http2.bdp_probe", 0), ("grpc.max_receive_message_length", 16 * MIB)]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}", options) as channel:
            stub = pb_grpc.ModelWorkerStub(channel)
            for _ in range(calls):
                messages, code, _ = await read_all(
                    stub.GenerateStream(stream_request(), timeout=30)
                )
                outcomes.append((code, text_of(messages)[len(big) - 2 :]))
    # Each call: the whole answer, then the status (the last characters shown).
    assert outcomes == [(grpc.StatusCode.UNAVAILABLE, "BBtail")] * calls


# --- a second cancel while the stream's cleanup runs ------------------------------------------


async def test_a_second_cancel_while_the_streams_cleanup_runs_still_ends_the_call_cancelled() -> (
    None
):
    """The caller leaves (the handler task is cancelled) while the provider is slow to stop (a
    llama.cpp thread mid-token: providers/blocking.until_done waits for it through cancels), and
    the handler task is cancelled again meanwhile (grpc's own cancel at the deadline lands next
    to CallScope's timeout; a drain's end of grace next to a caller leaving). Before coalescing
    the handler closed the stream itself and its cleanup absorbed the second cancel; now
    `coalesced` stops waiting for its reader at the second cancel, and the servicer's
    `aclosing(chunks)` closes a generator the reader is still running: RuntimeError
    "aclose(): asynchronous generator is already running", reported as INTERNAL (a bug, logged
    with a stack trace) for a call the caller cancelled, and the handler returns before the
    stream's cleanup (its admission slot, its upstream) is done."""
    from modelwire.worker.servicer import ModelWorkerServicer

    stop = asyncio.Event()
    cleaning = asyncio.Event()
    waiting = asyncio.Event()
    cleaned: list[bool] = []

    async def slow_to_stop(request: ModelRequest) -> AsyncIterator[ModelOutput]:
        try:
            yield ModelOutput(text="first ")
            waiting.set()
            await asyncio.Event().wait()
            yield ModelOutput(text="never")
        finally:
            cleaning.set()
            while not stop.is_set():  # as providers/blocking.until_done does
                try:
                    await stop.wait()
                except asyncio.CancelledError:
                    pass
            cleaned.append(True)

    Scripted.plays.append(slow_to_stop)
    async with worker_stub() as (worker, _):
        servicer = ModelWorkerServicer(worker.service)
        context = AbortRecorder()
        got: list[str] = []
        cleaned_when_the_handler_ended: list[bool] = []

        async def handler() -> None:
            stream = servicer.GenerateStream(stream_request(), context)  # type: ignore[arg-type]
            try:
                async with aclosing(stream) as messages:  # type: ignore[type-var]
                    async for message in messages:
                        got.append(message.text)
            finally:
                cleaned_when_the_handler_ended.append(bool(cleaned))

        task = asyncio.create_task(handler())
        await waiting.wait()
        task.cancel()  # the caller left
        await cleaning.wait()  # the provider is stopping; the handler waits for it
        task.cancel()  # the second cancel
        stop.set()
        (outcome,) = await asyncio.gather(task, return_exceptions=True)
    assert got == ["first "]
    assert context.status is None, context.status  # not INTERNAL: the caller cancelled
    assert isinstance(outcome, asyncio.CancelledError), outcome
    assert cleaned_when_the_handler_ended == [True]


# --- cancels, deadlines, drains: what is left behind ------------------------------------------

TENANT_TOKEN = "team-a-token-0123456789abcdef"
TENANT_AUTH = (("authorization", f"Bearer {TENANT_TOKEN}"),)


def metered_config(tmp_path: Path, grace_period_s: float = 1.0, http: bool = False) -> Config:
    """The scripted model behind [auth] (tenant team-a) with a tokens-per-minute rule, so what
    each call was charged can be read back (failover_calls.used)."""
    from failover_calls import table
    from fake_upstream import load_toml_config

    tokens = tmp_path / "tokens.toml"
    tokens.write_text(f'[[tokens]]\nname = "alice"\ntoken = "{TENANT_TOKEN}"\ntenant = "team-a"\n')
    text = (
        table("[server]", {"grace_period_s": grace_period_s})
        + (table("[http]", {"port": 0}) if http else "")
        + table("[auth]", {"tokens_file": str(tokens)})
        + table(
            "[[models]]",
            {"name": MODEL, "provider": PROVIDER, "max_concurrency": 600, "max_queue": 0},
        )
        + table("[[quota.rules]]", {"tenant": "*", "model": MODEL, "tokens_per_minute": 10**9})
    )
    return load_toml_config(tmp_path, text)


def other_tasks() -> set[asyncio.Task[Any]]:
    return {task for task in asyncio.all_tasks() if task is not asyncio.current_task()}


BAD_LOGS = (
    "Task exception was never retrieved",
    "Task was destroyed but it is pending",
    "was never awaited",
    "Failed to detach context",
    "internal error",
)


@asynccontextmanager
async def nothing_left_behind(caplog: pytest.LogCaptureFixture) -> AsyncIterator[None]:
    """No task of the test's making outlives it, and asyncio logged nothing about a lost task."""
    before = other_tasks()
    caplog.set_level(logging.INFO)
    yield
    gc.collect()
    left = {task for task in other_tasks() - before if not task.done()}
    if left:  # a call's task may still be ending (grpc's stop does not wait for it): not a leak
        _, left = await asyncio.wait(left, timeout=10)
    assert not left, left
    bad = [r.getMessage() for r in caplog.records if any(b in r.getMessage() for b in BAD_LOGS)]
    assert not bad, bad


async def charged(worker: Worker) -> float:
    from failover_calls import used

    return (await used(worker)).get(MODEL, 0.0)


def hangs_after(first_taken: asyncio.Event | None, burst: int) -> Play:
    """One delta; (once the caller has it) `burst` more at once; then nothing until cancelled."""

    async def play(request: ModelRequest) -> AsyncIterator[ModelOutput]:
        yield ModelOutput(text="d0 ")
        if first_taken is not None:
            await first_taken.wait()
        for index in range(1, burst + 1):
            yield ModelOutput(text=f"d{index} ")
        await asyncio.Event().wait()

    return play


async def hangs_before_anything(request: ModelRequest) -> AsyncIterator[ModelOutput]:
    await asyncio.Event().wait()
    yield ModelOutput(text="never")


async def _prompt_tokens(worker: Worker) -> int:
    from modelwire.worker import convert

    messages = convert.request_from_pb(stream_request(), worker.config.limits).messages
    count = await worker.models[0].client.count_token(MODEL, messages)
    return count.count


@pytest.mark.parametrize("stage", ["before-first", "right-after-first", "with-deltas-waiting"])
async def test_a_cancel_at_each_stage_frees_the_slot_stops_the_stream_and_charges_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, stage: str
) -> None:
    first_taken = asyncio.Event()
    play = {
        "before-first": hangs_before_anything,
        "right-after-first": hangs_after(None, 0),
        "with-deltas-waiting": hangs_after(first_taken, 40),
    }[stage]
    Scripted.plays.append(play)
    async with nothing_left_behind(caplog):
        async with worker_stub(metered_config(tmp_path)) as (worker, stub):
            prompt = await _prompt_tokens(worker)
            rpc = stub.GenerateStream(stream_request(), metadata=TENANT_AUTH, timeout=30)
            got = []
            if stage != "before-first":
                got.append(await rpc.read())
                first_taken.set()
            if stage == "with-deltas-waiting":
                while text_of(got) != "".join(f"d{i} " for i in range(41)):
                    got.append(await rpc.read())
            else:
                await admission_reaches(worker.models[0].admission, 1, 0)
            rpc.cancel()
            await admission_reaches(worker.models[0].admission, 0, 0)
            spent = await charged(worker)
            assert Scripted.ends == ["CancelledError"]
            later = await read_all(stub.GenerateStream(stream_request(), metadata=TENANT_AUTH))
    assert later[1] == grpc.StatusCode.OK
    delivered = text_of(got)
    # Its prompt and what it delivered (worker/metering.py: deltas or characters ÷ 4).
    output = max(len(delivered.split()), -(-len(delivered) // 4)) if delivered else 0
    assert spent == prompt + output


async def test_a_cancel_while_the_reader_is_held_at_the_bound_stops_the_upstream(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The caller reads nothing (its flow-control window small): the handler's write waits and the
    read-ahead fills its 256 places. A cancel then must close the upstream (the provider's
    generator, suspended at a yield, closed), free the slot and charge once."""
    produced = 0
    past_the_bound = asyncio.Event()

    async def endless(request: ModelRequest) -> AsyncIterator[ModelOutput]:
        nonlocal produced
        while True:
            produced += 1
            if produced == 2 * 256 + 1:
                past_the_bound.set()
            yield ModelOutput(text="y" * 1024)

    Scripted.plays.append(endless)
    async with nothing_left_behind(caplog):
        async with worker_stub(metered_config(tmp_path)) as (worker, stub):
            before = await charged(worker)
            async with grpc.aio.insecure_channel(
                worker.address, [("grpc.http2.bdp_probe", 0)]
            ) as slow_channel:
                rpc = pb_grpc.ModelWorkerStub(slow_channel).GenerateStream(
                    stream_request(), metadata=TENANT_AUTH, timeout=30
                )
                await asyncio.wait_for(past_the_bound.wait(), 10)
                rpc.cancel()
                await admission_reaches(worker.models[0].admission, 0, 0)
            spent = await charged(worker) - before
            ends = list(Scripted.ends)
    assert ends in (["CancelledError"], ["GeneratorExit"])
    assert spent > 0


async def test_the_callers_deadline_while_the_reader_is_ahead_ends_the_call_cleanly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A burst waits in the read-ahead when the caller's deadline passes (the caller stopped
    reading after the first message): DEADLINE_EXCEEDED, the stream closed, the slot back, one
    charge, and nothing logged as a bug."""
    Scripted.plays.append(hangs_after(None, 100))
    async with nothing_left_behind(caplog):
        async with worker_stub(metered_config(tmp_path)) as (worker, stub):
            rpc = stub.GenerateStream(stream_request(), metadata=TENANT_AUTH, timeout=1.0)
            first = await rpc.read()
            code = await rpc.code()
            await admission_reaches(worker.models[0].admission, 0, 0)
            spent = await charged(worker)
            ends = list(Scripted.ends)
    assert first.text == "d0 "
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert ends == ["CancelledError"]
    assert spent > 0


async def test_a_drain_with_a_stream_in_flight_ends_it_and_leaves_nothing_running(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    Scripted.plays.append(hangs_after(None, 30))
    async with nothing_left_behind(caplog):
        worker_context = worker_stub(metered_config(tmp_path, grace_period_s=0.2))
        async with worker_context as (worker, stub):
            rpc = stub.GenerateStream(stream_request(), metadata=TENANT_AUTH, timeout=30)
            got = [await rpc.read()]
            while text_of(got) != "".join(f"d{i} " for i in range(31)):
                got.append(await rpc.read())
            await worker.drain()  # as on SIGTERM: the grace period, then the call is cut
            code = await rpc.code()
            ends = list(Scripted.ends)
            in_flight = worker.models[0].admission.in_flight
    assert code in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE), code
    assert ends == ["CancelledError"]
    assert in_flight == 0


# --- errors after content ---------------------------------------------------------------------


async def test_an_upstream_error_after_a_burst_comes_after_every_delta_read_before_it(
    tmp_path: Path,
) -> None:
    first_taken = asyncio.Event()
    Scripted.plays.append(fails_after_a_burst(first_taken, 50))
    async with worker_stub(metered_config(tmp_path)) as (_, stub):
        rpc = stub.GenerateStream(stream_request(), metadata=TENANT_AUTH, timeout=30)
        got = [await rpc.read()]
        first_taken.set()
        rest, code, details = await read_all(rpc)
    assert text_of(got + rest) == "".join(f"d{i} " for i in range(51))
    assert code == grpc.StatusCode.UNAVAILABLE
    # Counted as the provider gave them (51), not as the messages that carried them.
    assert "failed after 51 deltas of its answer had been passed on" in details, details
    assert len(got + rest) < 51


async def test_an_error_before_the_first_delta_is_the_status_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def refuses(request: ModelRequest) -> AsyncIterator[ModelOutput]:
        raise UpstreamUnavailable("upstream connection refused")
        yield ModelOutput()  # pragma: no cover - a generator

    Scripted.plays.append(refuses)
    async with nothing_left_behind(caplog):
        async with worker_stub(metered_config(tmp_path)) as (worker, stub):
            messages, code, details = await read_all(
                stub.GenerateStream(stream_request(), metadata=TENANT_AUTH, timeout=30)
            )
            spent = await charged(worker)
    assert (messages, code) == ([], grpc.StatusCode.UNAVAILABLE)
    assert "upstream connection refused" in details
    assert spent == 0  # failed before any output: nothing but the request (no tokens)


# --- context variables in the read-ahead task -------------------------------------------------

SECRET_PROMPT = "The launch code for the vault is Juniper-Falcon-7731, keep it secret."


async def test_an_error_raised_in_the_read_ahead_task_quoting_the_prompt_is_scrubbed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An OpenAI-wire upstream's error event after content quotes the request (core/redaction.py):
    the provider reads it in the read-ahead task, and must still scrub it (the request texts are a
    context variable of the call) in the status and in every log line."""
    from failover_calls import openai_model, table
    from fake_upstream import fake_upstream, load_toml_config, openai_chunk

    first_taken = asyncio.Event()

    async def quotes_the_prompt(exchange: Any, respond: Any) -> None:
        await respond.head(200)
        await respond.event(openai_chunk("Sure. "))
        await first_taken.wait()
        await respond.raw(
            b"".join(f"data: {json.dumps(openai_chunk(f'w{i} '))}\n\n".encode() for i in range(30))
            + b"data: "
            + json.dumps(
                {"error": {"message": f"could not process input {SECRET_PROMPT!r}", "code": 500}}
            ).encode()
            + b"\n\n"
        )
        await respond.end()

    caplog.set_level(logging.DEBUG)
    async with fake_upstream() as upstream:
        upstream.script(quotes_the_prompt)
        config = load_toml_config(
            tmp_path, table("[server]", {"grace_period_s": 1.0}) + openai_model("gpt", upstream.url)
        )
        async with (
            running_worker(config) as worker,
            grpc.aio.insecure_channel(worker.address) as channel,
        ):
            message = stream_request(SECRET_PROMPT)
            message.model = "gpt"
            rpc = pb_grpc.ModelWorkerStub(channel).GenerateStream(message, timeout=30)
            got = [await rpc.read()]
            first_taken.set()
            rest, code, details = await read_all(rpc)
    assert text_of(got + rest) == "Sure. " + "".join(f"w{i} " for i in range(30))
    assert code == grpc.StatusCode.UNAVAILABLE, (code, details)
    assert "Juniper-Falcon" not in details and "[request text]" in details, details
    assert not [r for r in caplog.records if "Juniper-Falcon" in r.getMessage()]


async def test_the_callers_deadline_is_known_to_a_provider_read_by_the_read_ahead_task() -> None:
    """core/deadline.py: a provider bounds its waits by the caller's deadline, read from a context
    variable; after the first delta the provider runs in the read-ahead task."""
    seen: list[float | None] = []
    first_taken = asyncio.Event()

    async def reads_the_deadline(request: ModelRequest) -> AsyncIterator[ModelOutput]:
        from modelwire.core.deadline import remaining_s

        yield ModelOutput(text="a ")
        await first_taken.wait()
        seen.append(remaining_s())
        yield ModelOutput(text="b ")
        yield done(2)

    Scripted.plays.append(reads_the_deadline)
    async with worker_stub() as (_, stub):
        rpc = stub.GenerateStream(stream_request(), timeout=30)
        got = [await rpc.read()]
        first_taken.set()
        rest, code, _ = await read_all(rpc)
    assert (text_of(got + rest), code) == ("a b ", grpc.StatusCode.OK)
    assert len(seen) == 1 and seen[0] is not None and 0 < seen[0] <= 30


# --- the HTTP facades: what the official SDKs make of a merged message ------------------------


def thinks_then_answers_in_a_burst(calls: bool) -> Play:
    """A first reasoning delta alone, then a burst: more reasoning, the answer's text, (a tool
    call whose id and name come on its second piece,) the end with a signature."""

    async def play(request: ModelRequest) -> AsyncIterator[ModelOutput]:
        from modelwire.core.types import ToolCallDelta

        yield ModelOutput(reasoning="Let me think. ")
        for piece in ("The user ", "wants ", "weather. "):
            yield ModelOutput(reasoning=piece)
        for piece in ("I will ", "look it ", "up."):
            yield ModelOutput(text=piece)
        if calls:
            yield ModelOutput(tool_call_deltas=(ToolCallDelta(0, arguments_delta='{"city": '),))
            yield ModelOutput(
                tool_call_deltas=(ToolCallDelta(0, "call_1", "get_weather", '"Paris"}'),)
            )
        yield ModelOutput(
            reasoning_signature=b"sig-123",
            finish_reason=FinishReason.TOOL_CALLS if calls else FinishReason.STOP,
            usage=Usage(prompt_tokens=5, completion_tokens=9),
        )

    return play


REASONING = "Let me think. The user wants weather. "
ANSWER = "I will look it up."


async def test_a_deepseek_style_openai_client_gets_the_whole_answer_after_a_burst(
    tmp_path: Path,
) -> None:
    """DeepSeek's own streaming sample (api-docs.deepseek.com, thinking_mode_api_example_streaming)
    reads each chunk as reasoning OR content: `if delta.reasoning_content: ... else: content +=
    delta.content`; other clients do the same, since DeepSeek, vLLM and SGLang never put both in
    one chunk. A merged message holding the end of the reasoning and the start of the answer
    becomes one chunk with both, and such a client loses that part of the answer."""
    from facade_clients import openai_client

    Scripted.plays.append(thinks_then_answers_in_a_burst(calls=False))
    async with running_worker(metered_config(tmp_path, http=True)) as worker:
        assert worker.facade is not None
        client = openai_client(worker.facade.port, TENANT_TOKEN)
        stream = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Weather?"}], stream=True
        )
        reasoning, content = "", ""
        async for chunk in stream:
            if not chunk.choices:
                continue
            delta = chunk.choices[0].delta
            if getattr(delta, "reasoning_content", None):
                reasoning += delta.reasoning_content  # type: ignore[attr-defined]
            else:
                content += delta.content or ""
        await client.close()
    assert (reasoning, content) == (REASONING, ANSWER)


async def test_the_openai_sdks_own_accumulation_of_a_merged_burst_is_whole(tmp_path: Path) -> None:
    from facade_clients import openai_client

    Scripted.plays.append(thinks_then_answers_in_a_burst(calls=True))
    async with running_worker(metered_config(tmp_path, http=True)) as worker:
        assert worker.facade is not None
        client = openai_client(worker.facade.port, TENANT_TOKEN)
        async with client.chat.completions.stream(
            model=MODEL, messages=[{"role": "user", "content": "Weather?"}]
        ) as stream:
            async for _ in stream:
                pass
            final = await stream.get_final_completion()
        await client.close()
    message = final.choices[0].message
    assert message.content == ANSWER
    assert getattr(message, "reasoning_content", None) == REASONING
    assert message.tool_calls is not None and len(message.tool_calls) == 1
    call = message.tool_calls[0]
    assert (call.id, call.function.name) == ("call_1", "get_weather")  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == {"city": "Paris"}  # type: ignore[union-attr]
    assert final.choices[0].finish_reason == "tool_calls"


async def test_the_anthropic_sdk_rebuilds_thinking_signature_text_and_tool_use_from_a_burst(
    tmp_path: Path,
) -> None:
    from facade_clients import anthropic_client

    Scripted.plays.append(thinks_then_answers_in_a_burst(calls=True))
    async with running_worker(metered_config(tmp_path, http=True)) as worker:
        assert worker.facade is not None
        client = anthropic_client(worker.facade.port, TENANT_TOKEN)
        async with client.messages.stream(
            model=MODEL, max_tokens=256, messages=[{"role": "user", "content": "Weather?"}]
        ) as stream:
            async for _ in stream:
                pass
            final = await stream.get_final_message()
        await client.close()
    kinds = [block.type for block in final.content]
    assert kinds == ["thinking", "text", "tool_use"], kinds
    thinking, text, tool = final.content
    assert (thinking.thinking, thinking.signature) == (REASONING, "sig-123")  # type: ignore[union-attr]
    assert text.text == ANSWER  # type: ignore[union-attr]
    assert (tool.id, tool.name, tool.input) == (  # type: ignore[union-attr]
        "call_1",
        "get_weather",
        {"city": "Paris"},
    )
    assert final.stop_reason == "tool_use"


# --- merge rules, on every interleaving ---------------------------------------------------------


def _random_stream(rng: Any) -> list[ModelOutput]:
    """Reasoning, signatures, text (with characters split where UTF-8 would split them: a
    surrogate-free str cannot, so emoji and combining marks), tool-call pieces of up to three
    indexes (id and name on the first piece, or on a later one), empty deltas; then the end."""
    from modelwire.core.types import Timing, ToolCallDelta

    outputs: list[ModelOutput] = []
    named: set[int] = set()
    for _ in range(rng.randrange(1, 60)):
        kind = rng.choice("rrtttcce s")
        if kind == "r":
            outputs.append(ModelOutput(reasoning=rng.choice(["think ", "é", "\u0301", "🙂"])))
        elif kind == "t":
            outputs.append(ModelOutput(text=rng.choice(["word ", "ß", "e\u0301", "👍🏽", "\n"])))
        elif kind == "c":
            index = rng.randrange(3)
            name = index not in named and rng.random() < 0.5
            if name:
                named.add(index)
            piece = rng.choice(['{"a": ', "1", "}", ""])
            outputs.append(
                ModelOutput(
                    tool_call_deltas=(
                        ToolCallDelta(
                            index,
                            f"call_{index}" if name else "",
                            f"f{index}" if name else "",
                            piece,
                        ),
                    )
                )
            )
        elif kind == "s":
            outputs.append(ModelOutput(reasoning_signature=rng.choice([b"s1", b"s2", b"\x00\xff"])))
        else:
            outputs.append(ModelOutput())
    outputs.append(
        ModelOutput(
            finish_reason=rng.choice(list(FinishReason)),
            usage=Usage(prompt_tokens=3, completion_tokens=len(outputs)),
            timing=Timing(0.1, 20.0, 1.0),
        )
    )
    return outputs


def _batches(rng: Any, outputs: list[ModelOutput]) -> list[list[ModelOutput]]:
    """The stream as `take()` might have found it waiting: the first alone, then any runs."""
    batches, rest = [outputs[:1]], outputs[1:]
    while rest:
        size = rng.randrange(1, len(rest) + 1)
        batches.append(rest[:size])
        rest = rest[size:]
    return batches


def test_merging_keeps_order_content_signatures_and_the_end_on_every_interleaving() -> None:
    import random

    from conformance import fold_stream, stream_view
    from modelwire.core.coalesce import coalesce_outputs
    from modelwire.worker.convert import output_to_pb

    for seed in range(3000):
        rng = random.Random(seed)
        outputs = _random_stream(rng)
        merged = [m for batch in _batches(rng, outputs) for m in coalesce_outputs(batch)]
        as_sent = [output_to_pb(o, MODEL) for o in outputs]
        as_merged = [output_to_pb(o, MODEL) for o in merged]
        assert fold_stream(stream_view(as_merged)) == fold_stream(stream_view(as_sent)), seed
        signatures = [o.reasoning_signature for o in outputs if o.reasoning_signature]
        assert [o.reasoning_signature for o in merged if o.reasoning_signature] == signatures, seed
        last = outputs[-1]
        assert (merged[-1].finish_reason, merged[-1].usage, merged[-1].timing) == (
            last.finish_reason,
            last.usage,
            last.timing,
        ), seed
        assert not any(o.finish_reason or o.usage or o.timing for o in merged[:-1]), seed
        assert len(merged) <= len(outputs), seed


# --- bursts and many streams --------------------------------------------------------------------


async def test_100k_tiny_deltas_in_one_burst_arrive_whole_in_far_fewer_messages() -> None:
    count = 100_000

    async def burst(request: ModelRequest) -> AsyncIterator[ModelOutput]:
        for index in range(count):
            yield ModelOutput(text=str(index % 10))
        yield done(count)

    Scripted.plays.append(burst)
    async with worker_stub() as (_, stub):
        messages, code, _ = await read_all(stub.GenerateStream(stream_request(), timeout=120))
    assert code == grpc.StatusCode.OK
    assert text_of(messages) == "".join(str(index % 10) for index in range(count))
    assert len(messages) <= count // 100
    assert messages[-1].finish_reason == pb.FINISH_REASON_STOP
    assert messages[-1].usage.completion_tokens == count


def _own_content(tag: int, deltas: int) -> list[str]:
    return [f"<{tag}:{index}>" for index in range(deltas)]


def per_prompt_bursts(deltas: int) -> Play:
    """Each stream's own content, from its prompt's tag, in bursts of ten with the loop between
    them (so 500 streams interleave)."""

    async def play(request: ModelRequest) -> AsyncIterator[ModelOutput]:
        tag = int(request.messages[-1].content.rsplit(" ", 1)[-1])
        for index, text in enumerate(_own_content(tag, deltas)):
            if index % 10 == 0:
                await asyncio.sleep(0)
            yield ModelOutput(text=text)
        yield done(deltas)

    return play


async def test_500_concurrent_streams_with_backlogs_each_get_their_own_content_once_in_order(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    streams, deltas = 500, 60
    Scripted.plays.extend([per_prompt_bursts(deltas)] * streams)
    async with nothing_left_behind(caplog):
        async with worker_stub(metered_config(tmp_path)) as (worker, stub):

            async def one(tag: int) -> tuple[int, str, grpc.StatusCode]:
                rpc = stub.GenerateStream(
                    stream_request(f"stream {tag}"), metadata=TENANT_AUTH, timeout=120
                )
                messages, code, _ = await read_all(rpc)
                return tag, text_of(messages), code

            outcomes = await asyncio.gather(*(one(tag) for tag in range(streams)))
            await admission_reaches(worker.models[0].admission, 0, 0)
    for tag, text, code in outcomes:
        assert (code, text) == (grpc.StatusCode.OK, "".join(_own_content(tag, deltas))), tag


async def test_through_a_gateway_concurrent_backlogged_streams_keep_their_own_content() -> None:
    streams, deltas = 100, 60
    Scripted.plays.extend([per_prompt_bursts(deltas)] * streams)
    async with fleet(scripted_config(max_concurrency=200, max_queue=0)) as (_, gateway):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
            stub = pb_grpc.ModelWorkerStub(channel)

            async def one(tag: int) -> tuple[int, str, grpc.StatusCode, int]:
                messages, code, _ = await read_all(
                    stub.GenerateStream(stream_request(f"stream {tag}"), timeout=120)
                )
                last = messages[-1] if messages else pb.ModelOutput()
                return tag, text_of(messages), code, last.usage.completion_tokens

            outcomes = await asyncio.gather(*(one(tag) for tag in range(streams)))
    for tag, text, code, completion in outcomes:
        assert (code, text, completion) == (
            grpc.StatusCode.OK,
            "".join(_own_content(tag, deltas)),
            deltas,
        ), tag


async def test_a_paced_stream_through_a_gateway_gets_one_message_per_delta() -> None:
    received: asyncio.Queue[str] = asyncio.Queue()
    words = [f"w{index} " for index in range(8)]

    async def paced(request: ModelRequest) -> AsyncIterator[ModelOutput]:
        for word in words:
            yield ModelOutput(text=word)
            assert await received.get() == word  # the next once the caller has this one
        yield done(len(words))

    Scripted.plays.append(paced)
    async with fleet() as (_, gateway):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
            rpc = pb_grpc.ModelWorkerStub(channel).GenerateStream(stream_request(), timeout=30)
            texts = []
            async for message in rpc:
                texts.append(message.text)
                if message.text:
                    received.put_nowait(message.text)
    assert texts == [*words, ""]


# --- observability: spans, metrics, the access line -------------------------------------------


def _sample(worker: Worker, name: str) -> float:
    value = worker.metrics.registry.get_sample_value(name, {"model": MODEL})
    return value or 0.0


async def test_a_coalesced_stream_counts_one_first_token_and_a_gap_per_later_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """docs/operations.md: time to first token is the call's first message (never merged: it is
    read before the read-ahead starts), inter-token latency a gap between messages; the access
    line's `messages` counts messages."""
    Scripted.plays.append(big_deltas_after_a_first(10, 50))
    caplog.set_level(logging.INFO)
    async with worker_stub() as (worker, stub):
        messages, code, _ = await read_all(stub.GenerateStream(stream_request(), timeout=30))
        await admission_reaches(worker.models[0].admission, 0, 0)
        ttft = _sample(worker, "modelwire_time_to_first_token_seconds_count")
        gaps = _sample(worker, "modelwire_inter_token_latency_seconds_count")
    assert code == grpc.StatusCode.OK and messages[0].text == "start "
    assert (ttft, gaps) == (1, len(messages) - 1)
    lines = [r for r in caplog.records if getattr(r, "method", "").endswith("/GenerateStream")]
    assert [getattr(r, "messages", None) for r in lines] == [len(messages)]


async def test_the_upstream_span_of_a_stream_ended_by_the_read_ahead_task_is_ended_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """observe/tracing.py keeps a stream's span across tasks; the stream now ends in the
    read-ahead task (a burst read to its end there)."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from fake_upstream import load_toml_config
    from modelwire.observe import tracing

    # Tracing stays on in this process once a server turned it on: off again after this test.
    monkeypatch.setattr(tracing, "_tracing", False)
    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    Scripted.plays.append(big_deltas_after_a_first(10, 40))
    config = load_toml_config(
        tmp_path,
        "[server]\ngrace_period_s = 1\n[observability]\ntracing = true\n"
        f'[[models]]\nname = "{MODEL}"\nprovider = "{PROVIDER}"\n',
    )
    async with nothing_left_behind(caplog):
        async with worker_stub(config) as (worker, stub):
            messages, code, _ = await read_all(stub.GenerateStream(stream_request(), timeout=30))
            await admission_reaches(worker.models[0].admission, 0, 0)
    finished = exporter.get_finished_spans()
    server = [s for s in finished if s.name.endswith("/GenerateStream")]
    upstream = [s for s in finished if s.name == f"upstream {PROVIDER}"]
    assert code == grpc.StatusCode.OK
    assert len(server) == 1 and len(upstream) == 1
    assert upstream[0].parent is not None
    assert upstream[0].parent.span_id == server[0].context.span_id


# --- the HTTP facade: a caller leaving while deltas wait ----------------------------------------


async def test_an_http_caller_leaving_with_deltas_waiting_closes_the_stream_and_frees_the_slot(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import aiohttp

    first_taken = asyncio.Event()
    Scripted.plays.append(hangs_after(first_taken, 40))
    async with nothing_left_behind(caplog):
        async with running_worker(metered_config(tmp_path, http=True)) as worker:
            assert worker.facade is not None
            url = f"http://127.0.0.1:{worker.facade.port}/v1/chat/completions"
            body = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
            headers = {"Authorization": f"Bearer {TENANT_TOKEN}"}
            async with aiohttp.ClientSession() as session:
                answer = await session.post(url, json=body, headers=headers)
                async for line in answer.content:
                    if b"d0 " in line:
                        break
                first_taken.set()
                answer.close()  # the caller leaves
            await admission_reaches(worker.models[0].admission, 0, 0)
            ends = list(Scripted.ends)
            spent = await charged(worker)
    assert ends == ["CancelledError"]
    assert spent > 0


# --- the embedded model under load and cancel ---------------------------------------------------


async def test_the_local_model_streams_cancelled_after_their_first_message_stop_at_once(
    embedded_worker: Worker,
) -> None:
    """Two generations of up to 2,000 tokens at once (the model's two slots), each cancelled once
    its first message arrived: llama.cpp must stop within a few tokens, whatever the read-ahead
    had taken; the model is free afterwards and streams as before."""
    from modelwire.providers.llama.client import LlamaCppClient

    client = embedded_worker.models[0].client
    assert isinstance(client, LlamaCppClient)
    model = embedded_worker.models[0].model
    before = sum(s.stats.tokens_evaluated for s in client.sessions)
    prompts = ["Write a very long story about a lighthouse.", "List every number you know."]

    def asked(prompt: str, tokens: int) -> pb.ModelRequest:
        return pb.ModelRequest(
            model=model,
            messages=[pb.ModelMessage(role=pb.ROLE_USER, content=prompt)],
            sampling=pb.SamplingParams(temperature=0, max_new_tokens=tokens),
        )

    async with grpc.aio.insecure_channel(embedded_worker.address) as channel:
        stub = pb_grpc.ModelWorkerStub(channel)

        async def cancelled_after_first(prompt: str) -> str:
            rpc = stub.GenerateStream(asked(prompt, 2000), timeout=120)
            first: pb.ModelOutput = await rpc.read()
            rpc.cancel()
            return first.text

        firsts = await asyncio.gather(*(cancelled_after_first(p) for p in prompts))
        await asyncio.to_thread(client.activity.wait_for, lambda a: a.running == 0, 60)
        await admission_reaches(embedded_worker.models[0].admission, 0, 0)
        evaluated = sum(s.stats.tokens_evaluated for s in client.sessions) - before
        later = [m async for m in stub.GenerateStream(asked("Say hi.", 8), timeout=60)]
    assert all(firsts)
    prompt_tokens = sum(len(client.prompt_tokens([_user(p)])) for p in prompts)
    # Far from the 4,000 tokens asked for: the prompts and what ran until the cancels arrived.
    assert evaluated - prompt_tokens < 400, evaluated - prompt_tokens
    assert later[-1].finish_reason in (pb.FINISH_REASON_STOP, pb.FINISH_REASON_LENGTH)


def _user(text: str) -> Any:
    from modelwire.core.types import ModelMessage, Role

    return ModelMessage(Role.USER, text)

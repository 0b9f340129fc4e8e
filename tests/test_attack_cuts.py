"""Attacks on eaf696f's per-call cuts: core/types' value types (immutable to mypy, plain slotted
dataclasses at run time), the ORCA load report made once per call (worker/orca.py, its rate's
running sum), and the coalescer's read-ahead swapped out whole with a wait that is no coroutine
(core/coalesce.py).

Nothing here waits on the clock: streams are scripted, the rate's clock is a list the test moves,
and a deadline is one already past."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import pickle
import random
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import aclosing, asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from xds.data.orca.v3 import orca_load_report_pb2

from conftest import admission_reaches, hold_quota_clock, running_worker
from modelwire.app.config import Config
from modelwire.app.server import Worker
from modelwire.core import types
from modelwire.core.coalesce import READ_AHEAD, coalesced
from modelwire.core.errors import UpstreamUnavailable
from modelwire.core.settings import ModelConfig, QuotaRule, QuotaSection
from modelwire.core.settings import WorkerServerConfig as ServerConfig
from modelwire.core.types import (
    FinishReason,
    ModelMessage,
    ModelMetadata,
    ModelOutput,
    ModelRequest,
    RequestContext,
    Role,
    SamplingParams,
    Tool,
    Usage,
)
from modelwire.observe.call_record import begin_call
from modelwire.rpc.status import CallScope, received_status
from modelwire.rpc.wire import LOAD_TRAILER, ORCA_TRAILER, REQUEST_ID_KEY, WORKER_SERVICE
from modelwire.v1 import worker_pb2 as pb
from modelwire.v1 import worker_pb2_grpc as pb_grpc
from modelwire.worker import convert, orca
from scripted import MODEL, PROVIDER, Scripted, install_scripted

ROOT = Path(__file__).resolve().parent.parent
GARBAGE = b"\xff\xff\xff"  # no message decodes it (tests/test_malformed_bodies.py)

VALUE_TYPES = [
    cls
    for cls in vars(types).values()
    if isinstance(cls, type) and dataclasses.is_dataclass(cls) and cls.__module__ == types.__name__
]


@pytest.fixture(autouse=True)
def scripted(monkeypatch: pytest.MonkeyPatch) -> None:
    install_scripted(monkeypatch)


def scripted_config(quota: QuotaSection | None = None, **model: Any) -> Config:
    served = ModelConfig(name=MODEL, provider=PROVIDER, options={"chunk_text": "x"}, **model)
    return Config(
        server=ServerConfig(host="127.0.0.1", port=0, grace_period_s=1.0),
        models=(served,),
        quota=quota or QuotaSection(),
    )


def ask(prompt: str = "hi", model: str = MODEL, **fields: Any) -> pb.ModelRequest:
    return pb.ModelRequest(
        model=model, messages=[pb.ModelMessage(role=pb.ROLE_USER, content=prompt)], **fields
    )


@asynccontextmanager
async def worker_stub(config: Config) -> AsyncIterator[tuple[Worker, grpc.aio.Channel, Any]]:
    async with (
        running_worker(config) as worker,
        grpc.aio.insecure_channel(worker.address) as channel,
    ):
        yield worker, channel, pb_grpc.ModelWorkerStub(channel)


def reports_in(trailers: Any) -> list[orca_load_report_pb2.OrcaLoadReport]:
    """Every load report among a call's trailers (gRPC Python's C core keeps ORCA_TRAILER)."""
    pairs = list(trailers or ())
    assert ORCA_TRAILER not in [key for key, _ in pairs]
    return [
        orca_load_report_pb2.OrcaLoadReport.FromString(value)
        for key, value in pairs
        if key == LOAD_TRAILER
    ]


def one_report(trailers: Any) -> orca_load_report_pb2.OrcaLoadReport:
    reports = reports_in(trailers)
    assert len(reports) == 1, reports
    assert [key for key, _ in trailers].count(REQUEST_ID_KEY) == 1
    return reports[0]


async def failure_of(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        if isinstance(call, grpc.aio.UnaryUnaryCall):
            await call
        else:
            async for _ in call:
                pass
    return failed.value


# --- 1. value types: immutable to mypy, and nothing changes one at run time ---------------------


def test_mypy_refuses_every_assignment_to_a_value_types_field(tmp_path: Path) -> None:
    """The only thing that keeps the value types immutable now: mypy's reading of `value` as a
    frozen dataclass (dataclass_transform). Each marked line must be refused."""
    lines = [
        "from modelwire.core.types import ModelRequest, SamplingParams, Usage",
        "sampling = SamplingParams()",
        "sampling.temperature = 1.0  # refused",
        'request = ModelRequest(model="m", messages=())',
        "request.sampling.seed = 3  # refused",
        'request.model = "x"  # refused',
        "usage = Usage()",
        "usage.prompt_tokens += 1  # refused",
        "class Sub(SamplingParams): ...",
        "Sub().top_p = 0.5  # refused",
    ]
    snippet = tmp_path / "assigns.py"
    snippet.write_text("\n".join(lines) + "\n")
    run = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), str(snippet)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    refused = {
        int(line.split(":")[1]) for line in run.stdout.splitlines() if "is read-only" in line
    }
    expected = {number for number, line in enumerate(lines, 1) if line.endswith("# refused")}
    assert refused == expected, run.stdout + run.stderr


def test_every_value_type_hashes_and_compares_as_a_frozen_one_did() -> None:
    """unsafe_hash keeps frozen's field hash: equal values hash alike, a dict field refuses to
    hash (as it did), and the dataclass check that refuses a mutable default still passes for the
    shared instance defaults of ModelRequest."""
    assert VALUE_TYPES
    for cls in VALUE_TYPES:
        assert "__slots__" in vars(cls), cls
        assert cls.__hash__ is not None, cls
    assert hash(SamplingParams(temperature=0.5)) == hash(SamplingParams(temperature=0.5))
    assert {Usage(1, 2): "a"}[Usage(1, 2)] == "a"
    assert Tool("t") in {Tool("t")}
    with pytest.raises(TypeError):
        hash(RequestContext())  # its metadata is a dict, frozen or not


def test_default_factories_still_give_each_value_its_own_dict() -> None:
    assert RequestContext().metadata is not RequestContext().metadata
    first = ModelMetadata("a", "echo", 10, 10)
    second = ModelMetadata("b", "echo", 10, 10)
    assert first.metadata is not second.metadata


def test_values_survive_pickling_and_copying_equal() -> None:
    request = ModelRequest(
        model="m",
        messages=(ModelMessage(Role.USER, "hi", parts=("a", types.Image(url="u"))),),
        sampling=SamplingParams(temperature=0.2, stop=("x",)),
        context=RequestContext("id", "u", {"k": "v"}),
        tools=(Tool("t", parameters_json_schema="{}"),),
        tool_choice=types.NamedTool("t"),
        output_format=types.JsonObjectFormat(),
        reasoning=types.ReasoningOptions(budget_tokens=5),
    )
    for again in (
        pickle.loads(pickle.dumps(request)),
        copy.copy(request),
        copy.deepcopy(request),
        dataclasses.replace(request),
    ):
        assert again == request
    changed = dataclasses.replace(request, model="n")
    assert (changed.model, request.model) == ("n", "m")


@pytest.fixture
def no_field_changes(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every value type refuses (and records) an assignment or deletion of a field outside its
    generated __init__, as frozen=True did: what mypy cannot see (Any, setattr) is seen here."""
    changes: list[str] = []

    def guard(cls: type) -> None:
        def __setattr__(self: Any, name: str, value: Any) -> None:
            caller = sys._getframe(1).f_code
            if caller.co_name != "__init__" or caller.co_filename != "<string>":
                changes.append(f"{cls.__name__}.{name} = {value!r}")
                raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")
            object.__setattr__(self, name, value)

        def __delattr__(self: Any, name: str) -> None:
            changes.append(f"del {cls.__name__}.{name}")
            raise dataclasses.FrozenInstanceError(f"cannot delete field {name!r}")

        monkeypatch.setattr(cls, "__setattr__", __setattr__)
        monkeypatch.setattr(cls, "__delattr__", __delattr__)

    for cls in VALUE_TYPES:
        guard(cls)
    with pytest.raises(dataclasses.FrozenInstanceError):
        SamplingParams().seed = 1  # type: ignore[misc]
    changes.clear()
    yield changes


async def test_no_call_through_the_worker_changes_a_value_or_the_shared_defaults(
    no_field_changes: list[str],
) -> None:
    """Calls of every shape (no sampling or context: the shared defaults; with them; streamed;
    counted) change no value object, and the defaults every call shares (convert's
    _NO_SAMPLING/_NO_CONTEXT, ModelRequest's) are still empty after them."""
    defaults = ModelRequest(model="m", messages=())
    with_all = ask(
        sampling=pb.SamplingParams(temperature=0.5, max_new_tokens=5, stop=["z"]),
        context=pb.RequestContext(request_id="r", user="u", metadata={"k": "v"}),
    )
    async with worker_stub(scripted_config()) as (_, _, stub):
        for request in (ask(), with_all, ask(context=pb.RequestContext())):
            await stub.Generate(request, timeout=10)
            assert [m async for m in stub.GenerateStream(request, timeout=10)]
        await stub.CountToken(pb.CountTokenRequest(model=MODEL, prompt="one two"), timeout=10)
    assert no_field_changes == []
    for shared in (convert._NO_CONTEXT, defaults.context):
        assert shared == RequestContext() and shared.metadata == {}
    for sampling in (convert._NO_SAMPLING, defaults.sampling):
        assert sampling == SamplingParams()


# --- 2. the ORCA load report: one per call, on every answer and failure -------------------------


def test_the_call_rate_matches_a_plain_count_through_any_clock_moves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The running sum against a count of the calls in the window, through random clock moves:
    small steps, seconds, jumps of many windows, and a clock read going back (less than a second,
    and more) — the rate counts a call at the latest second it has seen, as it did."""
    window = orca.RATE_WINDOW_S
    now = [0.0]
    monkeypatch.setattr(orca, "time", SimpleNamespace(monotonic=lambda: now[0]))
    for seed in range(40):
        rng = random.Random(seed)
        now[0] = rng.choice([0.0, 1000.25, 1e9 + 0.9])
        rate = orca._Rate()
        seen = int(now[0])
        calls: list[int] = []
        for _ in range(400):
            move = rng.random()
            if move < 0.4:
                now[0] += rng.uniform(0, 0.6)
            elif move < 0.6:
                now[0] += rng.uniform(0.6, 3 * window)
            elif move < 0.65:
                now[0] += rng.choice([window, window + 1, 1000 * window, 10**6 * window])
            elif move < 0.8:
                now[0] -= rng.uniform(0, 0.99)
            else:
                now[0] -= rng.uniform(1, 3)
            seen = max(seen, int(now[0]))
            if rng.random() < 0.7:
                for _ in range(rng.randint(1, 4)):
                    rate.add()
                    calls.append(seen)
            expected = sum(1 for second in calls if second > seen - window) / window
            assert rate.per_second() == expected, (seed, now[0])
            assert rate._total == sum(rate._buckets) >= 0


async def test_each_call_is_counted_once_and_every_outcome_carries_one_report(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the rate's clock held, the k-th call's report says k calls: one count per call
    whatever its outcome (answered, streamed, refused as undecodable, not found, invalid), and one
    report on each."""
    monkeypatch.setattr(orca, "time", SimpleNamespace(monotonic=lambda: 5000.0))
    async with worker_stub(scripted_config(max_concurrency=3)) as (_, channel, stub):
        raw = channel.unary_unary(f"/{WORKER_SERVICE}/Generate")
        calls: list[Callable[[], Any]] = [
            lambda: stub.Generate(ask(), timeout=10),
            lambda: stub.GenerateStream(ask(), timeout=10),
            lambda: raw(GARBAGE, timeout=10),
            lambda: stub.Generate(ask(model="nope"), timeout=10),
            lambda: stub.GenerateStream(pb.ModelRequest(model=MODEL), timeout=10),
            lambda: stub.CountToken(pb.CountTokenRequest(model=MODEL, prompt="a"), timeout=10),
            lambda: stub.GenerateStream(ask(), timeout=10),
        ]
        for number, make in enumerate(calls, 1):
            call = make()
            try:
                if isinstance(call, grpc.aio.UnaryUnaryCall):
                    await call
                else:
                    async for _ in call:
                        pass
                trailers = await call.trailing_metadata()
            except grpc.aio.AioRpcError as failed:
                trailers = failed.trailing_metadata()
            report = one_report(trailers)
            assert report.rps_fractional == number / orca.RATE_WINDOW_S, number
            assert report.named_metrics["capacity"] == 3.0


async def test_an_admission_refusal_carries_one_report_of_the_full_model() -> None:
    hold = asyncio.Event()

    async def held(request: ModelRequest) -> AsyncIterator[ModelOutput]:
        yield ModelOutput(text="first ")
        await hold.wait()
        yield ModelOutput(finish_reason=FinishReason.STOP, usage=Usage(1, 1))

    Scripted.plays.append(held)
    async with worker_stub(scripted_config(max_concurrency=1, max_queue=0)) as (worker, _, stub):
        holder = stub.GenerateStream(ask(), timeout=10)
        assert (await holder.read()).text == "first "
        admission = worker.targets[MODEL].deployments[0].admission
        await admission_reaches(admission, 1, 0)
        for call in (stub.Generate(ask(), timeout=10), stub.GenerateStream(ask(), timeout=10)):
            error = await failure_of(call)
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            report = one_report(error.trailing_metadata())
            assert dict(report.named_metrics) == {"in_flight": 1.0, "queued": 0.0, "capacity": 1.0}
            assert report.application_utilization == 1.0
        hold.set()
        while await holder.read() is not grpc.aio.EOF:
            pass
        assert one_report(await holder.trailing_metadata()).named_metrics["in_flight"] == 0.0


async def test_a_quota_refusal_carries_one_report_next_to_its_quota_failure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    quota = QuotaSection(rules=(QuotaRule(tenant="all", requests_per_minute=1),))
    async with worker_stub(scripted_config(quota)) as (worker, _, stub):
        hold_quota_clock(worker, monkeypatch)
        await stub.Generate(ask(), timeout=10)
        for call in (stub.Generate(ask(), timeout=10), stub.GenerateStream(ask(), timeout=10)):
            error = await failure_of(call)
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            one_report(error.trailing_metadata())
            status = received_status(error.trailing_metadata())
            assert status is not None
            assert any(d.Is(error_details_pb2.QuotaFailure.DESCRIPTOR) for d in status.details)


async def test_an_upstream_failure_before_and_after_deltas_carries_one_report() -> None:
    async def fails_at_once(request: ModelRequest) -> AsyncIterator[ModelOutput]:
        raise UpstreamUnavailable("the upstream is down")
        yield ModelOutput()  # pragma: no cover - an async generator

    async def fails_mid_way(request: ModelRequest) -> AsyncIterator[ModelOutput]:
        for index in range(5):
            yield ModelOutput(text=f"{index} ")
        await asyncio.sleep(0)
        yield ModelOutput(text="late ")
        raise UpstreamUnavailable("the upstream dropped the stream")

    async with worker_stub(scripted_config()) as (_, _, stub):
        Scripted.plays.append(fails_mid_way)
        stream = stub.GenerateStream(ask(), timeout=10)
        texts = []
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            async for message in stream:
                texts.append(message.text)
        assert "".join(texts) == "0 1 2 3 4 late "
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "dropped" in (failed.value.details() or "")
        one_report(failed.value.trailing_metadata())
        Scripted.plays.extend([fails_at_once, fails_at_once])  # (the breaker opens at 5)
        for call in (stub.Generate(ask(), timeout=10), stub.GenerateStream(ask(), timeout=10)):
            error = await failure_of(call)
            assert error.code() == grpc.StatusCode.UNAVAILABLE
            assert "down" in (error.details() or "")
            one_report(error.trailing_metadata())


async def test_a_deadline_that_passes_in_the_call_scope_adds_the_calls_report() -> None:
    """CallScope's own timer (the caller's deadline) fails the call with DEADLINE_EXCEEDED and
    the report the call pipeline left on the record, made then (no client race: the deadline has
    already passed when the scope opens)."""
    aborted: list[tuple[grpc.StatusCode, str, tuple[tuple[str, Any], ...]]] = []
    made = []

    class Context:
        def time_remaining(self) -> float:
            return 0.0

        def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
            return ((REQUEST_ID_KEY, "r"),)

        async def abort(self, code: grpc.StatusCode, details: str, trailer: Any) -> None:
            aborted.append((code, details, trailer))
            raise grpc.aio.AbortError()

    async def call() -> None:
        record = begin_call(f"/{WORKER_SERVICE}/Generate", "r")

        def report() -> tuple[tuple[str, bytes], ...]:
            made.append(True)
            return ((LOAD_TRAILER, b"report"),)

        record.server_trailers = report
        async with CallScope(Context()):  # type: ignore[arg-type]
            await asyncio.Event().wait()

    with pytest.raises(grpc.aio.AbortError):
        await asyncio.create_task(call())
    [(code, _, trailer)] = aborted
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert [key for key, _ in trailer].count(LOAD_TRAILER) == 1
    assert made == [True]


# --- 3. the coalescer: nothing lost, doubled or late; the bound; cancels -------------------------


class Boom(Exception):
    pass


class Item:
    """A delta that is an object of its own, as a ModelOutput is."""

    def __init__(self, index: int) -> None:
        self.index = index


async def _schedule(seed: int) -> None:
    """One random interleaving of a reader and its consumer: each item comes once, in order; an
    error after every item read before it; the reader never more than `limit` ahead of what was
    taken; a consumer that stops early leaves the upstream closed."""
    rng = random.Random(seed)
    limit = rng.choice([1, 2, 3, 5, READ_AHEAD])
    count = rng.randint(1, 40)
    fails = rng.random() < 0.5
    stop_after = rng.randint(1, count) if rng.random() < 0.25 else None
    source_rng, consumer_rng = random.Random(rng.random()), random.Random(rng.random())
    taken = 0  # items after the first that left the read-ahead
    merged: set[int] = set()
    ahead_of_bound: list[int] = []
    closed: list[str] = []

    def merge(batch: list[Item]) -> Sequence[Item]:
        nonlocal taken
        taken += len(batch)
        merged.update(item.index for item in batch)
        return batch

    async def source() -> AsyncIterator[Item]:
        try:
            for index in range(count):
                if index and index - taken > limit:
                    ahead_of_bound.append(index)
                for _ in range(source_rng.randint(0, 3)):
                    await asyncio.sleep(0)
                yield Item(index)
            for _ in range(source_rng.randint(0, 3)):
                await asyncio.sleep(0)
            if fails:
                raise Boom()
            closed.append("finished")
        except BaseException as error:
            closed.append(type(error).__name__)
            raise

    got: list[int] = []
    ended = "end"
    async with (
        aclosing(source()) as items,  # as the worker, the facade and the gateway close it
        aclosing(coalesced(items, merge, limit)) as stream,
    ):
        try:
            async for item in stream:
                if got and item.index not in merged:
                    taken += 1
                got.append(item.index)
                if len(got) == stop_after:
                    ended = "stopped"
                    break
                for _ in range(consumer_rng.randint(0, 4)):
                    await asyncio.sleep(0)
        except Boom:
            ended = "error"
    assert ahead_of_bound == [], (seed, limit)
    if ended == "stopped":
        assert got == list(range(stop_after or 0)), seed
    else:
        assert got == list(range(count)), seed
        assert ended == ("error" if fails else "end"), seed
    assert len(closed) == 1, (seed, closed)


async def test_random_interleavings_lose_double_or_reorder_nothing() -> None:
    before = asyncio.all_tasks()
    for seed in range(400):
        await _schedule(seed)
    assert {task for task in asyncio.all_tasks() - before if not task.done()} == set()


@pytest.mark.parametrize("fails", [False, True])
async def test_a_reader_that_ends_while_the_consumer_is_inside_a_batch(fails: bool) -> None:
    """The consumer has taken a batch and is between two of its items when the reader reads the
    rest and ends: the rest comes, then the end (or the error) once, and nothing after it."""
    both, gate, finished = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def source() -> AsyncIterator[str]:
        try:
            yield "a"
            yield "b"
            yield "c"
            both.set()
            await gate.wait()
            yield "d"
            yield "e"
            if fails:
                raise Boom()
        finally:
            finished.set()

    stream = coalesced(source(), list)
    got = [await anext(stream)]
    await both.wait()
    got.append(await anext(stream))  # "b", of the batch ["b", "c"]: "c" is still to come
    gate.set()
    await finished.wait()  # the reader has read "d", "e" and the end
    if fails:
        with pytest.raises(Boom):
            async for item in stream:
                got.append(item)
    else:
        got += [item async for item in stream]
    assert got == ["a", "b", "c", "d", "e"]
    with pytest.raises(StopAsyncIteration):
        await anext(stream)


@pytest.mark.parametrize("limit", [1, 2, READ_AHEAD])
async def test_a_consumer_that_stops_reading_stops_the_reader_at_the_bound(limit: int) -> None:
    produced = 0
    reached = asyncio.Event()

    async def endless() -> AsyncIterator[int]:
        nonlocal produced
        while True:
            produced += 1
            if produced == 1 + limit:  # the first (taken) and the bound (waiting)
                reached.set()
            yield produced - 1

    async with aclosing(endless()) as items, aclosing(coalesced(items, list, limit)) as stream:
        assert await anext(stream) == 0
        await reached.wait()
        for _ in range(50):  # whatever the reader could do now, it has done
            await asyncio.sleep(0)
        assert produced == 1 + limit
        assert [await anext(stream) for _ in range(limit)] == list(range(1, limit + 1))


@pytest.mark.parametrize("stage", ["waiting for a delta", "held at the bound", "inside a batch"])
async def test_a_cancel_at_each_stage_ends_the_reader_and_the_upstream(stage: str) -> None:
    """The caller's task cancelled: while it waits for the next delta (the reader inside the
    upstream), while the reader is held at the bound, and between two items of a batch. The
    upstream is closed and no task is left running when the caller's task has ended."""
    cleaned: list[str] = []
    stopped = asyncio.Event()
    never = asyncio.Event()

    async def upstream() -> AsyncIterator[int]:
        try:
            yield 0
            if stage == "waiting for a delta":
                await never.wait()
            for index in range(1, 10**6):
                yield index
        except BaseException as error:
            cleaned.append(type(error).__name__)
            raise

    async def caller() -> None:
        async with aclosing(upstream()) as items, aclosing(coalesced(items, list, 4)) as stream:
            await anext(stream)
            if stage == "inside a batch":
                for _ in range(10):
                    await asyncio.sleep(0)
                await anext(stream)
            elif stage == "waiting for a delta":
                stopped.set()
                await anext(stream)
            stopped.set()
            await never.wait()

    before = asyncio.all_tasks()
    task = asyncio.create_task(caller())
    await stopped.wait()
    for _ in range(10):
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(cleaned) == 1, cleaned
    assert {t for t in asyncio.all_tasks() - before if not t.done()} == set()


async def test_closing_the_coalescer_leaves_an_upstream_held_at_the_bound_to_its_caller() -> None:
    """As `coalesced` documents: a reader held at the bound is not inside `items`, so cancelling it
    does not close them; the caller's own `aclosing(items)` (every caller has one) does."""
    closed: list[bool] = []

    async def endless() -> AsyncIterator[int]:
        try:
            index = 0
            while True:
                yield index
                index += 1
        finally:
            closed.append(True)

    async with aclosing(endless()) as items:
        async with aclosing(coalesced(items, list, 2)) as stream:
            await anext(stream)
            for _ in range(20):
                await asyncio.sleep(0)
        assert closed == []
    assert closed == [True]

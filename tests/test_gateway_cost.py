"""What the gateway keeps between calls so a call costs less (its instance table's models and
servers, a worker's callables) stays true to the table; and the one-pass readings of a call
(its label, metadata, the worker's trailers and load report) read what the slower ones read."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import pytest
from xds.data.orca.v3 import orca_load_report_pb2

from modelwire.core.errors import InvalidRequest, NotReady, RoutingLoop
from modelwire.fleet.orca import reported_load
from modelwire.fleet.registry import RegistryClient
from modelwire.fleet.types import (
    EventType,
    Instance,
    InstanceEvent,
    InstanceModel,
    InstanceSpec,
    WatchBatch,
)
from modelwire.gateway.router import (
    MAX_FIELDS_BEFORE_MODEL,
    Router,
    leading_model,
    returned_trailers,
)
from modelwire.gateway.server import Gateway
from modelwire.observe.call_record import begin_call
from modelwire.rpc.wire import (
    CALLER_KEY,
    INSTANCE_TRAILER,
    LOAD_TRAILER,
    ORCA_TRAILER,
    REQUEST_ID_KEY,
    TENANT_KEY,
    VIA_KEY,
)
from modelwire.v1 import worker_pb2 as pb


def instance(instance_id: str, *models: str, port: int = 1) -> Instance:
    spec = InstanceSpec(instance_id, f"127.0.0.1:{port}", tuple(InstanceModel(m) for m in models))
    return Instance(spec)


class Source:
    """No registry: the tests apply the watch's batches themselves."""

    async def close(self) -> None:
        pass


def router() -> Router:
    return Router(cast(RegistryClient, Source()), probe_health=False)


def batch(kind: EventType, *instances: Instance, snapshot: bool = False) -> WatchBatch:
    return WatchBatch(snapshot, tuple(InstanceEvent(kind, i) for i in instances))


async def test_the_table_s_models_and_servers_follow_its_changes() -> None:
    table = router()
    try:
        await table._apply(batch(EventType.ADDED, instance("a", "m1"), snapshot=True))
        assert table.known_models() == {"m1"}
        assert table.pick("m1", set()).instance_id == "a"

        await table._apply(batch(EventType.ADDED, instance("b", "m1", "m2", port=2)))
        assert table.known_models() == {"m1", "m2"}
        assert table.pick("m2", set()).instance_id == "b"
        assert table.pick("m1", {"a"}).instance_id == "b"

        # A re-registration that serves other models changes what the instance is picked for.
        await table._apply(batch(EventType.UPDATED, instance("b", "m3", port=2)))
        assert table.known_models() == {"m1", "m2", "m3"}  # m2 was served: still a label
        assert table.pick("m3", set()).instance_id == "b"
        with pytest.raises(NotReady, match="every instance of model 'm1' was tried"):
            table.pick("m1", {"a"})  # b no longer serves m1

        await table._apply(batch(EventType.REMOVED, instance("a", "m1")))
        assert "m1" in table.known_models()  # served recently: not ready, not unknown
        with pytest.raises(NotReady, match="no instance of model 'm1' is registered"):
            table.pick("m1", set())
    finally:
        await table.close()


async def test_a_route_makes_a_method_s_callable_once() -> None:
    table = router()
    try:
        await table._apply(batch(EventType.ADDED, instance("a", "m"), snapshot=True))
        route = table.routes["a"]
        generate = route.unary("/modelwire.v1.ModelWorker/Generate")
        assert route.unary("/modelwire.v1.ModelWorker/Generate") is generate
        assert route.unary("/modelwire.v1.ModelWorker/Embed") is not generate
    finally:
        await table.close()


def field_1(value: bytes) -> bytes:
    return b"\x0a" + _varint(len(value)) + value


def _varint(value: int) -> bytes:
    out = b""
    while value >= 0x80:
        out += bytes([value & 0x7F | 0x80])
        value >>= 7
    return out + bytes([value])


def request(model: str) -> bytes:
    return pb.ModelRequest(
        model=model, messages=[pb.ModelMessage(role=pb.ROLE_USER, content="hi")]
    ).SerializeToString()


@pytest.mark.parametrize("length", [1, 6, 126, 127, 128, 300, 1024])
def test_the_label_reads_the_model_whatever_its_length(length: int) -> None:
    assert leading_model(request("m" * length)) == "m" * length


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (field_1(b"\xff\xfe"), "not a valid protobuf"),  # not UTF-8: the loop's refusal
        (field_1(b""), "must name a served model"),
        (field_1(b"gpt-4o")[:-1], "not a valid protobuf"),  # cut short
        (field_1(b"m" * 1025), "at most 1024 bytes"),
        (b"\x0a", "not a valid protobuf"),
        (b"", "must name a served model"),
    ],
)
def test_the_label_refuses_as_the_loop_does(body: bytes, problem: str) -> None:
    with pytest.raises(InvalidRequest, match=problem):
        leading_model(body)


def test_the_label_still_finds_a_model_after_other_fields() -> None:
    # A message field (2) first: the loop's work, within its bound.
    assert leading_model(b"\x12\x02\x08\x01" + field_1(b"later")) == "later"
    assert leading_model(b"\x10\x01" * (MAX_FIELDS_BEFORE_MODEL - 1) + field_1(b"m")) == "m"


def report(**named: float) -> bytes:
    message = orca_load_report_pb2.OrcaLoadReport(cpu_utilization=0.5, rps_fractional=12.0)
    for key, value in named.items():
        message.named_metrics[key] = value
    return message.SerializeToString()


@pytest.mark.parametrize("key", [LOAD_TRAILER, ORCA_TRAILER])
def test_the_reported_load_is_in_flight_and_queued(key: str) -> None:
    trailers = [("x-request-id", "r"), (key, report(in_flight=3, queued=2, capacity=8))]
    assert reported_load(trailers) == 5
    assert reported_load([(key, report(in_flight=4))]) == 4


@pytest.mark.parametrize(
    "trailers",
    [
        None,
        [],
        [(LOAD_TRAILER, report(queued=2))],  # says nothing of calls in flight
        [(LOAD_TRAILER, b"\xff\xff\xff")],  # garbage
        [(LOAD_TRAILER, "text")],  # not a binary value
    ],
)
def test_no_load_without_a_report_that_says(
    trailers: Sequence[tuple[str, str | bytes]] | None,
) -> None:
    assert reported_load(trailers) is None


def test_the_caller_gets_the_worker_s_trailers_naming_the_instance() -> None:
    worker = [
        ("x-request-id", "r"),
        (LOAD_TRAILER, b"x"),
        (ORCA_TRAILER, b"x"),
        (INSTANCE_TRAILER, "the-worker-s-own"),
        ("modelwire-pid", "7"),
    ]
    assert returned_trailers(worker, "i-1") == (
        ("x-request-id", "r"),
        ("modelwire-pid", "7"),
        (INSTANCE_TRAILER, "i-1"),
    )
    assert returned_trailers(None, "i-1") == ((INSTANCE_TRAILER, "i-1"),)


class Incoming:
    def __init__(self, *metadata: tuple[str, str | bytes]) -> None:
        self._metadata = metadata

    def invocation_metadata(self) -> Sequence[tuple[str, str | bytes]]:
        return self._metadata


def gateway() -> Gateway:
    return Gateway(cast(RegistryClient, Source()), probe_health=False)


async def test_the_worker_hears_the_caller_s_metadata_and_this_gateway_s_own() -> None:
    hop = gateway()
    begin_call("/modelwire.v1.ModelWorker/Generate", "the-id")
    sent = hop._metadata(
        Incoming(
            ("user-agent", "grpc-go"),
            ("x-custom", "kept"),
            (VIA_KEY, "g1,g2"),
            (REQUEST_ID_KEY, "the-caller-s"),
            (CALLER_KEY, "forged"),
            (TENANT_KEY, "forged"),
            ("authorization", "Bearer caller"),
            ("x-bin", b"\x00"),
        )
    )
    assert sent == (
        ("x-custom", "kept"),
        ("x-bin", b"\x00"),
        (VIA_KEY, f"g1,g2,{hop._id}"),
        (REQUEST_ID_KEY, "the-id"),
    )


async def test_a_call_that_came_back_or_went_too_far_stops() -> None:
    hop = gateway()
    with pytest.raises(RoutingLoop):
        hop._metadata(Incoming((VIA_KEY, f"g1,{hop._id}")))
    with pytest.raises(RoutingLoop):
        hop._metadata(Incoming(*[(VIA_KEY, f"g{i}") for i in range(8)]))
    with pytest.raises(InvalidRequest, match="metadata x-custom"):
        hop._metadata(Incoming(("x-custom", "caf\u00e9")))

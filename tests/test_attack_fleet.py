"""The fleet's doors tried as a hostile caller would: a request body in an unusual but valid
protobuf encoding must name, at the gateway, the model the worker will run (the gateway routes on it
and holds the caller's `models` allow-list to it)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from google.protobuf.message import DecodeError

from fake_upstream import fake_upstream
from modelwire.core.errors import InvalidRequest
from modelwire.gateway.router import model_field
from modelwire.v1 import worker_pb2 as pb
from test_gateway_trust import ALICE_TOKEN, GATEWAY_TOKEN, answer_embeddings, guarded_fleet


def field_1(model: bytes, key: bytes = b"\x0a") -> bytes:
    """Field 1 (`model`) as a length-delimited field, its key given (0x0a, or a longer varint)."""
    return key + bytes([len(model)]) + model


ASKED = pb.ModelRequest(
    messages=[pb.ModelMessage(role=pb.ROLE_USER, content="hi")]
).SerializeToString()

# Bodies a protobuf parser reads as naming `echo-expensive`, led by an allowed `echo`.
TRICKS = {
    "field 1 twice": field_1(b"echo") + field_1(b"echo-expensive") + ASKED,
    "field 1 again after the rest": field_1(b"echo") + ASKED + field_1(b"echo-expensive"),
    "field 1 again, its key a two-byte varint": field_1(b"echo")
    + ASKED
    + field_1(b"echo-expensive", b"\x8a\x00"),
    "field 1 as a varint, then twice": b"\x08\x01"
    + field_1(b"echo")
    + field_1(b"echo-expensive")
    + ASKED,
}


@pytest.mark.parametrize("body", TRICKS.values(), ids=TRICKS.keys())
def test_model_field_reads_the_model_protobuf_reads(body: bytes) -> None:
    assert pb.ModelRequest.FromString(body).model == "echo-expensive"
    assert model_field(body) == "echo-expensive"


def test_model_field_refuses_what_protobuf_refuses() -> None:
    for body in (field_1(b"\xff\xfe"), field_1(b"echo") + b"\x12\x05ab", b"\x0b"):
        with pytest.raises(DecodeError):
            pb.ModelRequest.FromString(body)
        with pytest.raises(InvalidRequest, match="not a valid protobuf message"):
            model_field(body)
    # The worker reads an empty model from a body whose last field 1 is empty.
    with pytest.raises(InvalidRequest, match="model: must name a served model"):
        model_field(field_1(b"echo") + field_1(b""))


async def test_an_allow_list_holds_against_a_repeated_model_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Alice may call `echo` and `emb`: a body naming `echo` first and `echo-expensive` last (which
    the worker reads) is PERMISSION_DENIED at the gateway for every model call, never run."""
    monkeypatch.setenv("TRUST_GATEWAY_TOKEN", GATEWAY_TOKEN)
    embed = pb.EmbedRequest(inputs=["hi"]).SerializeToString()
    count = pb.CountTokenRequest(prompt="hi").SerializeToString()
    async with fake_upstream() as upstream, guarded_fleet(tmp_path, upstream) as gateway:
        upstream.default = answer_embeddings
        async with grpc.aio.insecure_channel(gateway.address) as channel:
            metadata = (("authorization", f"Bearer {ALICE_TOKEN}"),)

            def unary(method: str) -> Callable[[bytes], Awaitable[bytes]]:
                call = channel.unary_unary(f"/modelwire.v1.ModelWorker/{method}")
                return lambda body: call(body, metadata=metadata, timeout=10)

            async def stream(body: bytes) -> bytes:
                call = channel.unary_stream("/modelwire.v1.ModelWorker/GenerateStream")
                return b"".join(
                    [chunk async for chunk in call(body, metadata=metadata, timeout=10)]
                )

            calls = {
                "Generate": (unary("Generate"), TRICKS["field 1 twice"], "echo-expensive"),
                "GenerateStream": (
                    stream,
                    TRICKS["field 1 again after the rest"],
                    "echo-expensive",
                ),
                "CountToken": (
                    unary("CountToken"),
                    field_1(b"echo") + count + field_1(b"echo-expensive"),
                    "echo-expensive",
                ),
                "Embed": (
                    unary("Embed"),
                    field_1(b"emb") + embed + field_1(b"emb-expensive"),
                    "emb-expensive",
                ),
            }
            for method, (call, body, model) in calls.items():
                with pytest.raises(grpc.aio.AioRpcError) as raised:
                    await call(body)
                assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED, (
                    method,
                    raised.value,
                )
                assert raised.value.details() == f"token 'alice' may not use model '{model}'", (
                    method
                )
            # The models alice may call still pass, however the body repeats them.
            answer = await unary("Generate")(field_1(b"echo-expensive") + ASKED + field_1(b"echo"))
            assert pb.ModelOutput.FromString(answer).text == "cheap "
        assert upstream.exchanges == [], "a refused Embed reached the upstream"


def test_model_field_bounds_the_model() -> None:
    with pytest.raises(InvalidRequest, match="model: at most 1024 bytes"):
        model_field(pb.CountTokenRequest(model="m" * 1025).SerializeToString())


SIGHUP_AT_IMPORT = """
import signal, sys
sys.argv = ["modelwire", *sys.argv[1:]]
import modelwire.app.cli as cli
print(signal.getsignal(signal.SIGHUP) == signal.SIG_IGN)
try:
    cli.main()
except SystemExit:
    pass
print(signal.getsignal(signal.SIGHUP) == signal.SIG_IGN)
"""


@pytest.mark.parametrize(
    ("argv", "after"),
    [
        (["serve", "--help"], True),
        (["--log-level", "INFO", "gateway", "--help"], True),
        (["models", "--address", "127.0.0.1:1", "--timeout", "0.1"], False),
    ],
)
def test_sighup_is_ignored_from_the_start_of_the_command_line(argv: list[str], after: bool) -> None:
    """The command line's imports take a second or more before a server's loop handles SIGHUP (a
    reload): a SIGHUP then ended the process at once, which a reload sent to a starting process
    must not. Ignored from the first line of the command line on; a client command gets back what
    it inherited (the default here)."""
    import signal
    import subprocess
    import sys

    # The child inherits SIGHUP's default whatever this process has (make or CI may ignore it).
    ran = subprocess.run(
        [sys.executable, "-c", SIGHUP_AT_IMPORT, *argv],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL),
    )
    lines = ran.stdout.split()
    assert lines[0] == "True", ran
    assert lines[-1] == str(after), ran


async def test_a_port_taken_on_one_of_a_names_addresses_stops_the_start() -> None:
    """`host = "localhost"` is 127.0.0.1 and ::1: gRPC listens on whichever it can, so with the
    port taken on one the process served on the other, and callers of that one reached whoever
    holds the port. It stops, saying the port is in use."""
    import socket

    from modelwire.controller.memory import MemoryRegistry
    from modelwire.controller.server import ControllerServer
    from modelwire.core.settings import ServerConfig
    from modelwire.rpc.server import StartupFailure

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(StartupFailure) as raised:
            ControllerServer(MemoryRegistry(30), ServerConfig(host="localhost", port=port))
    assert f"port {port} is already in use" in str(raised.value), raised.value

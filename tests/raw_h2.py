"""One gRPC call over bare HTTP/2, for headers grpcio's client refuses to send (control characters,
bytes above 0x7F) but other HTTP/2 stacks do: what a hostile or foreign client can put on the
wire."""

from __future__ import annotations

import socket
from collections.abc import Sequence

import h2.config
import h2.connection
import h2.events


def unary_call(
    address: str, method: str, request: bytes, headers: Sequence[tuple[bytes, bytes]] = ()
) -> tuple[bytes, dict[str, bytes]]:
    """The response message (empty if none) and the call's raw trailers (or the headers of a
    trailers-only answer)."""
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        config = h2.config.H2Configuration(
            client_side=True,
            header_encoding=None,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        connection = h2.connection.H2Connection(config)
        connection.initiate_connection()
        stream = connection.get_next_available_stream_id()
        connection.send_headers(
            stream,
            [
                (b":method", b"POST"),
                (b":scheme", b"http"),
                (b":path", method.encode()),
                (b":authority", address.encode()),
                (b"content-type", b"application/grpc"),
                (b"te", b"trailers"),
                *headers,
            ],
        )
        connection.send_data(
            stream, b"\x00" + len(request).to_bytes(4, "big") + request, end_stream=True
        )
        sock.sendall(connection.data_to_send())
        body = b""
        answered: dict[str, bytes] = {}
        trailers: dict[str, bytes] = {}
        ended = False
        while not ended:
            data = sock.recv(65536)
            assert data, "the server closed the connection"
            for event in connection.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    answered = {bytes(k).decode(): bytes(v) for k, v in event.headers}
                elif isinstance(event, h2.events.DataReceived):
                    body += event.data
                    connection.acknowledge_received_data(event.flow_controlled_length, stream)
                elif isinstance(event, h2.events.TrailersReceived):
                    trailers = {bytes(k).decode(): bytes(v) for k, v in event.headers}
                elif isinstance(event, h2.events.StreamEnded):
                    ended = True
            sock.sendall(connection.data_to_send())
    return body[5:], trailers or answered

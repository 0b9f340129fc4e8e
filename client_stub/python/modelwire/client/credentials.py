"""What a client sends to a secured worker or gateway: TLS credentials and call metadata."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import grpc

REQUEST_ID_KEY = "x-request-id"


def tls_credentials(
    ca_file: str | Path | None = None,
    cert_file: str | Path | None = None,
    key_file: str | Path | None = None,
) -> grpc.ChannelCredentials:
    """TLS towards the server (`ca_file` verifies it; the system's roots when None), mTLS with
    `cert_file` and `key_file`."""

    def read(path: str | Path | None) -> bytes | None:
        return Path(path).read_bytes() if path is not None else None

    return grpc.ssl_channel_credentials(read(ca_file), read(key_file), read(cert_file))


def call_metadata(
    token: str | None, metadata: Sequence[tuple[str, str]] = ()
) -> tuple[tuple[str, str], ...]:
    """Metadata for every call: the extra pairs (e.g. `x-request-id`) and `authorization: Bearer`.
    The token travels as metadata, so it works on plaintext channels to loopback too."""
    extra = tuple((key.lower(), value) for key, value in metadata if key.lower() != "authorization")
    return extra + ((("authorization", f"Bearer {token}"),) if token else ())

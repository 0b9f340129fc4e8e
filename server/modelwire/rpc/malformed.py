"""A request body that does not decode is INVALID_ARGUMENT, as Go and Java servers answer it;
grpcio's own answer is UNKNOWN, which tells the caller nothing. The call pipeline
(rpc/call_pipeline.py) installs the tolerant deserializer and refuses what it could not decode."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import grpc

from modelwire.core.errors import ModelwireError
from modelwire.rpc.status import refuse as refuse_with


class MalformedRequest(ModelwireError):
    """The body did not decode. Raised only here, before a method runs, so never an error kind of
    the call's record (core/errors.py lists those)."""

    code: ClassVar[str] = "INVALID_ARGUMENT"

    def __init__(self) -> None:
        super().__init__(
            "the request body is not a valid protobuf message of this method's request type"
        )


class Undecodable:
    """What the tolerant deserializer hands the behavior instead of a request."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def tolerant(deserialize: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def decode(raw: bytes) -> Any:
        try:
            return deserialize(raw)
        except Exception as error:  # any decoding failure is the caller's malformed body
            return Undecodable(error)

    return decode


async def refuse(context: grpc.aio.ServicerContext) -> None:
    await refuse_with(context, MalformedRequest())

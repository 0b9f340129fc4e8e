"""A request body that does not decode is INVALID_ARGUMENT, as Go and Java servers answer it;
grpcio's own answer is UNKNOWN, which tells the caller nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from modelwire.observe.handlers import RewrappingInterceptor, responses


class _Undecodable:
    def __init__(self, error: Exception) -> None:
        self.error = error


def _tolerant(deserialize: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def decode(raw: bytes) -> Any:
        try:
            return deserialize(raw)
        except Exception as error:  # any decoding failure is the caller's malformed body
            return _Undecodable(error)

    return decode


async def _refuse(context: grpc.aio.ServicerContext) -> None:
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the request body is not a valid protobuf message of this method's request type")


def _guard(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    deserialize = handler.request_deserializer
    if deserialize is None or handler.request_streaming:
        return handler  # raw bytes (the gateway reads them itself), or client streams (none here)
    if handler.unary_unary is not None:
        unary = handler.unary_unary

        async def checked_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if isinstance(request, _Undecodable):
                await _refuse(context)
            return await unary(request, context)

        return grpc.unary_unary_rpc_method_handler(checked_unary, _tolerant(deserialize), handler.response_serializer)
    stream = handler.unary_stream

    async def checked_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        if isinstance(request, _Undecodable):
            await _refuse(context)
        async for response in responses(stream(request, context)):
            yield response

    return grpc.unary_stream_rpc_method_handler(checked_stream, _tolerant(deserialize), handler.response_serializer)


class MalformedRequests(RewrappingInterceptor):
    """Innermost, so the other interceptors keep the tolerant deserializer when they rewrap."""

    def __init__(self) -> None:
        super().__init__(lambda method, handler: _guard(handler))

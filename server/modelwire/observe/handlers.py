"""Rewrapping a gRPC method handler's behavior, the one mechanism every interceptor here uses."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import Any

import grpc

UnaryBehavior = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
StreamBehavior = Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]


async def responses(result: Any) -> AsyncIterator[Any]:
    """A server-streaming behavior's messages, whether it yields them or writes them itself
    (grpc-health's Watch awaits `context.write`; such messages pass without being seen here).

    When gRPC closes the outer generator (a cancel while it waits at a yield), the inner one is
    closed at once, not when it is garbage-collected: its cleanup (an admission slot, a thread to
    wait for) must run before the call is over."""
    if inspect.isawaitable(result):
        await result
        return
    async with aclosing(result) as messages:
        async for message in messages:
            yield message


def rewrap(
    handler: grpc.RpcMethodHandler,
    unary: Callable[[UnaryBehavior], UnaryBehavior],
    server_stream: Callable[[StreamBehavior], StreamBehavior],
) -> grpc.RpcMethodHandler:
    """A handler of the same kind whose behavior is wrapped; client-streaming kinds pass unchanged."""
    if handler is None:
        return None
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            unary(handler.unary_unary), handler.request_deserializer, handler.response_serializer
        )
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            server_stream(handler.unary_stream), handler.request_deserializer, handler.response_serializer
        )
    return handler


class HandlerCache:
    """Wrapped handlers built once per method rather than once per call: building them is work that
    every call would otherwise pay. A handler that changes (a re-registered service) is rewrapped."""

    def __init__(self, build: Callable[[str, grpc.RpcMethodHandler], grpc.RpcMethodHandler]) -> None:
        self._build = build
        self._by_method: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def get(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        cached = self._by_method.get(method)
        if cached is None or cached[0] is not handler:
            cached = (handler, self._build(method, handler))
            self._by_method[method] = cached
        return cached[1]


class RewrappingInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """A server interceptor that wraps the handler of each method it `applies` to once, with
    `build`, and hands every call the cached wrapper."""

    def __init__(self, build: Callable[[str, grpc.RpcMethodHandler], grpc.RpcMethodHandler]) -> None:
        self._handlers = HandlerCache(build)

    def applies(self, method: str) -> bool:
        return True

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or not self.applies(details.method):
            return handler
        return self._handlers.get(details.method, handler)

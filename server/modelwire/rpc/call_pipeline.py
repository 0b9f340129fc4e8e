"""The one server interceptor of every modelwire server. Each method's handler is wrapped once, into
one behavior that, per call and in this order: opens the call's record (observe/call_observer.py),
checks the bearer token (rpc/auth.py), counts the call for the load reports (worker/orca.py, on a
worker), refuses an undecodable body (rpc/malformed.py), runs the method, sets the load report
once it answered (a failure's status gets one made when it fails: rpc/status.py), and logs and
counts the call however it ended.

One wrapper rather than one interceptor per concern: grpc.aio awaits every interceptor for every
call, and every wrapped behavior adds an await per call and an async-generator hop per streamed
message, which grpc.aio's write path makes dearer than their own CPU (docs/benchmarks.md).
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from functools import partial
from typing import Any, Protocol

import grpc

from modelwire.observe.call_observer import PID, CallObserver
from modelwire.observe.call_record import CallRecord
from modelwire.rpc import malformed
from modelwire.rpc.auth import BearerAuth, forged_identity, is_open_by_nature
from modelwire.rpc.status import refuse
from modelwire.rpc.wire import (
    CALLER_KEY,
    PID_KEY,
    REQUEST_ID_KEY,
    TENANT_KEY,
    Metadata,
    attempts_trailer,
)

UnaryBehavior = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
StreamBehavior = Callable[[Any, grpc.aio.ServicerContext], AsyncGenerator[Any, None]]


class CallTrailers(Protocol):
    """Trailers a server adds to the calls of the methods it `applies` to (the worker's ORCA
    report): `started` is told of each call that passed its checks, `trailers` makes them."""

    def applies(self, method: str) -> bool: ...

    def started(self, request: Any) -> None: ...

    def trailers(self, request: Any) -> Metadata: ...


class CallPipeline(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(
        self,
        observer: CallObserver,
        auth: BearerAuth | None,
        trailers: CallTrailers | None,
    ) -> None:
        self._observer = observer
        self._auth = auth
        self._trailers = trailers
        self._by_method: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return None
        # Built once per method, not per call; a handler that changes (a re-registered service) is
        # rewrapped.
        cached = self._by_method.get(details.method)
        if cached is None or cached[0] is not handler:
            cached = self._by_method[details.method] = (
                handler,
                self._wrap(details.method, handler),
            )
        return cached[1]

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        auth = self._auth if self._auth is not None and self._auth.protects(method) else None
        # Without [auth] no one can relay an identity; an open method ignores one.
        refuse_claims = self._auth is None and not is_open_by_nature(method)
        if handler.request_streaming:  # reflection: checked, not observed
            return handler if auth is None else _checked_request_stream(handler, method, auth)
        trailers = (
            self._trailers
            if self._trailers is not None and self._trailers.applies(method)
            else None
        )
        deserialize = handler.request_deserializer
        # Raw bytes (the gateway reads them itself) need no tolerant decoding.
        decode = malformed.tolerant(deserialize) if deserialize is not None else None
        if handler.unary_unary is not None:
            unary = self._unary(method, handler.unary_unary, auth, trailers, refuse_claims)
            return grpc.unary_unary_rpc_method_handler(unary, decode, handler.response_serializer)
        stream = self._stream(method, handler.unary_stream, auth, trailers, refuse_claims)
        return grpc.unary_stream_rpc_method_handler(stream, decode, handler.response_serializer)

    def _unary(
        self,
        method: str,
        behavior: UnaryBehavior,
        auth: BearerAuth | None,
        trailers: CallTrailers | None,
        refuse_claims: bool,
    ) -> UnaryBehavior:
        observer = self._observer

        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            record, named, claimed = _begin(observer, method, request, context)
            try:
                if auth is not None or claimed or isinstance(request, malformed.Undecodable):
                    await _check(
                        method, request, context, named, auth, trailers, refuse_claims and claimed
                    )
                if trailers is not None:
                    trailers.started(request)
                    record.server_trailers = partial(trailers.trailers, request)
                response = await behavior(request, context)
                if trailers is not None:
                    context.set_trailing_metadata(
                        named + trailers.trailers(request) + attempts_trailer(record.attempts)
                    )
                observer.answered(record, response)
                return response
            except BaseException as error:
                observer.failed(record, error, context)
                raise
            finally:
                observer.finished(record, streamed=False)

        return call

    def _stream(
        self,
        method: str,
        behavior: StreamBehavior,
        auth: BearerAuth | None,
        trailers: CallTrailers | None,
        refuse_claims: bool,
    ) -> StreamBehavior:
        observer = self._observer

        async def call(
            request: Any, context: grpc.aio.ServicerContext
        ) -> AsyncGenerator[Any, None]:
            record, named, claimed = _begin(observer, method, request, context)
            try:
                if auth is not None or claimed or isinstance(request, malformed.Undecodable):
                    await _check(
                        method, request, context, named, auth, trailers, refuse_claims and claimed
                    )
                if trailers is not None:
                    trailers.started(request)
                    record.server_trailers = partial(trailers.trailers, request)
                result = behavior(request, context)
                if inspect.isawaitable(result):
                    # It writes its messages itself (grpc-health's Watch awaits `context.write`).
                    await result
                else:
                    # Closed at once when gRPC closes this generator (a cancel at a yield), not when
                    # collected: its cleanup (an admission slot, a thread to wait for) must run
                    # first.
                    async with aclosing(result) as messages:
                        async for message in messages:
                            observer.streamed(record, message)
                            yield message
                if trailers is not None:
                    context.set_trailing_metadata(
                        named + trailers.trailers(request) + attempts_trailer(record.attempts)
                    )
            except BaseException as error:
                observer.failed(record, error, context)
                raise
            finally:
                observer.finished(record, streamed=True)

        return call


def _begin(
    observer: CallObserver, method: str, request: Any, context: grpc.aio.ServicerContext
) -> tuple[CallRecord, Metadata, bool]:
    """The call's record, the trailers that name it (its request id, this process), set at once
    so a refusal carries them too, and whether its metadata relays an identity (rpc/auth.py):
    the metadata read once for both."""
    request_id = None
    claimed = False
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_KEY:
            if request_id is None:
                request_id = str(value)
        elif key == CALLER_KEY or key == TENANT_KEY:
            claimed = True
    record = observer.begin(method, request, request_id)
    named: Metadata = ((REQUEST_ID_KEY, record.request_id), (PID_KEY, PID))
    context.set_trailing_metadata(named)
    return record, named, claimed


async def _check(
    method: str,
    request: Any,
    context: grpc.aio.ServicerContext,
    named: Metadata,
    auth: BearerAuth | None,
    trailers: CallTrailers | None,
    forged: bool,
) -> None:
    """What a call must pass before its method, where there is something to check: the token
    (or, where no one authenticates, the refusal of a relayed identity: `forged`), then the
    refusal of an undecodable body, which carries the load report."""
    if auth is not None:
        await auth.check(method, request, context)
    elif forged:
        await refuse(context, forged_identity(None))
    if isinstance(request, malformed.Undecodable):
        if trailers is not None:
            trailers.started(request)
            context.set_trailing_metadata(named + trailers.trailers(request))
        await malformed.refuse(context)


def _checked_request_stream(
    handler: grpc.RpcMethodHandler, method: str, auth: BearerAuth
) -> grpc.RpcMethodHandler:
    """A client-streaming handler behind the token check."""
    if handler.stream_unary is not None:
        inner_unary = handler.stream_unary

        async def unary(requests: Any, context: grpc.aio.ServicerContext) -> Any:
            await auth.check(method, None, context)
            return await inner_unary(requests, context)

        return grpc.stream_unary_rpc_method_handler(
            unary, handler.request_deserializer, handler.response_serializer
        )
    inner_stream = handler.stream_stream

    async def stream(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await auth.check(method, None, context)
        async with aclosing(inner_stream(requests, context)) as messages:
            async for message in messages:
                yield message

    return grpc.stream_stream_rpc_method_handler(
        stream, handler.request_deserializer, handler.response_serializer
    )

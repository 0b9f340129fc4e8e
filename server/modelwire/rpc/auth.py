"""Static bearer tokens in `authorization` metadata, compared in constant time. Each token has a
name (the caller's identity: `caller_identity()` during the call), permissions (calling models,
registering instances, reading the fleet; each method needs one) and an optional model allow-list.
Health and reflection stay open unless configured otherwise."""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from typing import Any

import grpc

from modelwire.core.settings import AuthConfig, Permission, TokenGrant
from modelwire.observe.handlers import StreamBehavior, UnaryBehavior, responses, rewrap

HEALTH_PREFIX = "/grpc.health.v1.Health/"
REFLECTION_PREFIXES = ("/grpc.reflection.v1alpha.ServerReflection/", "/grpc.reflection.v1.ServerReflection/")
_UNAUTHENTICATED = "missing or invalid bearer token: send metadata `authorization: Bearer <token>`"

_identity: ContextVar[str | None] = ContextVar("modelwire_caller", default=None)


def caller_identity() -> str | None:
    """The name of the token the current call authenticated with; None without [auth]."""
    return _identity.get()


def _refusal(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` that refuses every call."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, message)

    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(refuse, handler.request_deserializer, handler.response_serializer)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(refuse, handler.request_deserializer, handler.response_serializer)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(refuse, handler.request_deserializer, handler.response_serializer)
    return grpc.stream_stream_rpc_method_handler(refuse, handler.request_deserializer, handler.response_serializer)


class BearerAuth(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, config: AuthConfig, permission_of: Callable[[str], Permission | None]) -> None:
        """`permission_of(method)` is what a method needs (None: any valid token)."""
        self._config = config
        self._permission_of = permission_of
        self._grants = [(grant, grant.token.encode()) for grant in config.grants]

    def _protected(self, method: str) -> bool:
        if method.startswith(HEALTH_PREFIX):
            return self._config.protect_health
        if method.startswith(REFLECTION_PREFIXES):
            return self._config.protect_reflection
        return True

    def _grant(self, details: grpc.HandlerCallDetails) -> TokenGrant | None:
        presented = b""
        for key, value in details.invocation_metadata or ():
            if key == "authorization" and isinstance(value, str) and value[:7].lower() == "bearer ":
                presented = value[7:].strip().encode()
        found = None
        for grant, token in self._grants:  # every token is compared, so timing reveals nothing
            if hmac.compare_digest(presented, token) and presented:
                found = grant
        return found

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or not self._protected(details.method):
            return handler
        grant = self._grant(details)
        if grant is None:
            return _refusal(handler, grpc.StatusCode.UNAUTHENTICATED, _UNAUTHENTICATED)
        needed = self._permission_of(details.method)
        if needed is not None and needed not in grant.permissions:
            return _refusal(
                handler, grpc.StatusCode.PERMISSION_DENIED,
                f"token {grant.name!r} lacks the {needed!r} permission that {details.method} needs",
            )
        # grpc.aio runs the handler in the task that ran the interceptors: the identity reaches it.
        _identity.set(grant.name)
        if grant.models is None:
            return handler
        allowed = grant.models
        name = grant.name

        async def check(request: Any, context: grpc.aio.ServicerContext) -> None:
            model = getattr(request, "model", "")
            if model and model not in allowed:
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"token {name!r} may not use model {model!r}")

        def unary(behavior: UnaryBehavior) -> UnaryBehavior:
            async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
                await check(request, context)
                return await behavior(request, context)

            return guarded

        def server_stream(behavior: StreamBehavior) -> StreamBehavior:
            async def guarded(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                await check(request, context)
                async for response in responses(behavior(request, context)):
                    yield response

            return guarded

        return rewrap(handler, unary=unary, server_stream=server_stream)

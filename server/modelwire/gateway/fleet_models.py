"""The HTTP facade's ModelBackend on a gateway: each call goes to the fleet through the gateway's
own forwarding (gateway/server.py), so an HTTP call is routed, retried, held to the caller's
`models` allow-list and relayed to the worker exactly as a gRPC call is. The call travels in the
contract's messages (worker/convert.py translates); the worker's failure comes back as the typed
error it was sent for (rpc/status.py, `received_error`), which the facade answers as it answers
its own."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import NoReturn

import grpc

from modelwire.core.types import (
    Embeddings,
    EmbedRequest,
    ModelMessage,
    ModelMetadata,
    ModelOutput,
    ModelRequest,
    Started,
    TokenCount,
)
from modelwire.gateway.router import rate_limits
from modelwire.gateway.server import (
    COUNT_TOKEN,
    EMBED,
    GENERATE,
    GENERATE_STREAM,
    Gateway,
)
from modelwire.observe.call_record import note_answered_by, note_attempt
from modelwire.rpc.auth import caller_token
from modelwire.rpc.status import received_error, received_status
from modelwire.rpc.wire import ATTEMPTS_TRAILER, Metadata
from modelwire.v1 import worker_pb2 as pb
from modelwire.worker.convert import (
    count_request_to_pb,
    embed_request_to_pb,
    embeddings_from_pb,
    metadata_from_pb,
    output_from_pb,
    request_to_pb,
    token_count_from_pb,
)

logger = logging.getLogger(__name__)


class _HttpCall:
    """An HTTP call as the gateway's forwarding sees a gRPC call (gateway/server.py, CallContext):
    no deadline; the caller's token as its `authorization`; the worker's rate limits, once its work
    began, to `started`; and the worker's failure raised as a typed error where gRPC would end the
    call with the worker's status. The request id and the caller's identity go to the worker as
    they do for a gRPC call: from the call's record and its authenticated identity."""

    def __init__(self, started: Started | None) -> None:
        self._started = started

    def time_remaining(self) -> None:
        return None

    def invocation_metadata(self) -> Metadata:
        # The grant the facade's key check set for this call (rpc/auth.py, BearerAuth.admit): its
        # token is what `[gateway.workers] forward_authorization` passes on.
        token = caller_token()
        return (("authorization", f"Bearer {token}"),) if token is not None else ()

    async def send_initial_metadata(self, initial_metadata: Metadata) -> None:
        """Once: the work began (a call answers at most once, and `started` prepares its answer)."""
        started, self._started = self._started, None
        if started is not None:
            await started(
                tuple((k, v) for k, v in rate_limits(initial_metadata) if isinstance(v, str))
            )

    def set_trailing_metadata(self, trailing_metadata: Metadata) -> None:
        """An HTTP answer has no trailers: of the worker's, only its attempts are kept (a unary
        answer's headers and the access line show them)."""
        _note_attempts(trailing_metadata)

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: Metadata = ()
    ) -> NoReturn:
        _note_attempts(trailing_metadata)
        raise received_error(code, details, received_status(trailing_metadata))


def _note_attempts(trailing_metadata: Metadata) -> None:
    for key, value in trailing_metadata:
        if key == ATTEMPTS_TRAILER and isinstance(value, str):
            for attempt in value.split(","):
                note_attempt(attempt)


class FleetModels:
    """The fleet's models, for the HTTP facade of `gateway`. `tenant` is not sent: the worker hears
    who the call is for as the gateway relays it for every call (its authenticated identity)."""

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway

    async def generate(
        self, request: ModelRequest, started: Started, tenant: str | None
    ) -> ModelOutput:
        call = _HttpCall(started)
        raw = await self._gateway.forward_unary(
            GENERATE, request_to_pb(request).SerializeToString(), call
        )
        await call.send_initial_metadata(())  # a worker without [quota] sends no rate limits
        output = pb.ModelOutput.FromString(raw)
        note_answered_by(output.model)  # a route's member
        return output_from_pb(output)

    async def generate_stream(
        self, request: ModelRequest, started: Started, tenant: str | None
    ) -> AsyncGenerator[ModelOutput, None]:
        """Closing it cancels the worker's call at once."""
        call = _HttpCall(started)
        raw = request_to_pb(request).SerializeToString()
        answered = False
        async with aclosing(self._gateway.forward_stream(GENERATE_STREAM, raw, call)) as chunks:
            async for chunk in chunks:
                output = pb.ModelOutput.FromString(chunk)
                if not answered:
                    answered = True
                    note_answered_by(output.model)  # a route's member
                yield output_from_pb(output)
        await call.send_initial_metadata(())  # a stream that ended without a chunk began too

    async def embed(
        self, request: EmbedRequest, started: Started, tenant: str | None
    ) -> Embeddings:
        call = _HttpCall(started)
        raw = await self._gateway.forward_unary(
            EMBED, embed_request_to_pb(request).SerializeToString(), call
        )
        await call.send_initial_metadata(())
        embeddings = pb.EmbedResponse.FromString(raw)
        note_answered_by(embeddings.model)  # a route's member
        return embeddings_from_pb(embeddings)

    async def count_token(self, model: str, messages: tuple[ModelMessage, ...]) -> TokenCount:
        raw = await self._gateway.forward_unary(
            COUNT_TOKEN, count_request_to_pb(model, messages).SerializeToString(), _HttpCall(None)
        )
        return token_count_from_pb(pb.CountTokenResponse.FromString(raw))

    async def list_models(self) -> list[ModelMetadata]:
        """Every model of the fleet the caller's token may use; a description no configuration
        could hold (a worker's garbage) is left out, as the gateway leaves out garbage."""
        models = []
        for described in await self._gateway.list_models(_HttpCall(None)):
            try:
                models.append(metadata_from_pb(described))
            except ValueError as garbage:
                logger.warning(
                    "a worker described model %r as no model is: %s", described.model, garbage
                )
        return models

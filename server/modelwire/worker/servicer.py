"""The ModelWorker gRPC edge: translate, bound by the caller's deadline, map errors to statuses."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing

import grpc

from modelwire.core.coalesce import coalesce_outputs, coalesced
from modelwire.core.types import ResponseHeaders, Started
from modelwire.observe.call_observer import PID
from modelwire.observe.call_record import current_call
from modelwire.rpc.auth import call_identity, model_refusal
from modelwire.rpc.status import CallScope
from modelwire.rpc.wire import PID_KEY, VIA_KEY
from modelwire.v1 import worker_pb2 as pb
from modelwire.v1 import worker_pb2_grpc as pb_grpc
from modelwire.worker import convert
from modelwire.worker.service import WorkerService


def _headers_when_started(context: grpc.aio.ServicerContext) -> Started:
    """Sends the response headers once the work of a generation or an embedding begins, when
    there is something to say: the call's rate limits (quota/limiter.py), and for a call
    forwarded by a gateway this process's pid, so a gateway that then loses the call knows it may
    have run (and been billed) and does not replay it elsewhere. Otherwise gRPC sends them with
    the first message (an early frame costs 0.13–0.21 CPU-ms a call, measured)."""
    forwarded = any(key == VIA_KEY for key, _ in context.invocation_metadata() or ())

    async def started(headers: ResponseHeaders) -> None:
        if forwarded:
            await context.send_initial_metadata(((PID_KEY, PID), *headers))
        elif headers:
            await context.send_initial_metadata(headers)

    return started


def _answered_by(asked: str) -> str:
    """The model that answers (a route's member), which every answer names."""
    record = current_call()
    return record.answered_by if record is not None and record.answered_by else asked


def _tenant() -> str | None:
    """Whose quota the call uses: its authenticated (or relayed) tenant; None without [auth]."""
    identity = call_identity()
    return identity.tenant if identity is not None else None


class ModelWorkerServicer(pb_grpc.ModelWorkerServicer):
    def __init__(self, service: WorkerService) -> None:
        self._service = service

    async def Generate(
        self, request: pb.ModelRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelOutput:
        async with CallScope(context):
            output = await self._service.generate(
                convert.request_from_pb(request, self._service.limits),
                _headers_when_started(context),
                _tenant(),
            )
            return convert.output_to_pb(output, _answered_by(request.model))

    async def GenerateStream(
        self, request: pb.ModelRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ModelOutput]:
        async with (
            CallScope(context),
            aclosing(
                self._service.generate_stream(
                    convert.request_from_pb(request, self._service.limits),
                    _headers_when_started(context),
                    _tenant(),
                )
            ) as chunks,
            # Deltas waiting when gRPC is ready for the next message go as one (docs/api.md).
            aclosing(coalesced(chunks, coalesce_outputs)) as messages,
        ):
            model = None
            async for chunk in messages:
                if model is None:  # a route's member commits before its first message
                    model = _answered_by(request.model)
                yield convert.output_to_pb(chunk, model)

    async def CountToken(
        self, request: pb.CountTokenRequest, context: grpc.aio.ServicerContext
    ) -> pb.CountTokenResponse:
        async with CallScope(context):
            count = await self._service.count_token(
                request.model, convert.count_input_from_pb(request, self._service.limits)
            )
            return convert.token_count_to_pb(count)

    async def Embed(
        self, request: pb.EmbedRequest, context: grpc.aio.ServicerContext
    ) -> pb.EmbedResponse:
        async with CallScope(context):
            embeddings = await self._service.embed(
                convert.embed_request_from_pb(request), _headers_when_started(context), _tenant()
            )
            return convert.embeddings_to_pb(embeddings, _answered_by(request.model))

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        """The models the caller's token may use."""
        models = self._service.list_models()
        return pb.ListModelsResponse(
            models=[convert.metadata_to_pb(m) for m in models if model_refusal(m.model) is None]
        )

"""The ModelWorker gRPC edge: translate, bound by the caller's deadline, map errors to statuses."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing
from types import TracebackType

import grpc

from modelwire.v1 import worker_pb2 as pb
from modelwire.v1 import worker_pb2_grpc as pb_grpc
from modelwire.worker import convert
from modelwire.worker.service import WorkerService
from modelwire.observe.call_record import note_error_kind
from modelwire.rpc.status import error_kind, to_status


class CallScope:
    """The caller's remaining time bounds all work; a typed error leaves as its status.

    A class rather than @asynccontextmanager so the type checker knows it never swallows an
    exception: `__aexit__` returns None, aborting replaces the error with the status.
    """

    def __init__(self, context: grpc.aio.ServicerContext) -> None:
        self._context = context
        self._timeout = asyncio.timeout(context.time_remaining())

    async def __aenter__(self) -> None:
        await self._timeout.__aenter__()

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        try:
            await self._timeout.__aexit__(kind, error, traceback)
        except TimeoutError as expired:
            error = expired
        if isinstance(error, Exception) and not isinstance(error, grpc.aio.AbortError):
            note_error_kind(error_kind(error))
            status = to_status(error)
            # Keep what the interceptors already put in the trailer (request id) next to the details.
            trailer = tuple(self._context.trailing_metadata() or ()) + tuple(status.trailing_metadata)
            try:
                await self._context.abort(status.code, status.details, trailer)
            except grpc.aio.AbortError:
                raise
            except Exception:
                # The call already ended at the transport (its deadline passed the same instant,
                # the caller left): there is nobody to tell, and grpc refuses to send a status.
                raise asyncio.CancelledError from error


class ModelWorkerServicer(pb_grpc.ModelWorkerServicer):
    def __init__(self, service: WorkerService) -> None:
        self._service = service

    async def Generate(self, request: pb.ModelRequest, context: grpc.aio.ServicerContext) -> pb.ModelOutput:
        async with CallScope(context):
            output = await self._service.generate(convert.request_from_pb(request, self._service.limits))
            return convert.output_to_pb(output, request.model)

    async def GenerateStream(
        self, request: pb.ModelRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ModelOutput]:
        async with CallScope(context), aclosing(
            self._service.generate_stream(convert.request_from_pb(request, self._service.limits))
        ) as chunks:
            async for chunk in chunks:
                yield convert.output_to_pb(chunk, request.model)

    async def CountToken(
        self, request: pb.CountTokenRequest, context: grpc.aio.ServicerContext
    ) -> pb.CountTokenResponse:
        async with CallScope(context):
            count = await self._service.count_token(request.model, convert.count_input_from_pb(request, self._service.limits))
            return convert.token_count_to_pb(count)

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(models=[convert.metadata_to_pb(m) for m in self._service.list_models()])

"""`modelwire gateway`: the ModelWorker API, each call forwarded to an instance the router picks
(gateway/router.py). Requests and responses pass as bytes: only the model name is read."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from modelwire.fleet.health import WORKER_SERVICE
from modelwire.fleet.orca import INSTANCE_TRAILER, parse_report
from modelwire.fleet.registry import RegistryClient
from modelwire.rpc.channels import server_ping_options
from modelwire.gateway.router import (
    MAX_ATTEMPTS,
    LIST_MODELS_TIMEOUT_S,
    Metadata,
    NoInstance,
    Route,
    Router,
    forwarded_metadata,
    model_field,
    returned_trailers,
)
from modelwire.v1 import worker_pb2 as pb

logger = logging.getLogger(__name__)


class Gateway:
    """A ModelWorker server whose every call is forwarded to the fleet."""

    def __init__(self, source: RegistryClient, host: str = "127.0.0.1", port: int = 0, probe_health: bool = True) -> None:
        self.source = source
        self.host = host
        self.router = Router(source, probe_health)
        self.health = health.aio.HealthServicer()
        self.server = grpc.aio.server(options=server_ping_options())
        self.server.add_generic_rpc_handlers((self._handlers(),))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (WORKER_SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            self.server,
        )
        self.port = self.server.add_insecure_port(f"{host}:{port}")
        if self.port == 0:
            raise OSError(f"cannot listen on {host}:{port}")

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def start(self, sync_timeout_s: float = 5.0) -> None:
        """Starts serving once the first snapshot of instances arrived (or after `sync_timeout_s`)."""
        await self.router.start()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.router.synced.wait(), sync_timeout_s)
        await self.server.start()
        for name in ("", WORKER_SERVICE):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace_s: float | None = 5.0) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)
        await self.router.close()

    def _handlers(self) -> grpc.GenericRpcHandler:
        method = f"/{WORKER_SERVICE}/"
        return grpc.method_handlers_generic_handler(WORKER_SERVICE, {
            "Generate": grpc.unary_unary_rpc_method_handler(self._unary(method + "Generate")),
            "CountToken": grpc.unary_unary_rpc_method_handler(self._unary(method + "CountToken")),
            "GenerateStream": grpc.unary_stream_rpc_method_handler(self._stream(method + "GenerateStream")),
            "ListModels": grpc.unary_unary_rpc_method_handler(self._list_models),
        })

    async def _route(self, model: str, tried: set[str], context: grpc.aio.ServicerContext) -> Route:
        try:
            return self.router.pick(model, tried)
        except NoInstance as refused:
            await context.abort(refused.code, str(refused))
            raise

    def _unary(self, method: str) -> Callable[[bytes, grpc.aio.ServicerContext], Any]:
        async def forward(raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
            model = model_field(raw)
            metadata = forwarded_metadata(context.invocation_metadata())
            tried: set[str] = set()
            while True:
                route = await self._route(model, tried, context)
                tried.add(route.instance_id)
                route.open[model] = route.open.get(model, 0) + 1
                call = route.channel.unary_unary(method)(raw, timeout=context.time_remaining(), metadata=metadata)
                try:
                    response: bytes = await call
                    trailers = await call.trailing_metadata()
                    self._observe(route, model, trailers)
                    context.set_trailing_metadata(_with_instance(returned_trailers(trailers), route))
                    return response
                except grpc.aio.AioRpcError as error:
                    if self._retryable(error, tried, context):
                        logger.info("instance %s unavailable for %s (%s); trying another", route.instance_id,
                                    method, error.details())
                        continue
                    await context.abort(error.code(), error.details() or "",
                                        _with_instance(returned_trailers(error.trailing_metadata()), route))
                    raise
                finally:
                    if not call.done():
                        call.cancel()
                    route.open[model] -= 1

        return forward

    def _stream(self, method: str) -> Callable[[bytes, grpc.aio.ServicerContext], AsyncIterator[bytes]]:
        async def forward(raw: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
            model = model_field(raw)
            metadata = forwarded_metadata(context.invocation_metadata())
            tried: set[str] = set()
            while True:
                route = await self._route(model, tried, context)
                tried.add(route.instance_id)
                route.open[model] = route.open.get(model, 0) + 1
                call = route.channel.unary_stream(method)(raw, timeout=context.time_remaining(), metadata=metadata)
                started = False
                try:
                    async for chunk in call:
                        if not started:
                            started = True
                            initial = forwarded_metadata(await call.initial_metadata())
                            await context.send_initial_metadata(initial + ((INSTANCE_TRAILER, route.instance_id),))
                        yield chunk
                    trailers = await call.trailing_metadata()
                    self._observe(route, model, trailers)
                    context.set_trailing_metadata(_with_instance(returned_trailers(trailers), route))
                    return
                except grpc.aio.AioRpcError as error:
                    if not started and self._retryable(error, tried, context):
                        logger.info("instance %s unavailable for %s before its first chunk (%s); trying another",
                                    route.instance_id, method, error.details())
                        continue
                    await context.abort(error.code(), error.details() or "",
                                        _with_instance(returned_trailers(error.trailing_metadata()), route))
                    raise
                finally:
                    call.cancel()
                    route.open[model] -= 1

        return forward

    @staticmethod
    def _retryable(error: grpc.aio.AioRpcError, tried: set[str], context: grpc.aio.ServicerContext) -> bool:
        remaining = context.time_remaining()
        return (
            error.code() == grpc.StatusCode.UNAVAILABLE
            and len(tried) < MAX_ATTEMPTS
            and (remaining is None or remaining > 0)
        )

    @staticmethod
    def _observe(route: Route, model: str, trailers: Sequence[tuple[str, str | bytes]] | None) -> None:
        report = parse_report(trailers)
        if report is not None and "in_flight" in report.named_metrics:
            load = report.named_metrics["in_flight"] + report.named_metrics.get("queued", 0.0)
            # The report was made after this call finished at the worker; it is still open here.
            route.reported(model, load, open_excluding=1)

    async def _list_models(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """Every model of the fleet, described by one routable instance each."""
        remaining = context.time_remaining()
        timeout = min(LIST_MODELS_TIMEOUT_S, remaining) if remaining is not None else LIST_MODELS_TIMEOUT_S
        metadata = forwarded_metadata(context.invocation_metadata())
        routes = [r for r in self.router.instances() if r.routable]

        async def ask(route: Route) -> list[pb.ModelMetadata]:
            try:
                reply = await route.channel.unary_unary(
                    f"/{WORKER_SERVICE}/ListModels",
                    request_serializer=pb.ListModelsRequest.SerializeToString,
                    response_deserializer=pb.ListModelsResponse.FromString,
                )(pb.ListModelsRequest(), timeout=timeout, metadata=metadata)
                return list(reply.models)
            except grpc.aio.AioRpcError as error:
                logger.info("ListModels on instance %s failed: %s", route.instance_id, error.code().name)
                return []

        models: dict[str, pb.ModelMetadata] = {}
        for answer in await asyncio.gather(*(ask(r) for r in routes)):
            for metadata_ in answer:
                models.setdefault(metadata_.model, metadata_)
        return pb.ListModelsResponse(models=[models[name] for name in sorted(models)]).SerializeToString()


def _with_instance(trailers: Metadata, route: Route) -> Metadata:
    kept = tuple((k, v) for k, v in trailers if k != INSTANCE_TRAILER)
    return kept + ((INSTANCE_TRAILER, route.instance_id),)

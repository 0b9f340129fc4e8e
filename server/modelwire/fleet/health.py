"""Active health checks: follow an instance's grpc.health.v1 Watch stream, so health is not known
only from heartbeats (a killed worker's stream breaks at once; a draining one says NOT_SERVING at
once)."""

from __future__ import annotations

import logging
from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from modelwire.core.backoff import Backoff
from modelwire.rpc.wire import WORKER_SERVICE

logger = logging.getLogger(__name__)

# Answers that say nothing about the instance's health: no health service, or our credentials are
# not accepted there. The instance is then "unknown", not "down".
_UNKNOWABLE = frozenset(
    {
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
    }
)


async def follow_health(
    channel: grpc.aio.Channel,
    on_change: Callable[[bool | None], None],
    service: str = WORKER_SERVICE,
) -> None:
    """Calls `on_change(True)` on SERVING, `on_change(False)` on anything else or when the stream
    breaks, and keeps watching (with a short backoff) until cancelled. A server without the health
    service, or one refusing our credentials, is reported once as None (unknown) and not watched
    further."""
    stub = health_pb2_grpc.HealthStub(channel)
    backoff = Backoff()
    while True:
        call = stub.Watch(health_pb2.HealthCheckRequest(service=service))
        try:
            async for response in call:
                backoff.reset()
                on_change(response.status == health_pb2.HealthCheckResponse.SERVING)
        except grpc.aio.AioRpcError as error:
            if error.code() in _UNKNOWABLE:
                if error.code() != grpc.StatusCode.UNIMPLEMENTED:
                    logger.warning(
                        "health of %s cannot be watched: %s %s (check the token and TLS used "
                        "towards workers)",
                        channel,
                        error.code().name,
                        error.details(),
                    )
                on_change(None)
                return
        finally:
            call.cancel()
        on_change(False)
        await backoff.wait()

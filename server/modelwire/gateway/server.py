"""`modelwire gateway`: the ModelWorker API, each call forwarded to an instance the router picks
(gateway/router.py), on the shared server builder (its own auth, TLS, call log and metrics).

Requests and responses pass as bytes: only the model name is read, to route the call and to hold
it to the caller's token's `models` allow-list (the worker sees this gateway's token, not the
caller's). A call goes to another instance only when the first one provably did not start it:
- no worker answered, and no worker's headers came (a worker sends them when the work begins, after
  admission): a refused connection, a worker lost while the call waited in its queue, no
  connection within `connect_timeout_s`; or
- the worker said so (`google.rpc.ErrorInfo` reason NOT_STARTED: its admission refused the call).
A worker's own UNAVAILABLE (its upstream failed after its own retries) goes back to the caller: the
upstream may have been called, and billed, already. Retries also stop when the retry budget (a
share of recent calls) is spent, so a sick fleet is not hammered by its own gateway.

The gateway's HTTP facade calls the fleet through the same forwarding (`forward_unary`,
`forward_stream`, `list_models`, with a CallContext of its own: gateway/fleet_models.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from contextlib import aclosing
from typing import Any, NoReturn, Protocol

import grpc
from google.protobuf.message import DecodeError

from modelwire.core.balance import pick_policy
from modelwire.core.coalesce import coalesced
from modelwire.core.errors import (
    InvalidRequest,
    ModelwireError,
    NotReady,
    PermissionDenied,
    RoutingLoop,
)
from modelwire.core.settings import (
    AuthConfig,
    GatewaySection,
    ObservabilityConfig,
    ServerConfig,
    TlsConfig,
)
from modelwire.fleet.orca import reported_load
from modelwire.fleet.registry import RegistryClient
from modelwire.gateway.coalesce import AbortAfterMessages, HeldAbort, merge_messages
from modelwire.gateway.router import (
    LIST_MODELS_TIMEOUT_S,
    MAX_ATTEMPTS,
    Route,
    Router,
    forwarded_metadata,
    leading_model,
    model_field,
    rate_limits,
    refuse_unsendable,
    returned_trailers,
)
from modelwire.observe.call_observer import UNKNOWN_MODEL
from modelwire.observe.call_record import current_call
from modelwire.rpc.auth import (
    call_identity,
    model_calls,
    model_refusal,
    relayed_metadata,
)
from modelwire.rpc.server import RpcServer, Service
from modelwire.rpc.status import CallScope, error_reasons, received_status
from modelwire.rpc.wire import (
    CALLER_KEY,
    INSTANCE_TRAILER,
    NOT_STARTED,
    PID_KEY,
    REQUEST_ID_KEY,
    TENANT_KEY,
    VIA_KEY,
    WORKER_SERVICE,
    Metadata,
)
from modelwire.v1 import worker_pb2 as pb

logger = logging.getLogger(__name__)

# The forwarded methods, as a worker's channel names them.
GENERATE = f"/{WORKER_SERVICE}/Generate"
GENERATE_STREAM = f"/{WORKER_SERVICE}/GenerateStream"
COUNT_TOKEN = f"/{WORKER_SERVICE}/CountToken"
EMBED = f"/{WORKER_SERVICE}/Embed"
LIST_MODELS = f"/{WORKER_SERVICE}/ListModels"

# A gateway that sees its own id in a call's VIA_KEY refuses it; so does one past this many hops.
MAX_HOPS = 8
# What this gateway sets itself, never the caller's: the request id it logs the call under, and who
# the call is for.
_RELAYED_KEYS = frozenset({REQUEST_ID_KEY, CALLER_KEY, TENANT_KEY})
# A retry budget lets a burst this large through before the ratio governs.
_BUDGET_BURST = 10.0


class RetryBudget:
    """Each call earns `ratio` retries (up to a burst); each retry spends one."""

    def __init__(self, ratio: float) -> None:
        self._ratio = ratio
        self._tokens = _BUDGET_BURST

    def earn(self) -> None:
        self._tokens = min(_BUDGET_BURST, self._tokens + self._ratio)

    def spend(self) -> bool:
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


def not_started(error: grpc.aio.AioRpcError) -> bool:
    """True when the failed attempt provably did no work at the worker."""
    trailers = dict(error.trailing_metadata() or ())
    if PID_KEY not in trailers:
        if PID_KEY in dict(error.initial_metadata() or ()):
            return False  # the worker's headers came: its work had begun when the call was lost
        # No worker answered: a refused connection, or a worker lost while the call was still
        # queued at its admission (it sends its headers when the work begins), or a server that is
        # no modelwire worker and answered without them, which cannot have done our work.
        return bool(error.code() == grpc.StatusCode.UNAVAILABLE)
    return NOT_STARTED in error_reasons(received_status(trailers.items()))


class CallContext(Protocol):
    """What forwarding uses of the caller's call: a gRPC call's grpc.aio.ServicerContext, or an
    HTTP facade call's (gateway/fleet_models.py), so both are routed by the one retry loop."""

    def time_remaining(self) -> float | None: ...

    def invocation_metadata(self) -> Sequence[tuple[str, str | bytes]] | None: ...

    async def send_initial_metadata(self, initial_metadata: Metadata) -> None: ...

    def set_trailing_metadata(self, trailing_metadata: Metadata) -> None: ...

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: Metadata = ()
    ) -> NoReturn: ...


# One try of a call on a route: yields what the caller gets, fills in the worker's trailers.
Attempt = Callable[[Route, list[tuple[str, str | bytes]]], AsyncGenerator[bytes, None]]


class _NoConnection(Exception):
    """The chosen worker had no connection within the connect bound: the call never left."""


class Gateway:
    """A ModelWorker server whose every call is forwarded to the fleet."""

    def __init__(
        self,
        source: RegistryClient,
        server: ServerConfig | None = None,
        gateway: GatewaySection | None = None,
        *,
        auth: AuthConfig | None = None,
        tls: TlsConfig | None = None,
        observability: ObservabilityConfig | None = None,
        probe_health: bool = True,
    ) -> None:
        self.source = source
        self.settings = gateway or GatewaySection()
        self.router = Router(
            source, self.settings, probe_health, policy=pick_policy(self.settings.policy)
        )
        self._budget = RetryBudget(self.settings.retry_budget_ratio)
        handlers = self._handlers()
        self.rpc = RpcServer(
            role="gateway",
            server=server or ServerConfig(port=0),
            services=[Service(WORKER_SERVICE, lambda s: s.add_generic_rpc_handlers((handlers,)))],
            permission_of=model_calls,
            tls=tls,
            auth=auth,
            observability=observability,
            model_label=self._model_label,
        )
        self._synced: asyncio.Task[None] | None = None
        self._id = uuid.uuid4().hex[:12]

    @property
    def address(self) -> str:
        return self.rpc.address

    def _model_label(self, raw: Any) -> str:
        try:
            model = leading_model(raw) if isinstance(raw, bytes) else ""
        except InvalidRequest:
            return UNKNOWN_MODEL
        return model if model in self.router.known_models() else UNKNOWN_MODEL

    @property
    def port(self) -> int:
        return self.rpc.port

    async def start(self) -> None:
        """Listens at once, NOT_SERVING (and answering UNAVAILABLE with RetryInfo) until the first
        snapshot of instances arrives; SERVING from then on."""
        await self.router.start()
        await self.rpc.start()
        await self.rpc.set_serving(False)

        async def serve_when_synced() -> None:
            await self.router.synced.wait()
            await self.rpc.set_serving(True)
            logger.info("gateway SERVING: instance table from %s", self.source)

        self._synced = asyncio.create_task(serve_when_synced())

    async def stop(self, alongside: Callable[[], Awaitable[None]] | None = None) -> None:
        """Drains the gRPC port, and `alongside` it another door's calls (the HTTP facade's,
        app/gateway_http.py), then closes the channels to the workers both used."""
        if self._synced is not None:
            self._synced.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._synced
        if alongside is None:
            await self.rpc.drain()
        else:
            await asyncio.gather(self.rpc.drain(), alongside())
        await self.router.close()

    def _handlers(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            WORKER_SERVICE,
            {
                "Generate": grpc.unary_unary_rpc_method_handler(self._unary(GENERATE)),
                "CountToken": grpc.unary_unary_rpc_method_handler(self._unary(COUNT_TOKEN)),
                "Embed": grpc.unary_unary_rpc_method_handler(self._unary(EMBED)),
                "GenerateStream": grpc.unary_stream_rpc_method_handler(
                    self._stream(GENERATE_STREAM)
                ),
                # Decoded, unlike the forwarded methods, as the gateway answers it itself: an
                # undecodable body is refused as a worker refuses it (rpc/malformed.py).
                "ListModels": grpc.unary_unary_rpc_method_handler(
                    self._list_models, request_deserializer=pb.ListModelsRequest.FromString
                ),
            },
        )

    def _metadata(self, context: CallContext) -> Metadata:
        """The caller's metadata for the worker, with this gateway added to the call's path; a
        call that already passed here (an instance registered at this gateway's address) stops."""
        via: list[str] = []
        # Never the caller's own claim of who it is: the worker hears whom this gateway
        # authenticated.
        caller: list[tuple[str, str | bytes]] = []
        for key, value in context.invocation_metadata() or ():
            if key == VIA_KEY:
                if isinstance(value, str):
                    via += value.split(",")
            elif key not in _RELAYED_KEYS:
                caller.append((key, value))
        if self._id in via or len(via) >= MAX_HOPS:
            raise RoutingLoop(
                f"the call came back to gateway {self._id} after {len(via)} hops: an instance is "
                "registered at a gateway's address; deregister it"
            )
        outgoing = (
            *forwarded_metadata(caller, self.settings.workers.forward_authorization),
            (VIA_KEY, ",".join([*via, self._id])),
        )
        refuse_unsendable(outgoing)
        # The worker logs the call under the id this gateway logs it under (the caller's, when
        # usable).
        record = current_call()
        if record is not None:
            outgoing += ((REQUEST_ID_KEY, record.request_id),)
        return outgoing + self._relayed()

    def _relayed(self) -> Metadata:
        """Who the call is for, for the worker: the caller this gateway authenticated, sent with its
        own token (which the worker believes when it holds `relay`). With the caller's own token
        forwarded instead, the worker authenticates the caller itself: only an identity the
        caller relayed (a gateway in front of this one, with `relay` here) goes on. Without [auth]
        there is no one to name: nothing is relayed, and the worker sees this gateway's token.
        Nor without credentials towards workers: nothing there could tell a relay from a forger."""
        identity = call_identity()
        if identity is None or not self.settings.workers.sends_credentials:
            return ()  # a worker that is sent no token believes no one's identity
        if self.settings.workers.forward_authorization and identity.relayed_by is None:
            return ()
        return relayed_metadata(identity)

    async def _connected(self, route: Route) -> None:
        """Bounds the wait for a connection to the chosen worker (a frozen host accepts TCP and then
        says nothing); a worker without one is skipped for this call."""
        if route.channel.get_state(try_to_connect=True) == grpc.ChannelConnectivity.READY:
            return
        try:
            await asyncio.wait_for(route.channel.channel_ready(), self.settings.connect_timeout_s)
        except TimeoutError:
            raise _NoConnection from None

    def _again(
        self,
        model: str,
        route: Route,
        error: grpc.aio.AioRpcError | None,
        tried: set[str],
        context: CallContext,
    ) -> bool:
        """Whether to try another instance; if not, the caller gets this attempt's answer."""
        remaining = context.time_remaining()
        if (
            (error is not None and not not_started(error))
            or len(tried) >= MAX_ATTEMPTS
            or (remaining is not None and remaining <= 0)
        ):
            return False
        if not self.router.untried(model, tried):
            return False
        if not self._budget.spend():
            logger.warning(
                "retry budget spent: instance %s's failure goes to the caller", route.instance_id
            )
            return False
        logger.info(
            "instance %s did not take the call (%s); trying another",
            route.instance_id,
            "no connection" if error is None else f"{error.code().name} {error.details()}",
        )
        return True

    def _admitted(self, raw: bytes) -> str:
        """The model a call names, for its label and held to the caller's allow-list (the worker
        sees this gateway's token); a call let through earns the retry budget its share."""
        model = model_field(raw)
        record = current_call()
        if record is not None:  # the label was read before authentication, from the first field 1
            record.model = model if model in self.router.known_models() else UNKNOWN_MODEL
        refusal = model_refusal(model)
        if refusal is not None:
            raise PermissionDenied(refusal)
        self._budget.earn()
        return model

    def _opened(self, model: str, tried: set[str]) -> Route:
        """The next attempt's instance, counted open for `model` until `_closed`."""
        route = self.router.pick(model, tried)
        tried.add(route.instance_id)
        route.open[model] = route.open.get(model, 0) + 1
        return route

    async def _failed(
        self,
        model: str,
        route: Route,
        error: grpc.aio.AioRpcError | None,
        tried: set[str],
        context: CallContext,
    ) -> None:
        """After an attempt that did not start (`error` None: no connection): returns when
        another instance is to be tried, else ends the call with this attempt's answer."""
        if self._again(model, route, error, tried, context):
            return
        if error is None:
            raise _unreachable(route) from None
        await _pass_on(context, error, route)
        raise error

    def _settled(
        self,
        route: Route,
        model: str,
        trailers: Sequence[tuple[str, str | bytes]] | None,
        context: CallContext,
    ) -> None:
        """A call the worker answered: its load report read, its trailers the caller's."""
        received = tuple(trailers or ())  # grpc.aio's Metadata iterates in Python: once
        self._observe(route, model, received)
        context.set_trailing_metadata(returned_trailers(received, route.instance_id))

    async def _forward(
        self, raw: bytes, context: CallContext, attempt: Attempt
    ) -> AsyncGenerator[bytes, None]:
        """The retry loop of streamed calls: `attempt` makes the call on a route, yields what the
        caller gets and fills in the worker's trailers; once it has yielded, the call is the
        caller's and never retried. `forward_unary` is the same loop without generators."""
        model = self._admitted(raw)
        tried: set[str] = set()
        while True:
            route = self._opened(model, tried)
            started = False
            trailers: list[tuple[str, str | bytes]] = []
            try:
                await self._connected(route)
                async with aclosing(attempt(route, trailers)) as answers:
                    async for answer in answers:
                        started = True
                        yield answer
                self._settled(route, model, trailers, context)
                return
            except _NoConnection:
                await self._failed(model, route, None, tried, context)
            except grpc.aio.AioRpcError as error:
                if started:
                    await _pass_on(context, error, route)
                    raise
                await self._failed(model, route, error, tried, context)
            finally:
                route.open[model] -= 1

    async def forward_unary(self, method: str, raw: bytes, context: CallContext) -> bytes:
        """A unary call forwarded to the fleet; the worker's failure ends it by `context.abort`.
        `_forward`'s loop, in a coroutine: a unary answer comes whole, so every failure is before
        the call is the caller's (async generators would cost each call a fifth of the gateway's
        own instructions)."""
        model = self._admitted(raw)
        tried: set[str] = set()
        while True:
            route = self._opened(model, tried)
            try:
                await self._connected(route)
                call = route.unary(method)(
                    raw, timeout=context.time_remaining(), metadata=self._metadata(context)
                )
                # Awaiting the call cancels it when this task is cancelled (the caller left).
                response: bytes = await call
                limits = rate_limits(await call.initial_metadata())
                if limits:  # the worker's quota: headers only then (each costs a frame)
                    await context.send_initial_metadata(limits)
                self._settled(route, model, await call.trailing_metadata(), context)
                return response
            except _NoConnection:
                await self._failed(model, route, None, tried, context)
            except grpc.aio.AioRpcError as error:
                await self._failed(model, route, error, tried, context)
            finally:
                route.open[model] -= 1

    def forward_stream(
        self, method: str, raw: bytes, context: CallContext
    ) -> AsyncGenerator[bytes, None]:
        """A streamed call forwarded to the fleet, its chunks as they come; closing it cancels the
        worker's call. The worker's failure ends it by `context.abort`."""

        async def attempt(
            route: Route, trailers: list[tuple[str, str | bytes]]
        ) -> AsyncGenerator[bytes, None]:
            call = route.channel.unary_stream(method)(
                raw, timeout=context.time_remaining(), metadata=self._metadata(context)
            )
            try:
                # Passed on as soon as the worker sends them (its work began, its rate limits
                # known), so a caller sees them before the first token too.
                initial = await call.initial_metadata()
                unsent = True
                if initial:  # none when the worker refused at once (trailers only)
                    unsent = False
                    await context.send_initial_metadata(_headers(initial, route))
                async for chunk in call:
                    if unsent:
                        unsent = False
                        await context.send_initial_metadata(_headers(initial, route))
                    yield chunk
                trailers.extend(await call.trailing_metadata() or ())
            finally:
                call.cancel()

        return self._forward(raw, context, attempt)

    def _unary(self, method: str) -> Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]:
        async def forward(raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
            async with CallScope(context):
                return await self.forward_unary(method, raw, context)

        return forward

    def _stream(
        self, method: str
    ) -> Callable[[bytes, grpc.aio.ServicerContext], AsyncIterator[bytes]]:
        async def forward(raw: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
            async with (
                CallScope(context),
                aclosing(self.forward_stream(method, raw, AbortAfterMessages(context))) as chunks,
                aclosing(coalesced(chunks, merge_messages)) as messages,
            ):
                try:
                    async for chunk in messages:
                        yield chunk
                except HeldAbort as failed:  # after every message read before it
                    await context.abort(failed.code, failed.details, failed.trailing_metadata)

        return forward

    @staticmethod
    def _observe(
        route: Route, model: str, trailers: Sequence[tuple[str, str | bytes]] | None
    ) -> None:
        load = reported_load(trailers)
        if load is not None:
            # The report was made after this call finished at the worker; it is still open here.
            route.reported(model, load, open_excluding=1)

    async def _list_models(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> bytes:
        async with CallScope(context):
            models = await self.list_models(context)
            return pb.ListModelsResponse(models=models).SerializeToString()

    async def list_models(self, context: CallContext) -> list[pb.ModelMetadata]:
        """Every model of the fleet the caller's token may use, by name, described by one routable
        instance each (an instance that fails or answers garbage is left out)."""
        remaining = context.time_remaining()
        timeout = (
            min(LIST_MODELS_TIMEOUT_S, remaining)
            if remaining is not None
            else LIST_MODELS_TIMEOUT_S
        )
        metadata = self._metadata(context)
        routes = [r for r in self.router.instances() if r.routable]

        async def ask(route: Route) -> list[pb.ModelMetadata]:
            try:
                answer: bytes = await route.unary(LIST_MODELS)(
                    pb.ListModelsRequest().SerializeToString(), timeout=timeout, metadata=metadata
                )
                return list(pb.ListModelsResponse.FromString(answer).models)
            except grpc.aio.AioRpcError as error:
                logger.info(
                    "ListModels on instance %s failed: %s", route.instance_id, error.code().name
                )
            except DecodeError:
                logger.warning(
                    "instance %s answered ListModels with bytes that are not a ListModelsResponse",
                    route.instance_id,
                )
            return []

        models: dict[str, pb.ModelMetadata] = {}
        for answer in await asyncio.gather(*(ask(r) for r in routes)):
            for described in answer:
                if model_refusal(described.model) is None:
                    models.setdefault(described.model, described)
        return [models[name] for name in sorted(models)]


def _unreachable(route: Route) -> ModelwireError:
    return NotReady(
        f"instance {route.instance_id} at {route.instance.address} has no connection and no other "
        "instance is left",
        1.0,
    )


async def _pass_on(context: CallContext, error: grpc.aio.AioRpcError, route: Route) -> None:
    """The worker's status, details and trailers, as the caller's answer (an HTTP call's context
    raises them as the typed error they stand for)."""
    await context.abort(
        error.code(),
        error.details() or "",
        returned_trailers(error.trailing_metadata(), route.instance_id),
    )


def _headers(initial: Sequence[tuple[str, str | bytes]] | None, route: Route) -> Metadata:
    """A worker's response headers as the caller gets them, naming the instance."""
    return forwarded_metadata(initial, authorization=False) + (
        (INSTANCE_TRAILER, route.instance_id),
    )

"""The HTTP facades' listener (aiohttp): OpenAI's Chat Completions and Anthropic's Messages APIs in
front of a `ModelBackend` (a worker's models, or a gateway's fleet), with the gRPC edge's rules.

Each call, in this order: its record (request id from `x-request-id`, the access line and the
metrics at the end, as rpc/call_pipeline.py keeps them for gRPC calls), the API key
(`Authorization: Bearer`, or Anthropic's `x-api-key`) checked against the same tokens with the
same permission and model allow-list, the body decoded by the API's codec (facade/openai_wire/,
facade/anthropic_wire/), then the backend. Errors follow facade/errors.py in each API's own
shape. A caller that disconnects cancels its call: aiohttp cancels the handler (`handler
cancellation`), which closes the backend's stream and so the upstream request or the local model.

Both APIs share one port: their paths differ but for the models listing, which answers in
Anthropic's shape when the request has an `anthropic-version` header (every Anthropic SDK sends
one) and in OpenAI's otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import ssl
import time
import urllib.parse
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from typing import Any

from aiohttp import web

from modelwire.core import strict_json
from modelwire.core.coalesce import coalesce_outputs, coalesced
from modelwire.core.errors import (
    FieldViolation,
    InvalidRequest,
    ModelNotFound,
    NotReady,
    PermissionDenied,
    StartupFailure,
)
from modelwire.core.settings import (
    AuthConfig,
    HttpConfig,
    RequestLimits,
    ServerConfig,
    TlsConfig,
)
from modelwire.core.types import ModelMetadata, ModelOutput, ResponseHeaders, Usage
from modelwire.facade import anthropic_wire, openai_wire
from modelwire.facade.answer import (
    ANTHROPIC,
    OPENAI,
    REQUEST_ID_HEADER,
    Api,
    Call,
    api_of,
)
from modelwire.facade.calls import GenerationCall, HttpError, ModelBackend, StreamEncoder
from modelwire.facade.connections import (
    PROTOCOL_LOGGER,
    FacadeServer,
    drop_silent_peers,
    ssl_context,
)
from modelwire.facade.errors import BodyTimeout
from modelwire.observe.call_observer import CallObserver
from modelwire.observe.call_record import CallRecord, note_context
from modelwire.observe.logs import AccessSampling
from modelwire.observe.metrics import WorkerMetrics
from modelwire.observe.tracing import http_server_span
from modelwire.rpc.auth import BearerAuth, Unauthenticated, bearer_token, call_identity
from modelwire.rpc.auth import model_refusal as allow_list_refusal
from modelwire.rpc.server import check_exposure

logger = logging.getLogger(__name__)

_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
# How long aiohttp's shutdown gives connections once stop() has waited out the grace period and
# cancelled the calls left: only idle connections remain to close.
_AFTER_GRACE_S = 0.1

# The request's route, as its record names it (`POST /v1/chat/completions`, `unrouted`).
_ROUTE = web.RequestKey("modelwire.route", str)
_MODEL_PATH = "/v1/models/"
_MODEL_ROUTE = "/v1/models/{model}"


def _presented_key(request: web.BaseRequest) -> str:
    """The request's one key: `Authorization: Bearer` or `x-api-key`. Two that differ (a proxy
    that adds its own, a client that sends both) are refused: which tenant would pay?"""
    keys = {bearer_token(value) for value in request.headers.getall("Authorization", ())}
    keys |= {value.strip() for value in request.headers.getall("x-api-key", ())}
    keys.discard("")
    if len(keys) > 1:
        raise Unauthenticated(
            f"the request carries {len(keys)} different keys (Authorization, x-api-key): send one"
        )
    return keys.pop() if keys else ""


Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


def check_http_exposure(
    role: str, http: HttpConfig, server: ServerConfig, auth: AuthConfig | None
) -> None:
    """The gRPC port's rule for the HTTP port (rpc/server.py, check_exposure): beyond loopback
    only with [auth] or `allow_unauthenticated`."""
    host = http.host or server.host
    check_exposure(
        f"{role}'s HTTP facade", dataclasses.replace(server, host=host, port=http.port or 0), auth
    )


class HttpFacade:
    """The HTTP listener of a worker or a gateway, serving `backend`."""

    def __init__(
        self,
        *,
        role: str,
        http: HttpConfig,
        server: ServerConfig,
        backend: ModelBackend,
        metrics: WorkerMetrics,
        sampling: AccessSampling,
        auth: BearerAuth | None,
        auth_config: AuthConfig | None,
        tls: TlsConfig | None,
        model_label: Callable[[str], str],
        limits: RequestLimits,
        reuse_port: bool = False,
    ) -> None:
        """`limits`: the shape bounds checked on the JSON before it is translated (a body of
        100,000 messages is refused at once, never translated on the event loop first)."""
        assert http.port is not None, "the facade is built only when [http] port is set"
        self.role = f"{role}'s HTTP facade"
        self.host = http.host or server.host
        check_http_exposure(role, http, server, auth_config)
        self._port = http.port
        self._backend = backend
        # The gRPC port's metrics and access-line sampling: one /metrics, one log for both doors.
        self._observer = CallObserver(metrics, lambda _request: "", sampling)
        self._auth = auth
        self._model_label = model_label
        self._reuse_port = reuse_port
        self._limits = limits
        self._grace_s = server.grace_period_s
        self._drain_delay_s = server.drain_delay_s
        # A peer that stops sending mid-request is dropped as a silent gRPC peer is: a header block
        # or a body not whole within this is closed (408 for a body).
        self._receive_s = server.keepalive_time_s + server.keepalive_timeout_s
        try:
            self.ssl = ssl_context(tls) if tls is not None else None
        except (ssl.SSLError, OSError) as error:
            raise StartupFailure(
                f"tls: the {self.role} cannot use the certificate: {error}"
            ) from None
        # Each path's handler by method (the paths as sent: `%2F` is no separator). Seven fixed
        # routes need no router; `GET /v1/models/{model}` is the one with a variable part.
        self._routes: dict[str, dict[str, Handler]] = {
            "/v1/chat/completions": {"POST": self._chat},
            "/v1/embeddings": {"POST": self._embeddings},
            "/v1/models": {"GET": self._models},
            "/v1/messages": {"POST": self._messages},
            "/v1/messages/count_tokens": {"POST": self._count_tokens},
        }
        self._max_body = server.max_receive_message_bytes
        self._runner = web.ServerRunner(
            FacadeServer(
                self._dispatch,
                request_factory=self._request,
                handler_cancellation=True,
                access_log=None,
                keepalive_timeout=self._receive_s,
                # A body refused before it was read whole (too large, too slow) is not read on.
                lingering_time=0,
                logger=PROTOCOL_LOGGER,
            ),
            # stop() waits the grace period for the calls itself, then cancels what is left.
            shutdown_timeout=_AFTER_GRACE_S,
        )
        self.port = 0
        self._site: web.TCPSite | None = None
        self._sweeper: asyncio.Task[None] | None = None
        # The calls in flight (their handler tasks), for the drain; `_idle` is set when none is.
        self._calls: set[asyncio.Task[Any]] = set()
        self._idle = asyncio.Event()
        self._drained = False

    @property
    def address(self) -> str:
        scheme = "https" if self.ssl is not None else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(
            self._runner,
            self.host,
            self._port,
            ssl_context=self.ssl,
            reuse_port=self._reuse_port or None,
        )
        self._site = site
        try:
            await site.start()
        except OSError as error:
            await self._runner.cleanup()
            raise StartupFailure(
                f"the {self.role} cannot listen on {self.host}:{self._port}: {error.strerror}"
            ) from None
        server = site._server  # noqa: SLF001 — aiohttp exposes the bound port nowhere else
        sockets = getattr(server, "sockets", None) or ()
        self.port = sockets[0].getsockname()[1] if sockets else self._port
        self._sweeper = asyncio.create_task(drop_silent_peers(self._runner, self._receive_s))
        logger.info("%s on %s", self.role, self.address)

    def reload_tls(self, tls: TlsConfig) -> None:
        """SIGHUP: the new certificate and key serve the next handshakes."""
        if self.ssl is not None:
            self.ssl.load_cert_chain(tls.cert_file, tls.key_file)
            if tls.client_ca_file is not None:
                self.ssl.load_verify_locations(cafile=tls.client_ca_file)

    async def stop(self) -> None:
        """Stops listening (after `[server] drain_delay_s`); calls in flight get the grace period,
        then are cancelled, a stream with the API's error event (it must not end as if it were
        whole). The facade cancels them itself: aiohttp's own shutdown closes the connection
        before the cancelled call could write anything."""
        # New calls are still served for `drain_delay_s`, as on the gRPC port, for balancers that
        # take a while to stop sending.
        await asyncio.sleep(self._drain_delay_s)
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._site is not None:
            await self._site.stop()
        if self._calls:
            self._idle.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._grace_s):
                    await self._idle.wait()
        self._drained = True
        left = list(self._calls)
        for task in left:
            task.cancel()
        await asyncio.gather(*left, return_exceptions=True)
        await self._runner.cleanup()

    # --- the pipeline ------------------------------------------------------------------------

    def _request(
        self,
        message: Any,
        payload: Any,
        protocol: web.RequestHandler,
        writer: Any,
        task: asyncio.Task[None],
    ) -> web.BaseRequest:
        """aiohttp's request, its body bounded by `[server] max_receive_message_bytes`."""
        return web.BaseRequest(
            message,
            payload,
            protocol,
            writer,
            task,
            task.get_loop(),
            client_max_size=self._max_body,
        )

    async def _dispatch(self, request: web.BaseRequest) -> web.StreamResponse:
        """The route's handler, after an `Expect: 100-continue` is answered."""
        path = request.rel_url.raw_path
        methods = self._routes.get(path)
        if methods is None and path.startswith(_MODEL_PATH) and len(path) > len(_MODEL_PATH):
            methods = {"GET": self._model}
        handler = methods.get(request.method) if methods is not None else None
        if handler is None:
            request[_ROUTE] = "unrouted"
            return await self._no_route(request, known=methods is not None)
        request[_ROUTE] = f"{request.method} {path if path in self._routes else _MODEL_ROUTE}"
        if "Expect" in request.headers:
            refused = await self._expect(request)
            if refused is not None:
                return refused
        return await handler(request)

    def _begin(self, request: web.BaseRequest, api: Api) -> Call:
        """The call's record, named by its route (`POST /v1/chat/completions`, `GET
        /v1/models/{model}`; `unrouted` for a path neither API has), never by the path a caller
        made up: the name's last part is a metrics label."""
        record = self._observer.begin(request[_ROUTE], None, request.headers.get(REQUEST_ID_HEADER))
        return Call(api, record)

    async def _expect(self, request: web.BaseRequest) -> web.StreamResponse | None:
        """`Expect: 100-continue` is granted only to a request with a valid key and a body within
        the limit; others are answered at once, before they send the body."""
        call = self._begin(request, api_of(request))
        if request.headers.get("Expect", "").lower() != "100-continue":
            answer = HttpError(
                417, "INVALID_ARGUMENT", "the only expectation served is 100-continue"
            )
            call.record.code = answer.code
            self._observer.finished(call.record, streamed=False)
            return call.error_response(answer)
        try:
            if self._auth is not None:
                self._auth.admit(_presented_key(request), "generate")
            if (request.content_length or 0) > self._max_body:
                raise InvalidRequest([FieldViolation("", self._too_large)])
        except Exception as error:
            response = call.error_response(call.failed(error))
            response.force_close()
            self._observer.finished(call.record, streamed=False)
            return response
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0
        return None

    @property
    def _too_large(self) -> str:
        return (
            f"the request body is larger than {self._max_body} bytes, the limit "
            "([server] max_receive_message_bytes)"
        )

    async def _serve(
        self,
        request: web.BaseRequest,
        api: Api,
        work: Callable[[Call, web.BaseRequest], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        """Every call: its record, the key check, `work`, an error in the API's shape, and the
        access line and metrics however the call ended."""
        call = self._begin(request, api)
        streamed = False
        task = asyncio.current_task()
        assert task is not None
        self._calls.add(task)
        try:
            if self._auth is not None:
                self._auth.admit(_presented_key(request), "generate")
            with http_server_span(call.record.method, request.headers):
                response = await work(call, request)
            streamed = isinstance(response, web.StreamResponse) and not isinstance(
                response, web.Response
            )
            return response
        except asyncio.CancelledError:
            if self._drained and not call.streaming:
                # This server's drain ran out of grace before the answer began: a 503 the caller
                # may retry elsewhere, rather than a connection closed without a word.
                return call.error_response(call.failed(_cut_by_drain()))
            call.record.code = "CANCELLED"
            raise
        except ConnectionError:
            call.record.code = "CANCELLED"  # the caller left mid-answer
            return web.Response(status=499)
        except Exception as error:
            return call.error_response(call.failed(error))
        finally:
            self._observer.finished(call.record, streamed=streamed)
            self._calls.discard(task)
            if not self._calls:
                self._idle.set()

    async def _body(self, request: web.BaseRequest) -> Any:
        """The request's JSON, parsed as strictly as the gRPC edge parses JSON texts."""
        try:
            async with asyncio.timeout(self._receive_s):
                raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise InvalidRequest([FieldViolation("", self._too_large)]) from None
        except TimeoutError:
            raise BodyTimeout(
                f"the request body did not arrive whole within {self._receive_s:g}s"
            ) from None
        try:
            body = strict_json.loads(raw)
        except (ValueError, UnicodeDecodeError) as error:
            raise InvalidRequest([FieldViolation("", f"the body is not JSON: {error}")]) from None
        if isinstance(body, dict):
            self._check_counts(body)
        return body

    def _check_counts(self, body: dict[str, Any]) -> None:
        """The `[limits]` bounds on how many messages, tools and inputs a body lists, checked
        before the codec translates them (each costs microseconds on the event loop)."""
        limits = self._limits
        for key, most, name in (
            ("messages", limits.max_messages, "max_messages"),
            ("tools", limits.max_tools, "max_tools"),
            ("input", limits.max_embed_inputs, "max_embed_inputs"),
        ):
            listed = body.get(key)
            if isinstance(listed, list) and len(listed) > most:
                raise InvalidRequest(
                    [
                        FieldViolation(
                            key, f"has {len(listed)} items; at most {most} ([limits] {name})"
                        )
                    ]
                )

    def _allowed(self, call: Call, model: str) -> None:
        call.record.model = self._model_label(model)
        refusal = allow_list_refusal(model)
        if refusal is not None:
            raise PermissionDenied(refusal)

    # --- generation ----------------------------------------------------------------------------

    async def _chat(self, request: web.BaseRequest) -> web.StreamResponse:
        return await self._serve(request, OPENAI, self._chat_call)

    async def _messages(self, request: web.BaseRequest) -> web.StreamResponse:
        return await self._serve(request, ANTHROPIC, self._messages_call)

    async def _chat_call(self, call: Call, request: web.BaseRequest) -> web.StreamResponse:
        parsed = call.parsed = openai_wire.parse_chat(await self._body(request))
        self._allowed(call, parsed.request.model)
        completion_id = f"chatcmpl-{call.record.request_id}"
        created = int(time.time())
        if not parsed.stream:
            output = await self._generate(call, parsed)
            model = call.answered_by or parsed.request.model
            return call.json(openai_wire.chat_completion(output, model, completion_id, created))
        return await self._stream(
            call,
            request,
            parsed,
            lambda model: openai_wire.ChatStream(
                model, completion_id, created, parsed.include_usage
            ),
        )

    async def _messages_call(self, call: Call, request: web.BaseRequest) -> web.StreamResponse:
        parsed = call.parsed = anthropic_wire.parse_messages(await self._body(request))
        self._allowed(call, parsed.request.model)
        message_id = f"msg_{call.record.request_id}"
        if not parsed.stream:
            output = await self._generate(call, parsed)
            model = call.answered_by or parsed.request.model
            return call.json(anthropic_wire.message_body(output, model, message_id))
        return await self._stream(
            call, request, parsed, lambda model: anthropic_wire.MessageStream(model, message_id)
        )

    async def _generate(self, call: Call, parsed: GenerationCall) -> ModelOutput:
        context = parsed.request.context
        note_context(context.request_id, context.user, context.metadata)

        async def started(headers: ResponseHeaders) -> None:
            call.headers.update(headers)

        output = await self._backend.generate(parsed.request, started, _tenant())
        _count_usage(call.record, output.usage)
        return output

    async def _stream(
        self,
        call: Call,
        request: web.BaseRequest,
        parsed: GenerationCall,
        open_stream: Callable[[str], StreamEncoder],
    ) -> web.StreamResponse:
        """The response's status and headers (its rate limits among them) go with the first
        message of the stream: a failure before it (a refusal, an upstream's 429 or outage before
        its first token) is a whole error response with its own status, which the SDKs retry as
        they retry a unary call's; after it, a failure is the API's error event, and the stream
        ends. Holding the headers costs no latency: nothing could follow them before the first
        message. `open_stream(model)` encodes the stream of the model that answers (a route's
        member commits before the first message)."""
        context = parsed.request.context
        note_context(context.request_id, context.user, context.metadata)
        response = web.StreamResponse(headers={**call.headers, **_SSE_HEADERS})
        record, observer = call.record, self._observer

        async def started(headers: ResponseHeaders) -> None:
            response.headers.update(headers)

        usage: Usage | None = None
        stream: StreamEncoder | None = None

        async def prepare() -> StreamEncoder:
            call.streaming = True
            response.headers.update(call.answer_headers())
            await response.prepare(request)
            return open_stream(call.answered_by or parsed.request.model)

        try:
            chunks: AsyncGenerator[ModelOutput, None]
            async with (
                aclosing(
                    self._backend.generate_stream(parsed.request, started, _tenant())
                ) as chunks,
                # Deltas waiting when the connection takes the next event go as one (docs/api.md).
                aclosing(coalesced(chunks, coalesce_outputs)) as outputs,
            ):
                async for chunk in outputs:
                    if stream is None:
                        stream = await prepare()
                    observer.streamed(record, chunk)
                    if chunk.usage is not None:
                        usage = chunk.usage
                    data = stream.chunk(chunk)
                    if data:
                        await response.write(data)
            if stream is None:
                stream = await prepare()
            await response.write(stream.end())
        except ConnectionError:
            record.code = "CANCELLED"  # the caller left mid-answer
            return response
        except asyncio.CancelledError:
            if self._drained and stream is not None:
                # Not the caller leaving: this server's drain ran out of grace. Say so, in the
                # stream, so it does not end as if it were whole.
                with contextlib.suppress(ConnectionError):
                    await response.write(stream.error(call.failed(_cut_by_drain())))
                    await response.write_eof()
            raise
        except Exception as error:
            if stream is None:
                raise
            await response.write(stream.error(call.failed(error)))
        finally:
            _count_usage(record, usage)
        await response.write_eof()
        return response

    # --- embeddings, counting, models ---------------------------------------------------------

    async def _embeddings(self, request: web.BaseRequest) -> web.StreamResponse:
        async def work(call: Call, request: web.BaseRequest) -> web.StreamResponse:
            embed, encoding = openai_wire.parse_embeddings(await self._body(request))
            self._allowed(call, embed.model)

            async def started(headers: ResponseHeaders) -> None:
                call.headers.update(headers)

            embeddings = await self._backend.embed(embed, started, _tenant())
            _count_usage(call.record, embeddings.usage)
            model = call.answered_by or embed.model
            return call.json(openai_wire.embeddings_body(embeddings, model, encoding))

        return await self._serve(request, OPENAI, work)

    async def _count_tokens(self, request: web.BaseRequest) -> web.StreamResponse:
        async def work(call: Call, request: web.BaseRequest) -> web.StreamResponse:
            counted = anthropic_wire.parse_count_tokens(await self._body(request))
            self._allowed(call, counted.model)
            count = await self._backend.count_token(counted.model, counted.messages)
            return call.json(anthropic_wire.count_tokens_body(count))

        return await self._serve(request, ANTHROPIC, work)

    async def _listed(self) -> list[ModelMetadata]:
        """The models the caller's key may use."""
        return [m for m in await self._backend.list_models() if allow_list_refusal(m.model) is None]

    async def _models(self, request: web.BaseRequest) -> web.StreamResponse:
        api = api_of(request)

        async def work(call: Call, _request: web.BaseRequest) -> web.StreamResponse:
            models = await self._listed()
            wire = anthropic_wire if api is ANTHROPIC else openai_wire
            return call.json(wire.model_list(models))

        return await self._serve(request, api, work)

    async def _model(self, request: web.BaseRequest) -> web.StreamResponse:
        api = api_of(request)
        name = urllib.parse.unquote(request.rel_url.raw_path[len(_MODEL_PATH) :])

        async def work(call: Call, _request: web.BaseRequest) -> web.StreamResponse:
            call.record.model = self._model_label(name)
            models = {m.model: m for m in await self._listed()}
            if name not in models:
                raise ModelNotFound(name, sorted(models))
            wire = anthropic_wire if api is ANTHROPIC else openai_wire
            return call.json(wire.model_object(models[name]))

        return await self._serve(request, api, work)

    async def _no_route(self, request: web.BaseRequest, known: bool) -> web.StreamResponse:
        """404 for a path neither API has, 405 for a method a path does not take (`known`): in
        the API's shape, after the key check (a caller without a key learns nothing more)."""
        api = api_of(request)

        async def work(call: Call, _request: web.BaseRequest) -> web.StreamResponse:
            path = request.rel_url.raw_path
            status, code = (405, "UNIMPLEMENTED") if known else (404, "NOT_FOUND")
            what = (
                f"{request.method} is not a method of {path}"
                if known
                else f"{path} is not a path of this server (the OpenAI API is under /v1, "
                "the Anthropic API at /v1/messages)"
            )
            call.record.code = code
            return call.error_response(HttpError(status, code, what))

        return await self._serve(request, api, work)


def _cut_by_drain() -> NotReady:
    return NotReady("the server stopped (draining) before the answer ended", 1.0)


def _tenant() -> str | None:
    identity = call_identity()
    return identity.tenant if identity is not None else None


def _count_usage(record: CallRecord, usage: Usage | None) -> None:
    """The tokens the answer reported, unless the worker's charge (call_record.note_charge) has
    already put them in the record."""
    if usage is not None and record.cost is None:
        record.prompt_tokens, record.completion_tokens = (
            usage.prompt_tokens,
            usage.completion_tokens,
        )

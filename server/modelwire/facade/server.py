"""The HTTP facades' listener (aiohttp): OpenAI's Chat Completions and Anthropic's Messages APIs in
front of a `ModelBackend` (a worker's models, or a gateway's fleet), with the gRPC edge's rules.

Each call, in this order: its record (request id from `x-request-id`, the access line and the
metrics at the end, as rpc/call_pipeline.py keeps them for gRPC calls), the API key
(`Authorization: Bearer`, or Anthropic's `x-api-key`) checked against the same tokens with the
same permission and model allow-list, the body decoded by the API's codec (facade/openai_wire.py,
facade/anthropic_wire.py), then the backend. Errors follow facade/errors.py in each API's own
shape. A caller that disconnects cancels its call: aiohttp cancels the handler (`handler
cancellation`), which closes the backend's stream and so the upstream request or the local model.

Both APIs share one port: their paths differ but for the models listing, which answers in
Anthropic's shape when the request has an `anthropic-version` header (every Anthropic SDK sends
one) and in OpenAI's otherwise.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import ssl
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from modelwire.core import strict_json
from modelwire.core.errors import (
    FieldViolation,
    InvalidRequest,
    ModelNotFound,
    ModelwireError,
    PermissionDenied,
    QuotaExceeded,
    StartupFailure,
)
from modelwire.core.settings import AuthConfig, HttpConfig, ServerConfig, TlsConfig
from modelwire.core.types import ModelMetadata, ModelOutput, ResponseHeaders, Usage
from modelwire.facade import anthropic_wire, openai_wire
from modelwire.facade.calls import GenerationCall, HttpError, ModelBackend
from modelwire.facade.errors import http_error
from modelwire.observe.call_observer import CallObserver
from modelwire.observe.call_record import CallRecord, note_context, note_error_kind
from modelwire.observe.metrics import WorkerMetrics
from modelwire.observe.tracing import http_server_span
from modelwire.quota.limiter import refusal_headers
from modelwire.rpc.auth import BearerAuth, Unauthenticated, bearer_token, call_identity
from modelwire.rpc.auth import model_refusal as allow_list_refusal
from modelwire.rpc.server import check_exposure
from modelwire.rpc.status import error_kind

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-request-id"
ANTHROPIC_VERSION_HEADER = "anthropic-version"
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
_JSON = "application/json"


def _dumps(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True)
class _Api:
    """What differs between the two APIs around a call: its error body, its names for the
    contract's fields, and the header that carries the request id back."""

    name: str
    error_body: Callable[[HttpError, str], dict[str, Any]]
    param_of: Callable[[str, GenerationCall | None], str]
    request_id_headers: tuple[str, ...]


_OPENAI = _Api(
    "openai",
    lambda error, _request_id: openai_wire.error_body(error),
    openai_wire.error_param,
    (REQUEST_ID_HEADER,),
)
_ANTHROPIC = _Api(
    "anthropic",
    anthropic_wire.error_body,
    anthropic_wire.error_param,
    (REQUEST_ID_HEADER, "request-id"),
)


def _api_of(request: web.Request) -> _Api:
    """Anthropic's for its paths and for any request an Anthropic SDK sent; OpenAI's otherwise."""
    if request.path.startswith("/v1/messages") or ANTHROPIC_VERSION_HEADER in request.headers:
        return _ANTHROPIC
    return _OPENAI


def _presented_key(request: web.Request) -> str:
    authorization = request.headers.get("Authorization")
    if authorization is not None:
        return bearer_token(authorization)
    return request.headers.get("x-api-key", "").strip()


def _ssl_context(tls: TlsConfig) -> ssl.SSLContext:
    """The listener's TLS from [tls]: its certificate and key; client certificates signed by
    `client_ca_file` required when it is set (mTLS), as on the gRPC port."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls.cert_file, tls.key_file)
    if tls.client_ca_file is not None:
        context.load_verify_locations(cafile=tls.client_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class _Call:
    """One facade call's bookkeeping: its record, its API, the headers its response carries."""

    __slots__ = ("api", "headers", "record", "parsed")

    def __init__(self, api: _Api, record: CallRecord) -> None:
        self.api = api
        self.record = record
        self.parsed: GenerationCall | None = None
        self.headers: dict[str, str] = {name: record.request_id for name in api.request_id_headers}
        self.headers["Server"] = "modelwire"  # not aiohttp's default, which names its version

    def json(self, body: object, status: int = 200) -> web.Response:
        return web.Response(
            body=_dumps(body), status=status, content_type=_JSON, headers=self.headers
        )

    def failed(self, error: BaseException) -> HttpError:
        """`error` as this API says it; the record takes its gRPC status and error kind."""
        parsed = self.parsed
        answer = http_error(error, lambda field: self.api.param_of(field, parsed))
        self.record.code = answer.code
        if isinstance(error, ModelwireError):
            # A key's refusal is no error kind (as at the gRPC pipeline), nor a worker's failure a
            # gateway passes on: the worker counted it.
            if not (isinstance(error, Unauthenticated) or error.relayed):
                note_error_kind(error_kind(error))
        elif answer.code == "INTERNAL":
            note_error_kind("internal")
        extra = refusal_headers(error) if isinstance(error, QuotaExceeded) else ()
        status = answer.status
        if self.api is _ANTHROPIC and status == 503 and answer.code == "RESOURCE_EXHAUSTED":
            status = 529  # Anthropic's "overloaded", which its SDKs retry
        return dataclasses.replace(answer, status=status, headers=answer.headers + extra)

    def error_response(self, error: HttpError) -> web.Response:
        headers = dict(self.headers)
        headers.update(error.headers)
        if error.retry_after_s is not None:
            headers["Retry-After"] = str(max(1, round(error.retry_after_s)))
        return web.Response(
            body=_dumps(self.api.error_body(error, self.record.request_id)),
            status=error.status,
            content_type=_JSON,
            headers=headers,
        )


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
        auth: BearerAuth | None,
        auth_config: AuthConfig | None,
        tls: TlsConfig | None,
        model_label: Callable[[str], str],
        reuse_port: bool = False,
    ) -> None:
        assert http.port is not None, "the facade is built only when [http] port is set"
        self.role = f"{role}'s HTTP facade"
        self.host = http.host or server.host
        check_http_exposure(role, http, server, auth_config)
        self._port = http.port
        self._backend = backend
        # The gRPC port's metrics: one /metrics for both doors.
        self._observer = CallObserver(metrics, lambda _request: "")
        self._auth = auth
        self._model_label = model_label
        self._reuse_port = reuse_port
        self._grace_s = server.grace_period_s
        try:
            self.ssl = _ssl_context(tls) if tls is not None else None
        except (ssl.SSLError, OSError) as error:
            raise StartupFailure(
                f"tls: the {self.role} cannot use the certificate: {error}"
            ) from None
        app = web.Application(client_max_size=server.max_receive_message_bytes)
        routes = (
            ("POST", "/v1/chat/completions", self._chat),
            ("POST", "/v1/embeddings", self._embeddings),
            ("GET", "/v1/models", self._models),
            ("GET", "/v1/models/{model:.+}", self._model),
            ("POST", "/v1/messages", self._messages),
            ("POST", "/v1/messages/count_tokens", self._count_tokens),
        )
        self._paths = {path for _method, path, _handler in routes}
        for method, path, handler in routes:
            app.router.add_route(method, path, handler)
        app.router.add_route("*", "/{tail:.*}", self._no_route)
        self._max_body = server.max_receive_message_bytes
        self._runner = web.AppRunner(
            app, handler_cancellation=True, access_log=None, shutdown_timeout=self._grace_s
        )
        self.port = 0

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
        logger.info("%s on %s", self.role, self.address)

    def reload_tls(self, tls: TlsConfig) -> None:
        """SIGHUP: the new certificate and key serve the next handshakes."""
        if self.ssl is not None:
            self.ssl.load_cert_chain(tls.cert_file, tls.key_file)
            if tls.client_ca_file is not None:
                self.ssl.load_verify_locations(cafile=tls.client_ca_file)

    async def stop(self) -> None:
        """Stops listening; calls in flight get the grace period, then are cancelled."""
        await self._runner.cleanup()

    # --- the pipeline ------------------------------------------------------------------------

    def _begin(self, request: web.Request, api: _Api) -> _Call:
        record = self._observer.begin(
            f"{request.method} {request.path}", None, request.headers.get(REQUEST_ID_HEADER)
        )
        return _Call(api, record)

    async def _serve(
        self,
        request: web.Request,
        api: _Api,
        work: Callable[[_Call, web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        """Every call: its record, the key check, `work`, an error in the API's shape, and the
        access line and metrics however the call ended."""
        call = self._begin(request, api)
        streamed = False
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
            call.record.code = "CANCELLED"
            raise
        except ConnectionError:
            call.record.code = "CANCELLED"  # the caller left mid-answer
            return web.Response(status=499)
        except Exception as error:
            return call.error_response(call.failed(error))
        finally:
            self._observer.finished(call.record, streamed=streamed)

    async def _body(self, request: web.Request) -> Any:
        """The request's JSON, parsed as strictly as the gRPC edge parses JSON texts."""
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise InvalidRequest(
                [
                    FieldViolation(
                        "",
                        f"the request body is larger than {self._max_body} bytes, the limit "
                        "([server] max_receive_message_bytes)",
                    )
                ]
            ) from None
        try:
            return strict_json.loads(raw)
        except (ValueError, UnicodeDecodeError) as error:
            raise InvalidRequest([FieldViolation("", f"the body is not JSON: {error}")]) from None

    def _allowed(self, call: _Call, model: str) -> None:
        call.record.model = self._model_label(model)
        refusal = allow_list_refusal(model)
        if refusal is not None:
            raise PermissionDenied(refusal)

    # --- generation ----------------------------------------------------------------------------

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, _OPENAI, self._chat_call)

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, _ANTHROPIC, self._messages_call)

    async def _chat_call(self, call: _Call, request: web.Request) -> web.StreamResponse:
        parsed = call.parsed = openai_wire.parse_chat(await self._body(request))
        self._allowed(call, parsed.request.model)
        completion_id = f"chatcmpl-{call.record.request_id}"
        created = int(time.time())
        model = parsed.request.model
        if not parsed.stream:
            output = await self._generate(call, parsed)
            return call.json(openai_wire.chat_completion(output, model, completion_id, created))
        stream = openai_wire.ChatStream(model, completion_id, created, parsed.include_usage)
        return await self._stream(call, request, parsed, stream.chunk, stream.end, stream.error)

    async def _messages_call(self, call: _Call, request: web.Request) -> web.StreamResponse:
        parsed = call.parsed = anthropic_wire.parse_messages(await self._body(request))
        self._allowed(call, parsed.request.model)
        message_id = f"msg_{call.record.request_id}"
        model = parsed.request.model
        if not parsed.stream:
            output = await self._generate(call, parsed)
            return call.json(anthropic_wire.message_body(output, model, message_id))
        stream = anthropic_wire.MessageStream(model, message_id)
        return await self._stream(call, request, parsed, stream.chunk, stream.end, stream.error)

    async def _generate(self, call: _Call, parsed: GenerationCall) -> ModelOutput:
        context = parsed.request.context
        note_context(context.request_id, context.user, context.metadata)

        async def started(headers: ResponseHeaders) -> None:
            call.headers.update(headers)

        output = await self._backend.generate(parsed.request, started, _tenant())
        _count_usage(call.record, output.usage)
        return output

    async def _stream(
        self,
        call: _Call,
        request: web.Request,
        parsed: GenerationCall,
        encode: Callable[[ModelOutput], bytes],
        end: Callable[[], bytes],
        error_event: Callable[[HttpError], bytes],
    ) -> web.StreamResponse:
        """The response's status and headers (its rate limits among them) go with the first
        message of the stream: a failure before it (a refusal, an upstream's 429 or outage before
        its first token) is a whole error response with its own status, which the SDKs retry as
        they retry a unary call's; after it, a failure is the API's error event, and the stream
        ends. Holding the headers costs no latency: nothing could follow them before the first
        message."""
        context = parsed.request.context
        note_context(context.request_id, context.user, context.metadata)
        response = web.StreamResponse(headers={**call.headers, **_SSE_HEADERS})
        record, observer = call.record, self._observer

        async def started(headers: ResponseHeaders) -> None:
            response.headers.update(headers)

        usage: Usage | None = None
        try:
            chunks: AsyncGenerator[ModelOutput, None]
            async with aclosing(
                self._backend.generate_stream(parsed.request, started, _tenant())
            ) as chunks:
                async for chunk in chunks:
                    if not response.prepared:
                        await response.prepare(request)
                    observer.streamed(record, chunk)
                    if chunk.usage is not None:
                        usage = chunk.usage
                    data = encode(chunk)
                    if data:
                        await response.write(data)
            if not response.prepared:
                await response.prepare(request)
            await response.write(end())
        except ConnectionError:
            record.code = "CANCELLED"  # the caller left mid-answer
            return response
        except Exception as error:
            if not response.prepared:
                raise
            await response.write(error_event(call.failed(error)))
        finally:
            _count_usage(record, usage)
        await response.write_eof()
        return response

    # --- embeddings, counting, models ---------------------------------------------------------

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        async def work(call: _Call, request: web.Request) -> web.StreamResponse:
            embed, encoding = openai_wire.parse_embeddings(await self._body(request))
            self._allowed(call, embed.model)

            async def started(headers: ResponseHeaders) -> None:
                call.headers.update(headers)

            embeddings = await self._backend.embed(embed, started, _tenant())
            _count_usage(call.record, embeddings.usage)
            return call.json(openai_wire.embeddings_body(embeddings, embed.model, encoding))

        return await self._serve(request, _OPENAI, work)

    async def _count_tokens(self, request: web.Request) -> web.StreamResponse:
        async def work(call: _Call, request: web.Request) -> web.StreamResponse:
            counted = anthropic_wire.parse_count_tokens(await self._body(request))
            self._allowed(call, counted.model)
            count = await self._backend.count_token(counted.model, counted.messages)
            return call.json(anthropic_wire.count_tokens_body(count))

        return await self._serve(request, _ANTHROPIC, work)

    async def _listed(self) -> list[ModelMetadata]:
        """The models the caller's key may use."""
        return [m for m in await self._backend.list_models() if allow_list_refusal(m.model) is None]

    async def _models(self, request: web.Request) -> web.StreamResponse:
        api = _api_of(request)

        async def work(call: _Call, _request: web.Request) -> web.StreamResponse:
            models = await self._listed()
            wire = anthropic_wire if api is _ANTHROPIC else openai_wire
            return call.json(wire.model_list(models))

        return await self._serve(request, api, work)

    async def _model(self, request: web.Request) -> web.StreamResponse:
        api = _api_of(request)
        name = request.match_info["model"]

        async def work(call: _Call, _request: web.Request) -> web.StreamResponse:
            call.record.model = self._model_label(name)
            models = {m.model: m for m in await self._listed()}
            if name not in models:
                raise ModelNotFound(name, sorted(models))
            wire = anthropic_wire if api is _ANTHROPIC else openai_wire
            return call.json(wire.model_object(models[name]))

        return await self._serve(request, api, work)

    async def _no_route(self, request: web.Request) -> web.StreamResponse:
        """404 for a path neither API has, 405 for a method a path does not take: in the API's
        shape, after the key check (a caller without a key learns nothing more)."""
        api = _api_of(request)

        async def work(call: _Call, _request: web.Request) -> web.StreamResponse:
            known = request.path in self._paths or request.path.startswith("/v1/models/")
            status, code = (405, "UNIMPLEMENTED") if known else (404, "NOT_FOUND")
            what = (
                f"{request.method} is not a method of {request.path}"
                if known
                else f"{request.path} is not a path of this server (the OpenAI API is under /v1, "
                "the Anthropic API at /v1/messages)"
            )
            call.record.code = code
            return call.error_response(HttpError(status, code, what))

        return await self._serve(request, api, work)


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

"""The aiohttp client the HTTP providers (openai, anthropic) share: one home for each piece.

- one `aiohttp.ClientSession` per configured model, which is that model's connection pool (aiohttp,
  not httpx: its C HTTP parser costs a fifth of httpx's CPU per call, bench/http_clients.py);
- one POST as JSON or as server-sent events (http/sse.py), failures as typed errors
  (http/errors.py), retried by http/retry.py;
- token counting with offline tiktoken on the executor, and estimated usage when the upstream
  sends none.

Options live in http/options.py. Cancellation: every upstream request is an aiohttp call awaited
inside the provider's coroutine or async generator; when the caller cancels or its deadline passes,
`CancelledError` arrives at that await, and a response not read to its end is closed, which closes
its connection (a half-read response is never returned to the pool). Backoff sleeps are plain
`asyncio.sleep`, so they are cancelled the same way.
"""

from __future__ import annotations

import json
import logging
import urllib.request
from abc import abstractmethod
from collections.abc import AsyncGenerator, Mapping, Sequence
from concurrent.futures import Executor
from functools import partial
from typing import Any, ClassVar, Generic, Protocol, Self, TypeVar
from urllib.parse import urlsplit

import aiohttp

from modelwire.core import errors
from modelwire.core.deadline import remaining_s
from modelwire.core.dispatch import request_sent
from modelwire.core.settings import ModelConfig
from modelwire.core.types import (
    Capability,
    ModelMessage,
    ModelMetadata,
    ModelOutput,
    ModelRequest,
    TokenCount,
    Usage,
)
from modelwire.observe.tracing import inject_trace_headers
from modelwire.providers.base import ProxyLLMClient
from modelwire.providers.http.errors import (
    Redact,
    clean_message,
    error_codes,
    error_for_status,
    http_error_from_code,
    json_or_none,
    message_from_body,
    message_from_payload,
    parse_retry_after,
)
from modelwire.providers.http.options import HttpParams, remote_limits
from modelwire.providers.http.retry import RetryPolicy, retrying_call, retrying_stream
from modelwire.providers.http.sse import (
    MAX_UPSTREAM_READ,
    SSEEvent,
    iter_lines,
    iter_sse,
    upstream_json,
)
from modelwire.tokenize.tiktoken_counter import count_tokens

logger = logging.getLogger(__name__)

# Error bodies are read up to this size; the message shown to the caller is cut shorter.
_MAX_ERROR_BODY = 64 * 1024


def error_for_transport(
    error: aiohttp.ClientError, timeout_s: float, redact: Redact, streaming: bool
) -> errors.ModelwireError:
    """A failure below HTTP: the configured timeout is DEADLINE_EXCEEDED, the rest UNAVAILABLE."""
    detail = clean_message(str(error), redact) or type(error).__name__
    if isinstance(error, aiohttp.ConnectionTimeoutError):
        return errors.UpstreamUnavailable(
            f"cannot connect to upstream within timeout_s={timeout_s:g}s"
        )
    if isinstance(error, aiohttp.ServerTimeoutError):
        if streaming:
            return errors.DeadlineExceeded(
                f"upstream stayed silent for timeout_s={timeout_s:g}s while streaming, before or "
                f"between events ({type(error).__name__})"
            )
        return errors.DeadlineExceeded(
            f"upstream stayed silent for timeout_s={timeout_s:g}s ({type(error).__name__}); a "
            "unary call without a deadline waits at most that long for the whole answer: set a "
            "deadline to wait longer"
        )
    if isinstance(error, aiohttp.ClientConnectorError):
        return errors.UpstreamUnavailable(f"cannot connect to upstream: {detail}")
    return errors.UpstreamUnavailable(
        f"upstream connection failed ({type(error).__name__}): {detail}"
    )


class ProviderParams(Protocol):
    """A provider's parsed options: the shared HTTP ones and its own."""

    @property
    def http(self) -> HttpParams: ...


P = TypeVar("P", bound=ProviderParams)


async def _headers_sent(
    session: aiohttp.ClientSession, context: object, params: aiohttp.TraceRequestHeadersSentParams
) -> None:
    request_sent()


# Tells the worker when a request reaches the upstream (core/dispatch.py): a call cut off before
# that is charged no tokens.
_DISPATCH_TRACE = aiohttp.TraceConfig()
_DISPATCH_TRACE.on_request_headers_sent.append(_headers_sent)
_DISPATCH_TRACE.freeze()


class HttpProxyClient(ProxyLLMClient, Generic[P]):
    """A remote model behind an HTTP API: one connection pool, typed errors, retries, counting."""

    signals_dispatch: ClassVar[bool] = True

    # The capabilities a model has unless its configuration says otherwise, and all it may have.
    default_capabilities: ClassVar[tuple[Capability, ...]]
    supported_capabilities: ClassVar[frozenset[Capability]]

    def __init__(
        self, metadata: ModelMetadata, executor: Executor, options: P, max_concurrency: int
    ) -> None:
        super().__init__(metadata, executor)
        self._options = options
        params = self._params = options.http
        self._retry = RetryPolicy(max_retries=params.max_retries, backoff_s=params.retry_backoff_s)
        self._max_connections = 2 * max_concurrency + 2
        # timeout_s bounds connecting (waiting for a pooled connection included) and each silence
        # of the upstream; a unary call with a deadline waits for its answer as long as that allows.
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=params.timeout_s, sock_read=params.timeout_s
        )
        self._unary_timeout = aiohttp.ClientTimeout(
            total=None, connect=params.timeout_s, sock_read=None
        )
        self._session: aiohttp.ClientSession | None = None
        self._proxy = _proxy_for(params.api_base)

    @classmethod
    def new_client(cls, params: ModelConfig, executor: Executor) -> Self:
        options = cls.read_options(params)
        context_length, max_output_tokens = remote_limits(params)
        metadata = ModelMetadata(
            model=params.name,
            provider=cls.provider,
            context_length=context_length,
            max_output_tokens=max_output_tokens,
            capabilities=params.capabilities_within(
                cls.default_capabilities, cls.supported_capabilities
            ),
            metadata={"upstream_model": options.http.upstream_model, **cls.metadata_extra(options)},
        )
        return cls(metadata, executor, options, params.max_concurrency)

    @classmethod
    @abstractmethod
    def read_options(cls, config: ModelConfig) -> P:
        """The model's options, checked: the shared keys (`read_http_params`) and the provider's."""

    @classmethod
    def metadata_extra(cls, options: P) -> dict[str, str]:
        """What the model's metadata tells beyond its upstream model."""
        return {}

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(model={self.default_model!r}, "
            f"api_base={self._params.api_base!r})"
        )

    @property
    def upstream_model(self) -> str:
        return self._params.upstream_model

    def _http(self) -> aiohttp.ClientSession:
        """Made on first use, inside the event loop it belongs to (aiohttp ties it to one)."""
        if self._session is None:
            # Admission bounds in-flight calls to max_concurrency; the margin covers connections
            # that are still closing while their slot is reused.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections, limit_per_host=0),
                headers=self._params.headers,
                timeout=self._timeout,
                # Not trust_env: aiohttp would read ~/.netrc and the proxy variables on the pool at
                # every request (a tenth of a call's CPU); the proxy is resolved once
                # (`_proxy_for`).
                trust_env=False,
                json_serialize=_json_text,
                trace_configs=[_DISPATCH_TRACE],
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _redact(self, text: str) -> str:
        return self._params.api_key.redact(text) if self._params.api_key is not None else text

    # --- counting

    async def warm_up(self) -> None:
        """Loads the tokenizer before the worker says SERVING: o200k takes seconds to load, and a
        short prompt is counted on the event loop, so the first call would stall every other."""
        await self.count_with("", partial(count_tokens, self.upstream_model, ""))

    async def count_token(self, model: str, prompt: str | Sequence[ModelMessage]) -> TokenCount:
        return await self.count_with(prompt, partial(count_tokens, self.upstream_model, prompt))

    async def estimate_usage(self, messages: Sequence[ModelMessage], completion: str) -> Usage:
        """Usage the worker counted itself, for an upstream that reported none."""
        try:
            prompt = await self.count_with(
                messages, partial(count_tokens, self.upstream_model, messages)
            )
            generated = (
                await self.count_with(
                    completion, partial(count_tokens, self.upstream_model, completion)
                )
                if completion
                else None
            )
        except errors.TokenizerUnavailable as error:
            # The completion was delivered; a count the worker cannot make must not fail it.
            logger.warning("model %s: cannot estimate usage: %s", self.default_model, error)
            return Usage(estimated=True)
        return Usage(
            prompt_tokens=prompt.count,
            completion_tokens=generated.count if generated else 0,
            estimated=True,
        )

    # --- one attempt of a call; retries wrap these

    def _status_error(self, response: aiohttp.ClientResponse, body: bytes) -> errors.ModelwireError:
        message = message_from_body(body, self._redact)
        error = error_for_status(
            response.status,
            message,
            parse_retry_after(response.headers),
            self._params,
            error_codes(json_or_none(body)),
        )
        logger.info(
            "model %s: upstream answered HTTP %d: %s", self.default_model, response.status, error
        )
        return error

    def _json_instead_of_events(self, raw: bytes) -> errors.ModelwireError:
        payload = json_or_none(raw)
        has_error = isinstance(payload, dict) and payload.get("error")
        message = message_from_payload(payload, self._redact) if has_error else None
        if message is not None:
            return http_error_from_code(None, message, self._params, error_codes(payload))
        return errors.UpstreamUnavailable(
            f"upstream answered a stream request with a JSON body of {len(raw)} bytes instead of "
            "an event stream (a server that ignores stream=true?)"
        )

    def _transport_error(
        self, error: aiohttp.ClientError, streaming: bool
    ) -> errors.ModelwireError:
        mapped = error_for_transport(error, self._params.timeout_s, self._redact, streaming)
        logger.info("model %s: upstream call failed: %s", self.default_model, mapped)
        return mapped

    async def post_json(self, url: str, body: dict[str, Any], headers: Mapping[str, str]) -> Any:
        """One unary POST; any failure leaves as a typed error. A unary completion arrives all at
        once, after the whole generation: its wait is bounded by the caller's deadline (the edge's
        timeout cancels it), and by `timeout_s` only for a call without one."""
        timeout = self._timeout if remaining_s() is None else self._unary_timeout
        try:
            async with self._http().post(
                url,
                json=body,
                headers=_outgoing(headers),
                timeout=timeout,
                allow_redirects=False,
                proxy=self._proxy,
            ) as response:
                if not 200 <= response.status < 300:
                    raise self._status_error(response, await _read_capped(response))
                raw = await _read_answer(response)
        except aiohttp.ClientError as error:
            raise self._transport_error(error, streaming=False) from None
        try:
            return upstream_json(raw)
        except ValueError as error:
            kind = response.headers.get("content-type", "no content type")
            raise errors.UpstreamUnavailable(
                f"upstream sent a response that is not JSON ({error}; {kind}, {len(raw)} bytes)"
            ) from None

    async def post_events(
        self, url: str, body: dict[str, Any], headers: Mapping[str, str]
    ) -> AsyncGenerator[SSEEvent, None]:
        """One streaming POST as server-sent events; closing the generator closes the connection."""
        try:
            async with self._http().post(
                url, json=body, headers=_outgoing(headers), allow_redirects=False, proxy=self._proxy
            ) as response:
                try:
                    if not 200 <= response.status < 300:
                        raise self._status_error(response, await _read_capped(response))
                    if response.headers.get("content-type", "").startswith("application/json"):
                        # Some servers answer a stream request with a plain JSON error and status
                        # 200, others with a whole completion (they ignore stream=true): never
                        # quoted.
                        raw = await _read_capped(response)
                        raise self._json_instead_of_events(raw)
                    async for event in iter_sse(iter_lines(response.content.iter_any())):
                        yield event
                finally:
                    if not response.content.at_eof():
                        response.close()  # half read: the connection is closed, never pooled
        except aiohttp.ClientError as error:
            raise self._transport_error(error, streaming=True) from None

    # --- the calls: shared flow, the provider supplies its wire format

    _url: str

    @abstractmethod
    def _headers(self) -> dict[str, str]:
        """Authentication and version headers of every request."""

    @abstractmethod
    def _body(self, request: ModelRequest, stream: bool) -> dict[str, Any]:
        """The JSON request body."""

    @abstractmethod
    async def _completion(self, request: ModelRequest, payload: Any) -> ModelOutput:
        """The domain output of a unary response's JSON."""

    @abstractmethod
    def _stream_once(
        self, request: ModelRequest, body: dict[str, Any]
    ) -> AsyncGenerator[ModelOutput, None]:
        """One streaming attempt: deltas, then a final chunk with finish_reason and usage."""

    async def generate(self, request: ModelRequest) -> ModelOutput:
        """One non-streaming upstream call, so the usage is the upstream's own."""
        body = self._body(request, stream=False)
        payload = await retrying_call(
            self._retry,
            self.default_model,
            lambda: self.post_json(self._url, body, self._headers()),
        )
        return await self._completion(request, payload)

    async def generate_stream(self, request: ModelRequest) -> AsyncGenerator[ModelOutput, None]:
        body = self._body(request, stream=True)
        async for chunk in retrying_stream(
            self._retry, self.default_model, lambda: self._stream_once(request, body)
        ):
            yield chunk


def _outgoing(headers: Mapping[str, str]) -> dict[str, str]:
    """The request's headers plus W3C `traceparent` of the current upstream span, if tracing is
    on."""
    outgoing = dict(headers)
    inject_trace_headers(outgoing)
    return outgoing


def _proxy_for(api_base: str) -> str | None:
    """The proxy HTTPS_PROXY / HTTP_PROXY / ALL_PROXY name for `api_base`, unless NO_PROXY exempts
    its host: read once at start, as operators expect of an HTTP client."""
    parts = urlsplit(api_base)
    if parts.hostname is None or urllib.request.proxy_bypass(parts.hostname):
        return None
    proxies = urllib.request.getproxies()
    return proxies.get(parts.scheme) or proxies.get("all")


def _json_text(body: Any) -> str:
    """Request bodies compact and UTF-8, without NaN (which is not JSON)."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


async def _read_upto(response: aiohttp.ClientResponse, limit: int) -> tuple[bytes, bool]:
    """The body's first `limit` bytes, and whether it has more: never more than one network
    chunk past `limit` is read."""
    body = bytearray()
    async for part in response.content.iter_any():
        body += part
        if len(body) > limit:
            return bytes(body[:limit]), True
    return bytes(body), False


async def _read_capped(response: aiohttp.ClientResponse) -> bytes:
    """An error body, cut at _MAX_ERROR_BODY (only its start becomes the message)."""
    body, _ = await _read_upto(response, _MAX_ERROR_BODY)
    return body


async def _read_answer(response: aiohttp.ClientResponse) -> bytes:
    """A unary answer, at most MAX_UPSTREAM_READ bytes; a longer one is refused as soon as its
    Content-Length or its bytes say so, and its connection closed."""
    limit = MAX_UPSTREAM_READ
    if response.content_length is None or response.content_length <= limit:
        body, more = await _read_upto(response, limit)
        if not more:
            return body
    response.close()
    raise errors.UpstreamUnavailable(
        f"upstream sent a response larger than {limit} bytes ({limit / 2**20:g} MiB), the most "
        "the worker reads of one answer (a broken upstream or proxy?)"
    )

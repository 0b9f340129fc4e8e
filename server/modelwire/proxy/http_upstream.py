"""What the HTTP providers (openai, anthropic) share: one home for each piece.

- configuration keys every remote provider has (`api_base`, `api_key_env`, `upstream_model`,
  `timeout_s`, `max_retries`, `retry_backoff_s`, `headers`) and the API key as a `Secret`;
- one `aiohttp.ClientSession` per configured model, which is that model's connection pool (aiohttp,
  not httpx: its C HTTP parser costs a fifth of httpx's CPU per call, bench/http_clients.py);
- a small server-sent-events parser, over lines split by the SSE rules (`\r\n`, `\r` or `\n`);
- HTTP status / transport failure → typed error (`errors.*`), `Retry-After` parsing;
- retry with backoff, only for retryable failures and only before the first streamed token;
- token counting with offline tiktoken on the executor, and estimated usage when the upstream
  sends none.

Cancellation: every upstream request is an aiohttp call awaited inside the provider's coroutine or
async generator; when the caller cancels or its deadline passes, `CancelledError` arrives at that
await, and a response not read to its end is closed, which closes its connection (a half-read
response is never returned to the pool). Backoff sleeps are plain `asyncio.sleep`, so they are
cancelled the same way.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import json
import logging
import math
import os
import re
import time
from abc import abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from concurrent.futures import Executor
from contextlib import aclosing
from dataclasses import dataclass, field
from functools import partial
from typing import Annotated, Any, TypeVar
import urllib.request
from urllib.parse import urlsplit

import aiohttp
from pydantic import Field, StrictFloat, StrictInt, StrictStr, field_validator
from pydantic.dataclasses import dataclass as pydantic_dataclass

from modelwire.core import errors
from modelwire.core.backoff import backoff_delay
from modelwire.core.deadline import remaining_s
from modelwire.core.redaction import scrub
from modelwire.core.settings import SECTION, ModelConfig, set_env
from modelwire.core.types import ModelMessage, ModelMetadata, ModelOutput, ModelRequest, TokenCount, Usage
from modelwire.observe.tracing import inject_trace_headers
from modelwire.proxy.base import MessageConverter, ProxyLLMClient
from modelwire.tokenize.tiktoken_counter import count_tokens

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 60.0
DEFAULT_MAX_RETRIES = 2
DEFAULT_RETRY_BACKOFF_S = 0.5
# The longest the worker waits before one retry; an upstream asking for a longer Retry-After is
# answered at once with RESOURCE_EXHAUSTED and that delay, so the caller decides.
MAX_RETRY_WAIT_S = 8.0
# A retry is made only when at least this much of the caller's time is left after its wait.
MIN_ATTEMPT_S = 0.25
# The delay a 429 without Retry-After suggests to the caller.
DEFAULT_RETRY_AFTER_S = 1.0
# Remote models are not asked for more than this unless `max_output_tokens` says otherwise: every
# current OpenAI-compatible and Anthropic model accepts it, while "the whole context" is refused.
DEFAULT_MAX_OUTPUT_TOKENS = 4096
# An HTTP header name (RFC 9110 token).
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# Error bodies are read up to this size; the message shown to the caller is cut shorter.
_MAX_ERROR_BODY = 64 * 1024
# The most of one upstream answer held in memory: a unary response body, or one line of an event
# stream while waiting for its end. More is a broken (or hostile) upstream or proxy: UNAVAILABLE.
MAX_UPSTREAM_READ = 16 * 1024 * 1024
_MAX_MESSAGE = 1000
_REDACTED = "[redacted]"
# A key's first characters, this many or more, where a text ends or was cut are redacted too.
_MIN_KEY_PREFIX = 8
# Any run of this many of a key's characters is redacted wherever it stands (12 characters of a
# random key are no coincidence; fewer, as OpenAI's own "sk-proj-****abcd", are left alone).
_MIN_KEY_RUN = 12
# How a shortened text marks its cut (this module's `…`, and upstreams' own).
_CUT_MARKS = ("…", "...")
# A function that removes the worker's API key from a text (`Secret.redact`, or none configured).
Redact = Callable[[str], str]


class Secret:
    """An API key: its value never shows in a repr, a log line or an error message."""

    __slots__ = ("_value", "_encoded")

    def __init__(self, value: str) -> None:
        self._value = value
        self._encoded = _base64_forms(value)

    def reveal(self) -> str:
        return self._value

    def redact(self, text: str) -> str:
        """`text` without the key: whole; base64-encoded (a proxy or server echoing a credential
        header encoded); any 12 or more of its characters in a row, wherever they stand (a key
        split by a line break, or shown by its end); and its first 8 or more characters where
        they end the text or run into a cut mark (an upstream that shortened its own echo)."""
        key = self._value
        if not key:
            return text
        text = text.replace(key, _REDACTED)
        if len(key) <= _MIN_KEY_PREFIX:
            return text
        for encoded in self._encoded:
            text = text.replace(encoded, _REDACTED)
        text = _redact_runs(text, key)
        start = text.find(key[:_MIN_KEY_PREFIX])
        while start >= 0:
            end = start + _MIN_KEY_PREFIX
            while end < len(text) and end - start < len(key) and text[end] == key[end - start]:
                end += 1
            if end == len(text) or text.startswith(_CUT_MARKS, end):
                text = text[:start] + _REDACTED + text[end:]
                end = start + len(_REDACTED)
            start = text.find(key[:_MIN_KEY_PREFIX], end)
        return text

    def __repr__(self) -> str:
        return "Secret('[redacted]')"

    __str__ = __repr__


def _base64_forms(key: str) -> tuple[str, ...]:
    """How the key looks inside base64 text, standard and URL-safe: wherever the key starts in
    the encoded bytes, one of its three alignments is encoded whole, so each is searched for."""
    raw = key.encode("utf-8")
    forms: list[str] = []
    for offset in range(3):
        piece = raw[offset:]
        piece = piece[: len(piece) - len(piece) % 3]
        if len(piece) >= _MIN_KEY_RUN:
            encoded = base64.b64encode(piece).decode("ascii")
            forms += (encoded, encoded.replace("+", "-").replace("/", "_"))
    return tuple(dict.fromkeys(forms))


def _redact_runs(text: str, key: str) -> str:
    """`text` with every run of _MIN_KEY_RUN or more consecutive characters of `key` redacted."""
    masked = bytearray(len(text))
    seen: set[str] = set()
    for offset in range(len(key) - _MIN_KEY_RUN + 1):
        piece = key[offset : offset + _MIN_KEY_RUN]
        if piece in seen:
            continue
        seen.add(piece)
        where = text.find(piece)
        while where >= 0:
            end, source = where + _MIN_KEY_RUN, offset + _MIN_KEY_RUN
            while end < len(text) and source < len(key) and text[end] == key[source]:
                end, source = end + 1, source + 1
            masked[where:end] = b"\x01" * (end - where)
            where = text.find(piece, where + 1)
    if not any(masked):
        return text
    out: list[str] = []
    for index, char in enumerate(text):
        if not masked[index]:
            out.append(char)
        elif index == 0 or not masked[index - 1]:
            out.append(_REDACTED)
    return "".join(out)


# ---------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class HttpParams:
    """The keys every HTTP provider reads; `api_key` is None when no `api_key_env` is configured."""

    provider: str
    api_base: str
    api_key: Secret | None
    api_key_env: str | None
    upstream_model: str
    timeout_s: float
    max_retries: int
    retry_backoff_s: float
    headers: dict[str, str]

    @property
    def account(self) -> str:
        """The worker's account with the provider, as an operator finds it (never the key itself)."""
        key = f", key from ${self.api_key_env}" if self.api_key_env else ""
        return f"the worker's {self.provider} account at {urlsplit(self.api_base).hostname}{key}"


@pydantic_dataclass(config=SECTION)
class HttpOptions:
    """The keys every HTTP provider has; a provider's own schema adds its keys to these."""

    api_base: StrictStr | None = None
    api_key_env: StrictStr | None = None
    upstream_model: StrictStr | None = None
    timeout_s: Annotated[StrictFloat, Field(ge=0.001, allow_inf_nan=False)] = DEFAULT_TIMEOUT_S
    max_retries: Annotated[StrictInt, Field(ge=0, le=10)] = DEFAULT_MAX_RETRIES
    retry_backoff_s: Annotated[StrictFloat, Field(ge=0, allow_inf_nan=False)] = DEFAULT_RETRY_BACKOFF_S
    headers: dict[StrictStr, StrictStr] = field(default_factory=dict)

    _api_key_env = field_validator("api_key_env")(set_env)

    @field_validator("headers")
    @classmethod
    def _http_headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if not _HEADER_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not an HTTP header name")
            if any(c in text for c in "\r\n\0"):
                raise ValueError(f"the value of {name!r} holds a line break or NUL")
        return value

    @field_validator("api_base")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"must start with http:// or https://, got {value!r}")
        return value


def read_http_params(config: ModelConfig, options: HttpOptions, default_api_base: str | None) -> HttpParams:
    """The shared keys as the client uses them."""
    api_base = options.api_base or default_api_base
    if api_base is None:
        raise config.error("api_base", f"is required for provider {config.provider!r}")
    return HttpParams(
        provider=config.provider,
        api_base=api_base.rstrip("/"),
        api_key=Secret(os.environ[options.api_key_env]) if options.api_key_env else None,
        api_key_env=options.api_key_env,
        upstream_model=options.upstream_model or config.name,
        timeout_s=options.timeout_s,
        max_retries=options.max_retries,
        retry_backoff_s=options.retry_backoff_s,
        headers=dict(options.headers),
    )


def wire_float(value: float | None) -> float | None:
    """A sampling value as the caller wrote it: the contract's 32-bit floats arrive as 0.8999999761…
    for 0.9, and seven significant digits are all a float32 holds."""
    return None if value is None else float(f"{value:.7g}")


def remote_limits(config: ModelConfig) -> tuple[int, int]:
    """(context_length, max_output_tokens): context_length is required for a remote model."""
    if config.context_length is None:
        raise config.error(
            "context_length",
            f"is required for provider {config.provider!r}: the worker checks each prompt against it "
            "(see the upstream model's documentation)",
        )
    return config.context_length, min(config.max_output_tokens or DEFAULT_MAX_OUTPUT_TOKENS, config.context_length)


# ---------------------------------------------------------------------------------------------
# Server-sent events


@dataclass(frozen=True, slots=True)
class SSEEvent:
    event: str
    data: str


async def iter_lines(chunks: AsyncIterator[bytes]) -> AsyncIterator[str]:
    """The lines of a byte stream, each ended by `\r\n`, `\r` or `\n` (as SSE allows), also when a
    chunk boundary splits a `\r\n`; a last line without an ending is yielded at the end."""
    pending = b""
    async for chunk in chunks:
        lines = (pending + chunk if pending else chunk).splitlines(keepends=True)
        pending = b""
        if not lines:
            continue
        if not lines[-1].endswith(b"\n"):  # unfinished, or a \r whose \n may open the next chunk
            pending = lines.pop()
            if len(pending) > MAX_UPSTREAM_READ:
                raise errors.UpstreamUnavailable(
                    f"upstream sent an event stream line longer than {MAX_UPSTREAM_READ} bytes"
                )
        for line in lines:
            yield line.rstrip(b"\r\n").decode("utf-8", errors="replace")
    if pending:
        yield pending.rstrip(b"\r\n").decode("utf-8", errors="replace")


async def iter_sse(lines: AsyncIterator[str]) -> AsyncIterator[SSEEvent]:
    """Events of a text/event-stream, by the WHATWG rules (comments and `id`/`retry` ignored).

    An event is dispatched at its blank line; an event cut off by the end of the stream is
    dropped, as the standard says, so a truncated stream shows as a stream without its end.
    """
    event = ""
    data: list[str] = []
    async for line in lines:
        if not line:
            if data:
                yield SSEEvent(event or "message", "\n".join(data))
            event, data = "", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value


async def drain(events: AsyncIterator[SSEEvent], limit_s: float = 0.5) -> None:
    """Reads what follows a stream's end marker, so that its connection can go back to the pool.

    Bounded and silent: the completion was already delivered, a slow or broken tail only costs
    the connection (it is closed instead of reused).
    """
    try:
        async with asyncio.timeout(limit_s):
            async for _ in events:
                pass
    except (TimeoutError, errors.ModelwireError):
        pass


def upstream_json(data: str | bytes) -> Any:
    """`json.loads` of an upstream's text, where nesting too deep for the parser (RecursionError)
    is a ValueError like any other malformed JSON: the upstream's fault, never INTERNAL."""
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("nested deeper than the parser's limit") from None


def parse_json_event(event: SSEEvent) -> Any:
    try:
        return upstream_json(event.data)
    except ValueError as error:
        # The event may hold completion text: its size and the parser's reason (which quotes no
        # text) are told, never its content.
        raise errors.UpstreamUnavailable(
            f"upstream sent a malformed event stream: a {event.event!r} event of {len(event.data)} "
            f"characters is not JSON ({error})"
        ) from None


# ---------------------------------------------------------------------------------------------
# Errors


def _shorten(text: str, limit: int = _MAX_MESSAGE) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _without_echo(detail: Any) -> Any:
    """FastAPI's validation details (vLLM, llama.cpp's server) without the `input` and `ctx` they
    echo from the request: where and what, never the caller's text."""
    if isinstance(detail, list):
        return [
            {key: value for key, value in item.items() if key not in ("input", "ctx", "url")} if isinstance(item, dict) else item
            for item in detail
        ]
    return detail


# The user-information part of a URL (`http://user:password@proxy:3128`): aiohttp quotes a
# proxy's URL, credentials included, when the proxy refuses a CONNECT.
_URL_USERINFO = re.compile(r"(?<=://)[^\s/?#@'\"<>]+@")


def clean_message(text: str, redact: Redact) -> str:
    """An upstream's text as a caller or a log may see it: the API key redacted from the whole
    text (a cut through the key would leave a piece no longer recognised) and a URL's user and
    password (a proxy's), cut short, redacted again (a cut may end in the start of a key the
    upstream echoed in part), and scrubbed of the caller's request text."""
    text = _URL_USERINFO.sub(_REDACTED + "@", redact(text))
    return scrub(redact(_shorten(text)))


def message_from_payload(payload: Any, redact: Redact) -> str | None:
    """The human message in an error body: OpenAI's and Anthropic's `error.message`, FastAPI's
    `detail`, a bare `error` or `message` string; cleaned of the key and the request text."""
    message = _message_in(payload)
    return None if message is None else clean_message(message, redact)


def _message_in(payload: Any) -> str | None:
    if not isinstance(payload, dict):
        return None
    error = payload.get("error")
    if isinstance(error, dict):
        message = error.get("message")
        if isinstance(message, str) and message:
            return message
    if isinstance(error, str) and error:
        return error
    for key in ("message", "detail"):
        value = payload.get(key)
        if isinstance(value, str) and value:
            return value
        if value:
            return _detail_text(value)
    return None


def _detail_text(detail: Any) -> str:
    """A structured `detail` as JSON text; one nested too deeply to serialise is described."""
    try:
        return json.dumps(_without_echo(detail), ensure_ascii=False)
    except RecursionError:
        return "(an error detail nested too deeply to show)"


def json_or_none(body: bytes) -> Any:
    try:
        return upstream_json(body)
    except ValueError:
        return None


def error_codes(payload: Any) -> str:
    """`error.code` and `error.type` of a JSON error body (OpenAI's `context_length_exceeded`,
    llama.cpp's `exceed_context_size_error`), or ""."""
    error = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(error, dict):
        return ""
    return " ".join(str(error[key]) for key in ("code", "type") if isinstance(error.get(key), str))


def message_from_body(body: bytes, redact: Redact) -> str:
    """The message of an error body, cleaned of the key and the caller's request text."""
    message = message_from_payload(json_or_none(body), redact)
    return message or clean_message(body.decode("utf-8", errors="replace"), redact)


def _seconds(text: str, scale: float = 1.0) -> float | None:
    """A delay header's number of seconds, capped at a day; not a number, negative or NaN: None."""
    try:
        value = float(text) * scale
    except ValueError:
        return None
    if math.isnan(value) or value < 0:
        return None
    return min(value, errors.MAX_RETRY_DELAY_S)


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from `retry-after-ms` (OpenAI), or `Retry-After` as seconds or an HTTP date;
    `inf` and huge values are capped at a day, so no delay the worker passes on can overflow."""
    lowered = {key.lower(): value for key, value in headers.items()}
    milliseconds = lowered.get("retry-after-ms")
    if milliseconds:
        value = _seconds(milliseconds, 1e-3)
        if value is not None:
            return value
    retry_after = lowered.get("retry-after")
    if not retry_after:
        return None
    seconds = _seconds(retry_after)
    if seconds is not None:
        return seconds
    try:
        when = email.utils.parsedate_to_datetime(retry_after)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return min(max(0.0, when.timestamp() - time.time()), errors.MAX_RETRY_DELAY_S)


# The machine codes (`error.code`, `error.type`) saying a prompt and its max_tokens do not fit:
# OpenAI's (and Azure's), and llama.cpp's server's.
_CONTEXT_CODES = frozenset({"context_length_exceeded", "exceed_context_size_error"})
# The whole sentences of upstreams that send no such code: vLLM and OpenAI-compatible servers
# ("This model's maximum context length is 4096 tokens. However, …"; vLLM's own check before
# sampling: "The decoder prompt (length 5000) is longer than the maximum model length of 4096"),
# llama.cpp's server
# ("request (4476 tokens) exceeds the available context size (4096 tokens)") and Anthropic
# ("prompt is too long: 201234 tokens > 200000 maximum", "input length and `max_tokens` exceed
# context limit: 180000 + 30000 > 200000, …"). A mere mention ("context_size" quoted from a
# schema) is no context refusal.
_CONTEXT_SENTENCE = re.compile(
    r"maximum context length is \d+ tokens"
    r"|prompt \(length \d+\) is longer than the maximum model length of \d+"
    r"|exceeds the available context size"
    r"|prompt is too long: \d+ tokens > \d+ maximum"
    r"|input length and `max_tokens` exceed context limit: \d+ \+ \d+ > \d+",
    re.IGNORECASE,
)


def _says_context_exceeded(message: str, codes: str) -> bool:
    """Whether an upstream error says the prompt and max_tokens do not fit: its machine code, or
    one of the known sentences. `codes` is `error_codes` of the body."""
    coded = not _CONTEXT_CODES.isdisjoint(codes.split())
    return coded or _CONTEXT_SENTENCE.search(message) is not None


def error_for_status(
    status: int, message: str, retry_after_s: float | None, upstream: HttpParams, codes: str = ""
) -> errors.ModelwireError:
    """The one mapping of an upstream HTTP status to a typed error (and so to a gRPC status).
    `codes`: the body's machine-readable error code and type (`error_codes`)."""
    message = _shorten(message) or f"HTTP {status}"
    if status in (401, 403):
        return errors.UpstreamAuthFailed()
    if status == 402:
        return errors.UpstreamAccountProblem(
            f"{upstream.account} cannot pay for model {upstream.upstream_model!r} (HTTP 402): {message}; "
            "the request is fine, the worker's operator must restore the account"
        )
    if status == 404:
        return errors.UpstreamModelNotFound(
            f"upstream has no model {upstream.upstream_model!r} (HTTP 404): {message}; check upstream_model and api_base"
        )
    if status in (400, 413) and _says_context_exceeded(message, codes):
        return errors.UpstreamContextExceeded(
            f"upstream says the prompt and max_new_tokens do not fit model {upstream.upstream_model!r} "
            f"(HTTP {status}): {message}; shorten the messages or lower max_new_tokens"
        )
    if status == 429:
        return errors.UpstreamRateLimited(
            f"upstream rate limit (HTTP 429): {message}",
            retry_after_s=DEFAULT_RETRY_AFTER_S if retry_after_s is None else retry_after_s,
        )
    if status in (408, 409) or status >= 500:
        return errors.UpstreamUnavailable(f"upstream failed (HTTP {status}): {message}")
    if 400 <= status < 500:
        return errors.UpstreamRejected(f"upstream rejected the request (HTTP {status}): {message}")
    return errors.UpstreamUnavailable(f"upstream answered with unexpected HTTP {status}: {message}")


def error_for_transport(
    error: aiohttp.ClientError, timeout_s: float, redact: Redact, streaming: bool
) -> errors.ModelwireError:
    """A failure below HTTP: the configured timeout is DEADLINE_EXCEEDED, the rest UNAVAILABLE."""
    detail = clean_message(str(error), redact) or type(error).__name__
    if isinstance(error, aiohttp.ConnectionTimeoutError):
        return errors.UpstreamUnavailable(f"cannot connect to upstream within timeout_s={timeout_s:g}s")
    if isinstance(error, aiohttp.ServerTimeoutError):
        if streaming:
            return errors.DeadlineExceeded(
                f"upstream stayed silent for timeout_s={timeout_s:g}s while streaming, before or between events ({type(error).__name__})"
            )
        return errors.DeadlineExceeded(
            f"upstream stayed silent for timeout_s={timeout_s:g}s ({type(error).__name__}); a unary call "
            "without a deadline waits at most that long for the whole answer: set a deadline to wait longer"
        )
    if isinstance(error, aiohttp.ClientConnectorError):
        return errors.UpstreamUnavailable(f"cannot connect to upstream: {detail}")
    return errors.UpstreamUnavailable(f"upstream connection failed ({type(error).__name__}): {detail}")


def is_retryable(error: errors.ModelwireError) -> bool:
    return isinstance(error, (errors.Overloaded, errors.UpstreamUnavailable))


# ---------------------------------------------------------------------------------------------
# Retries


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, for rate limits (honouring Retry-After), 408/409/5xx and
    connection failures. Never for 4xx, auth, timeouts, or once a token has been streamed."""

    max_retries: int
    backoff_s: float
    max_wait_s: float = MAX_RETRY_WAIT_S

    def wait_before_retry(self, retries_done: int, error: errors.ModelwireError) -> float | None:
        """Seconds to wait before the next try, or None to give up and raise `error`: also when
        the wait and a short attempt after it do not fit in the caller's remaining time, so the
        caller gets the upstream's answer (a 429's RetryInfo) instead of a passed deadline."""
        if retries_done >= self.max_retries or not is_retryable(error):
            return None
        wait = backoff_delay(retries_done, self.backoff_s, self.max_wait_s)
        if isinstance(error, errors.Overloaded):
            if error.retry_after_s > self.max_wait_s:
                return None
            wait = max(error.retry_after_s, wait)
        remaining = remaining_s()
        if remaining is not None and wait + MIN_ATTEMPT_S > remaining:
            return None
        return wait


async def retrying_call(policy: RetryPolicy, model: str, attempt: Callable[[], Awaitable[T]]) -> T:
    retries = 0
    while True:
        try:
            return await attempt()
        except errors.ModelwireError as error:
            wait = policy.wait_before_retry(retries, error)
            if wait is None:
                raise
            _log_retry(model, error, retries, policy, wait)
        await asyncio.sleep(wait)
        retries += 1


async def retrying_stream(
    policy: RetryPolicy, model: str, attempt: Callable[[], AsyncGenerator[T, None]]
) -> AsyncIterator[T]:
    """Retries a stream only while it has yielded nothing: sent tokens are never repeated."""
    retries = 0
    while True:
        emitted = False
        try:
            async with aclosing(attempt()) as stream:
                async for item in stream:
                    emitted = True
                    yield item
            return
        except errors.ModelwireError as error:
            wait = None if emitted else policy.wait_before_retry(retries, error)
            if wait is None:
                raise
            _log_retry(model, error, retries, policy, wait)
        await asyncio.sleep(wait)
        retries += 1


def _log_retry(model: str, error: errors.ModelwireError, retries: int, policy: RetryPolicy, wait: float) -> None:
    logger.warning(
        "model %s: upstream call failed (%s: %s); retry %d of %d in %.2fs",
        model, type(error).__name__, error, retries + 1, policy.max_retries, wait,
    )


# ---------------------------------------------------------------------------------------------
# The shared client


class HttpProxyClient(ProxyLLMClient):
    """A remote model behind an HTTP API: one connection pool, typed errors, retries, counting."""

    def __init__(self, metadata: ModelMetadata, executor: Executor, params: HttpParams, max_concurrency: int) -> None:
        super().__init__(metadata, executor)
        self._params = params
        self._retry = RetryPolicy(max_retries=params.max_retries, backoff_s=params.retry_backoff_s)
        self._max_connections = 2 * max_concurrency + 2
        # timeout_s bounds connecting (waiting for a pooled connection included) and each silence
        # of the upstream; a unary call with a deadline waits for its answer as long as that allows.
        self._timeout = aiohttp.ClientTimeout(total=None, connect=params.timeout_s, sock_read=params.timeout_s)
        self._unary_timeout = aiohttp.ClientTimeout(total=None, connect=params.timeout_s, sock_read=None)
        self._session: aiohttp.ClientSession | None = None
        self._proxy = _proxy_for(params.api_base)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.default_model!r}, api_base={self._params.api_base!r})"

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
                # every request (a tenth of a call's CPU); the proxy is resolved once (`_proxy_for`).
                trust_env=False,
                json_serialize=_json_text,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _redact(self, text: str) -> str:
        return self._params.api_key.redact(text) if self._params.api_key is not None else text

    # --- counting

    async def count_token(self, model: str, prompt: str | Sequence[ModelMessage]) -> TokenCount:
        return await self.count_with(prompt, partial(count_tokens, self.upstream_model, prompt))

    async def estimate_usage(self, messages: Sequence[ModelMessage], completion: str) -> Usage:
        """Usage the worker counted itself, for an upstream that reported none."""
        try:
            prompt = await self.count_with(messages, partial(count_tokens, self.upstream_model, messages))
            generated = await self.count_with(completion, partial(count_tokens, self.upstream_model, completion)) if completion else None
        except errors.TokenizerUnavailable as error:
            # The completion was delivered; a count the worker cannot make must not fail it.
            logger.warning("model %s: cannot estimate usage: %s", self.default_model, error)
            return Usage(estimated=True)
        return Usage(prompt_tokens=prompt.count, completion_tokens=generated.count if generated else 0, estimated=True)

    # --- one attempt of a call; retries wrap these

    def _status_error(self, response: aiohttp.ClientResponse, body: bytes) -> errors.ModelwireError:
        message = message_from_body(body, self._redact)
        error = error_for_status(
            response.status, message, parse_retry_after(response.headers), self._params, error_codes(json_or_none(body))
        )
        logger.info("model %s: upstream answered HTTP %d: %s", self.default_model, response.status, error)
        return error

    def _json_instead_of_events(self, raw: bytes) -> errors.ModelwireError:
        payload = json_or_none(raw)
        has_error = isinstance(payload, dict) and payload.get("error")
        message = message_from_payload(payload, self._redact) if has_error else None
        if message is not None:
            return http_error_from_code(None, message, self._params, error_codes(payload))
        return errors.UpstreamUnavailable(
            f"upstream answered a stream request with a JSON body of {len(raw)} bytes instead of an event stream "
            "(a server that ignores stream=true?)"
        )

    def _transport_error(self, error: aiohttp.ClientError, streaming: bool) -> errors.ModelwireError:
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
                url, json=body, headers=_outgoing(headers), timeout=timeout, allow_redirects=False, proxy=self._proxy
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
            async with self._http().post(url, json=body, headers=_outgoing(headers), allow_redirects=False, proxy=self._proxy) as response:
                try:
                    if not 200 <= response.status < 300:
                        raise self._status_error(response, await _read_capped(response))
                    if response.headers.get("content-type", "").startswith("application/json"):
                        # Some servers answer a stream request with a plain JSON error and status 200,
                        # others with a whole completion (they ignore stream=true): never quoted.
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
    def _stream_once(self, request: ModelRequest, body: dict[str, Any]) -> AsyncGenerator[ModelOutput, None]:
        """One streaming attempt: deltas, then a final chunk with finish_reason and usage."""

    async def generate(self, request: ModelRequest, message_converter: MessageConverter | None = None) -> ModelOutput:
        """One non-streaming upstream call, so the usage is the upstream's own."""
        request = self.apply_converter(request, message_converter)
        body = self._body(request, stream=False)
        payload = await retrying_call(self._retry, self.default_model, lambda: self.post_json(self._url, body, self._headers()))
        return await self._completion(request, payload)

    async def generate_stream(
        self, request: ModelRequest, message_converter: MessageConverter | None = None
    ) -> AsyncGenerator[ModelOutput, None]:
        request = self.apply_converter(request, message_converter)
        body = self._body(request, stream=True)
        async for chunk in retrying_stream(self._retry, self.default_model, lambda: self._stream_once(request, body)):
            yield chunk


def _outgoing(headers: Mapping[str, str]) -> dict[str, str]:
    """The request's headers plus W3C `traceparent` of the current upstream span, if tracing is on."""
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


def http_error_from_code(code: int | None, message: str, upstream: HttpParams, codes: str = "") -> errors.ModelwireError:
    """An error reported in a successful response (a 200 body, a stream event): mapped as its HTTP
    code would be; `codes` (its machine-readable code and type) can name a context overflow."""
    if code is None or not 400 <= code <= 599:
        code = 400 if _says_context_exceeded(message, codes) else None
    if code is None:
        return errors.UpstreamUnavailable(f"upstream reported an error in a successful response: {_shorten(message)}")
    return error_for_status(code, message, None, upstream, codes)

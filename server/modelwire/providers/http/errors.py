"""An upstream's HTTP status and error body → a typed error (and so a gRPC status), its message
cleaned of the API key and the caller's text; `Retry-After` parsing. Pure mapping, no I/O: the
transport's own failures are client.py's."""

from __future__ import annotations

import email.utils
import json
import math
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

from modelwire.core import errors
from modelwire.core.redaction import scrub
from modelwire.providers.http.options import REDACTED, HttpParams
from modelwire.providers.http.sse import upstream_json

# The delay a 429 without Retry-After suggests to the caller.
DEFAULT_RETRY_AFTER_S = 1.0


_MAX_MESSAGE = 1000


# A function that removes the worker's API key from a text (`Secret.redact`, or none configured).
Redact = Callable[[str], str]


def _shorten(text: str, limit: int = _MAX_MESSAGE) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _without_echo(detail: Any) -> Any:
    """FastAPI's validation details (vLLM, llama.cpp's server) without the `input` and `ctx` they
    echo from the request: where and what, never the caller's text."""
    if isinstance(detail, list):
        return [
            {key: value for key, value in item.items() if key not in ("input", "ctx", "url")}
            if isinstance(item, dict)
            else item
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
    text = _URL_USERINFO.sub(REDACTED + "@", redact(text))
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
            f"{upstream.account} cannot pay for model {upstream.upstream_model!r} (HTTP 402): "
            f"{message}; the request is fine, the worker's operator must restore the account"
        )
    if status == 404:
        return errors.UpstreamModelNotFound(
            f"upstream has no model {upstream.upstream_model!r} (HTTP 404): {message}; check "
            "upstream_model and api_base"
        )
    if status in (400, 413) and _says_context_exceeded(message, codes):
        return errors.UpstreamContextExceeded(
            "upstream says the prompt and max_new_tokens do not fit model "
            f"{upstream.upstream_model!r} (HTTP {status}): {message}; shorten the messages or "
            "lower max_new_tokens"
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


def is_retryable(error: errors.ModelwireError) -> bool:
    return isinstance(error, (errors.Overloaded, errors.UpstreamUnavailable))


def http_error_from_code(
    code: int | None, message: str, upstream: HttpParams, codes: str = ""
) -> errors.ModelwireError:
    """An error reported in a successful response (a 200 body, a stream event): mapped as its HTTP
    code would be; `codes` (its machine-readable code and type) can name a context overflow."""
    if code is None or not 400 <= code <= 599:
        code = 400 if _says_context_exceeded(message, codes) else None
    if code is None:
        return errors.UpstreamUnavailable(
            f"upstream reported an error in a successful response: {_shorten(message)}"
        )
    return error_for_status(code, message, None, upstream, codes)

"""The configuration keys every HTTP provider has, and the API key as a `Secret`."""

from __future__ import annotations

import base64
import os
import re
from dataclasses import dataclass, field
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import Field, StrictFloat, StrictInt, StrictStr, field_validator
from pydantic.dataclasses import dataclass as pydantic_dataclass

from modelwire.core.redaction import masked_text
from modelwire.core.settings import SECTION, ModelConfig, set_env

DEFAULT_TIMEOUT_S = 60.0


DEFAULT_MAX_RETRIES = 2


DEFAULT_RETRY_BACKOFF_S = 0.5


# Remote models are not asked for more than this unless `max_output_tokens` says otherwise: every
# current OpenAI-compatible and Anthropic model accepts it, while "the whole context" is refused.
DEFAULT_MAX_OUTPUT_TOKENS = 4096


# An HTTP header name (RFC 9110 token).
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


REDACTED = "[redacted]"


# A key's first characters, this many or more, where a text ends or was cut are redacted too.
_MIN_KEY_PREFIX = 8
# Any run of this many of a key's characters is redacted wherever it stands (12 characters of a
# random key are no coincidence; fewer, as OpenAI's own "sk-proj-****abcd", are left alone).
_MIN_KEY_RUN = 12


# How a shortened text marks its cut (this module's `…`, and upstreams' own).
_CUT_MARKS = ("…", "...")


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
        text = text.replace(key, REDACTED)
        if len(key) <= _MIN_KEY_PREFIX:
            return text
        for encoded in self._encoded:
            text = text.replace(encoded, REDACTED)
        text = _redact_runs(text, key)
        start = text.find(key[:_MIN_KEY_PREFIX])
        while start >= 0:
            end = start + _MIN_KEY_PREFIX
            while end < len(text) and end - start < len(key) and text[end] == key[end - start]:
                end += 1
            if end == len(text) or text.startswith(_CUT_MARKS, end):
                text = text[:start] + REDACTED + text[end:]
                end = start + len(REDACTED)
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
    return masked_text(text, masked, REDACTED)


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
        """The worker's account with the provider, as an operator finds it (never the key
        itself)."""
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
    retry_backoff_s: Annotated[StrictFloat, Field(ge=0, allow_inf_nan=False)] = (
        DEFAULT_RETRY_BACKOFF_S
    )
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


def read_http_params(
    config: ModelConfig, options: HttpOptions, default_api_base: str | None
) -> HttpParams:
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


def remote_limits(config: ModelConfig) -> tuple[int, int]:
    """(context_length, max_output_tokens): context_length is required for a remote model."""
    if config.context_length is None:
        raise config.error(
            "context_length",
            f"is required for provider {config.provider!r}: the worker checks each prompt against "
            "it (see the upstream model's documentation)",
        )
    return config.context_length, min(
        config.max_output_tokens or DEFAULT_MAX_OUTPUT_TOKENS, config.context_length
    )

"""The configuration keys every HTTP provider has, and the API key as a `Secret`."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import Field, StrictFloat, StrictInt, StrictStr, field_validator
from pydantic.dataclasses import dataclass as pydantic_dataclass

from modelwire.core.settings import SECTION, ModelConfig, set_env

DEFAULT_TIMEOUT_S = 60.0


DEFAULT_MAX_RETRIES = 2


DEFAULT_RETRY_BACKOFF_S = 0.5


# Remote models are not asked for more than this unless `max_output_tokens` says otherwise: every
# current OpenAI-compatible and Anthropic model accepts it, while "the whole context" is refused.
DEFAULT_MAX_OUTPUT_TOKENS = 4096


# An HTTP header name (RFC 9110 token).
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


_REDACTED = "[redacted]"


# A key's first characters, this many or more, where a text ends or was cut are redacted too.
_MIN_KEY_PREFIX = 8


# How a shortened text marks its cut (this module's `…`, and upstreams' own).
_CUT_MARKS = ("…", "...")


class Secret:
    """An API key: its value never shows in a repr, a log line or an error message."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def redact(self, text: str) -> str:
        """`text` without the key: whole, and also its first 8 or more characters where they end
        the text or run into a cut mark (an upstream that shortened its own echo of the key)."""
        key = self._value
        if not key:
            return text
        text = text.replace(key, _REDACTED)
        if len(key) <= _MIN_KEY_PREFIX:
            return text
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


def remote_limits(config: ModelConfig) -> tuple[int, int]:
    """(context_length, max_output_tokens): context_length is required for a remote model."""
    if config.context_length is None:
        raise config.error(
            "context_length",
            f"is required for provider {config.provider!r}: the worker checks each prompt against it "
            "(see the upstream model's documentation)",
        )
    return config.context_length, min(config.max_output_tokens or DEFAULT_MAX_OUTPUT_TOKENS, config.context_length)

"""What both HTTP APIs' codecs and the facade's server share: a generation call as an API asked for
it, an error as an API answers it, and what the facade calls to serve them (a worker's models, or a
gateway's fleet)."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Protocol

from modelwire.core.types import (
    Embeddings,
    EmbedRequest,
    ModelMessage,
    ModelMetadata,
    ModelOutput,
    ModelRequest,
    ResponseHeaders,
    Started,
    TokenCount,
)


@dataclass(frozen=True, slots=True)
class GenerationCall:
    """A generation request decoded from an API's body.

    `origins[i]` is where `request.messages[i]` came from in the body (`"messages[2]"`,
    `"system"`, `"messages[3].content[1]"`), so an error about a domain message names the
    caller's own field. `include_usage`: a stream ends with the usage (OpenAI's
    `stream_options.include_usage`; Anthropic's streams always do)."""

    request: ModelRequest
    stream: bool
    origins: tuple[str, ...] = ()
    include_usage: bool = True


@dataclass(frozen=True, slots=True)
class HttpError:
    """An error as the facade answers it: the HTTP status, the gRPC status name the same failure has
    on the gRPC API (the access line's `code`), a message a caller can act on, the request field it
    is about (`param`, in the API's own terms), and when to retry (`Retry-After`)."""

    status: int
    code: str
    message: str
    param: str | None = None
    retry_after_s: float | None = None
    # More response headers (a quota refusal's x-ratelimit-*).
    headers: ResponseHeaders = ()


class ModelBackend(Protocol):
    """What serves the facade's calls: a worker's WorkerService, or a gateway's fleet. `started` is
    called once the call's work has begun (after admission and its quota), with its response
    headers; `tenant` is whose quota it uses (None without [auth])."""

    async def generate(
        self, request: ModelRequest, started: Started, tenant: str | None
    ) -> ModelOutput: ...

    def generate_stream(
        self, request: ModelRequest, started: Started, tenant: str | None
    ) -> AsyncGenerator[ModelOutput, None]: ...

    async def embed(
        self, request: EmbedRequest, started: Started, tenant: str | None
    ) -> Embeddings: ...

    async def count_token(self, model: str, messages: tuple[ModelMessage, ...]) -> TokenCount: ...

    async def list_models(self) -> list[ModelMetadata]: ...


class StreamEncoder(Protocol):
    """One answer's stream in an API's wire format (openai_wire.ChatStream,
    anthropic_wire.MessageStream)."""

    def chunk(self, output: ModelOutput) -> bytes: ...

    def end(self) -> bytes: ...

    def error(self, error: HttpError) -> bytes: ...

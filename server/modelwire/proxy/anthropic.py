"""Anthropic's Messages API, natively async over httpx.

System messages are split out into `system`; consecutive turns of one role are merged (tool
results are sent as user turns, since modelwire messages carry no tool-use ids). Streams map
`content_block_delta` text to text deltas and `thinking_delta` to reasoning, take prompt tokens from
`message_start` and output tokens from `message_delta`, and map `stop_reason` to finish_reason;
an `error` event inside the stream is mapped like the HTTP status it stands for.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from concurrent.futures import Executor
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, Self

from pydantic import StrictStr
from pydantic.dataclasses import dataclass as pydantic_dataclass

from modelwire.core import errors
from modelwire.core.settings import SECTION, ModelConfig
from modelwire.core.types import (
    Capability,
    FinishReason,
    ModelMetadata,
    ModelOutput,
    ModelRequest,
    Role,
    Usage,
)
from modelwire.proxy.http_upstream import (
    HttpOptions,
    HttpParams,
    HttpProxyClient,
    drain,
    http_error_from_code,
    message_from_payload,
    parse_json_event,
    read_http_params,
    remote_limits,
    wire_float,
)

DEFAULT_API_BASE = "https://api.anthropic.com"
DEFAULT_ANTHROPIC_VERSION = "2023-06-01"
# Every Claude model since Claude 3 takes tools, images and cache_control; extended thinking only
# some, so reasoning is configured where it applies. Anthropic has no embeddings and no grammars.
DEFAULT_CAPABILITIES = (
    Capability.CHAT, Capability.STREAMING, Capability.TOOLS, Capability.JSON_SCHEMA, Capability.VISION, Capability.PROMPT_CACHE,
)
SUPPORTED_CAPABILITIES = frozenset(DEFAULT_CAPABILITIES) | {Capability.REASONING}

_FINISH_REASONS = {
    "end_turn": FinishReason.STOP,
    "stop_sequence": FinishReason.STOP,
    "pause_turn": FinishReason.STOP,
    "max_tokens": FinishReason.LENGTH,
    "model_context_window_exceeded": FinishReason.LENGTH,
    "tool_use": FinishReason.TOOL_CALLS,
    "refusal": FinishReason.CONTENT_FILTER,
}
# Anthropic's error types (in error bodies and stream `error` events) → the HTTP status they stand for.
_ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


@dataclass(frozen=True)
class AnthropicParams:
    http: HttpParams
    anthropic_version: str


@pydantic_dataclass(config=SECTION)
class AnthropicOptions(HttpOptions):
    anthropic_version: StrictStr = DEFAULT_ANTHROPIC_VERSION


def _parse_params(config: ModelConfig) -> AnthropicParams:
    options = config.options_as(AnthropicOptions)
    return AnthropicParams(http=read_http_params(config, options, DEFAULT_API_BASE), anthropic_version=options.anthropic_version)


def _finish_reason(value: object) -> FinishReason | None:
    if not isinstance(value, str) or not value:
        return None
    return _FINISH_REASONS.get(value, FinishReason.STOP)


def _int(value: object) -> int:
    return value if isinstance(value, int) else 0


def _input_tokens(usage: dict[str, Any]) -> int:
    """Cached prompt tokens are prompt tokens too: Anthropic reports them apart from input_tokens."""
    return (
        _int(usage.get("input_tokens"))
        + _int(usage.get("cache_creation_input_tokens"))
        + _int(usage.get("cache_read_input_tokens"))
    )


def _turns(request: ModelRequest) -> tuple[str, list[dict[str, str]]]:
    system = "\n\n".join(message.content for message in request.messages if message.role is Role.SYSTEM)
    turns: list[dict[str, str]] = []
    for message in request.messages:
        if message.role is Role.SYSTEM:
            continue
        role = "assistant" if message.role is Role.ASSISTANT else "user"
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"] += "\n\n" + message.content
        else:
            turns.append({"role": role, "content": message.content})
    return system, turns


class AnthropicClient(HttpProxyClient):
    provider = "anthropic"

    def __init__(self, metadata: ModelMetadata, executor: Executor, params: AnthropicParams, max_concurrency: int) -> None:
        super().__init__(metadata, executor, params.http, max_concurrency)
        self._options = params
        self._url = f"{params.http.api_base}/v1/messages"

    @classmethod
    def new_client(cls, params: ModelConfig, executor: Executor) -> Self:
        options = _parse_params(params)
        context_length, max_output_tokens = remote_limits(params)
        metadata = ModelMetadata(
            model=params.name,
            provider=cls.provider,
            context_length=context_length,
            max_output_tokens=max_output_tokens,
            capabilities=params.capabilities_within(DEFAULT_CAPABILITIES, SUPPORTED_CAPABILITIES),
            metadata={"upstream_model": options.http.upstream_model},
        )
        return cls(metadata, executor, options, params.max_concurrency)

    def _headers(self) -> dict[str, str]:
        headers = {"anthropic-version": self._options.anthropic_version}
        if self._params.api_key is not None:
            headers["x-api-key"] = self._params.api_key.reveal()
        return headers

    def _body(self, request: ModelRequest, stream: bool) -> dict[str, Any]:
        sampling = request.sampling
        system, turns = _turns(request)
        body: dict[str, Any] = {
            "model": self.upstream_model,
            "max_tokens": sampling.max_new_tokens or self._metadata.max_output_tokens,
            "messages": turns,
            "stream": stream,
        }
        if system:
            body["system"] = system
        if sampling.temperature is not None:
            body["temperature"] = wire_float(sampling.temperature)
        if sampling.top_p is not None:
            body["top_p"] = wire_float(sampling.top_p)
        if sampling.stop:
            body["stop_sequences"] = list(sampling.stop)
        if request.context.user:
            body["metadata"] = {"user_id": request.context.user}
        return body

    def _payload_error(self, payload: dict[str, Any]) -> errors.ModelwireError:
        error = payload.get("error")
        kind = error.get("type") if isinstance(error, dict) else None
        message = self._redact(message_from_payload(payload) or str(kind or "unknown error"))
        return http_error_from_code(_ERROR_STATUS.get(str(kind)), message, self._params)

    # --- unary

    async def _completion(self, request: ModelRequest, payload: Any) -> ModelOutput:
        if not isinstance(payload, dict):
            raise errors.UpstreamUnavailable("upstream sent a message that is not a JSON object")
        if payload.get("type") == "error":
            raise self._payload_error(payload)
        blocks = payload.get("content")
        if not isinstance(blocks, list):
            raise errors.UpstreamUnavailable("upstream sent a message without content")
        text = "".join(str(b.get("text", "")) for b in blocks if isinstance(b, dict) and b.get("type") == "text")
        thinking = "".join(
            str(b.get("thinking", "")) for b in blocks if isinstance(b, dict) and b.get("type") == "thinking"
        )
        usage_payload = payload.get("usage")
        if isinstance(usage_payload, dict) and isinstance(usage_payload.get("output_tokens"), int):
            usage = Usage(prompt_tokens=_input_tokens(usage_payload), completion_tokens=_int(usage_payload["output_tokens"]))
        else:
            usage = await self.estimate_usage(request.messages, text + thinking)
        return ModelOutput(
            text=text,
            reasoning=thinking or None,
            finish_reason=_finish_reason(payload.get("stop_reason")) or FinishReason.STOP,
            usage=usage,
        )

    # --- streaming

    async def _stream_once(self, request: ModelRequest, body: dict[str, Any]) -> AsyncGenerator[ModelOutput, None]:
        finish: FinishReason | None = None
        prompt_tokens: int | None = None
        output_tokens: int | None = None
        generated: list[str] = []
        async with aclosing(self.post_events(self._url, body, self._headers())) as events:
            done = False
            async for event in events:
                payload = parse_json_event(event)
                if not isinstance(payload, dict):
                    raise errors.UpstreamUnavailable("upstream sent a malformed event stream: an event is not a JSON object")
                kind = payload.get("type", event.event)
                if kind == "message_start":
                    message = payload.get("message")
                    usage = message.get("usage") if isinstance(message, dict) else None
                    if isinstance(usage, dict):
                        prompt_tokens = _input_tokens(usage)
                        output_tokens = usage.get("output_tokens") if isinstance(usage.get("output_tokens"), int) else None
                elif kind in ("content_block_start", "content_block_delta"):
                    part = payload.get("content_block" if kind == "content_block_start" else "delta")
                    if isinstance(part, dict):
                        text = part.get("text") if part.get("type") in ("text", "text_delta") else None
                        thinking = part.get("thinking") if part.get("type") in ("thinking", "thinking_delta") else None
                        text = text if isinstance(text, str) else ""
                        thinking = thinking if isinstance(thinking, str) and thinking else None
                        if text or thinking:
                            generated.append(text + (thinking or ""))
                            yield ModelOutput(text=text, reasoning=thinking)
                elif kind == "message_delta":
                    delta = payload.get("delta")
                    if isinstance(delta, dict):
                        finish = _finish_reason(delta.get("stop_reason")) or finish
                    usage = payload.get("usage")
                    if isinstance(usage, dict):
                        if isinstance(usage.get("output_tokens"), int):
                            output_tokens = usage["output_tokens"]
                        if isinstance(usage.get("input_tokens"), int):
                            prompt_tokens = _input_tokens(usage)
                elif kind == "message_stop":
                    done = True
                    break
                elif kind == "error":
                    raise self._payload_error(payload)
                # ping and event types added later are ignored, as Anthropic's versioning asks.
            if not done and finish is None:
                raise errors.UpstreamUnavailable("upstream stream ended before the message finished")
            if prompt_tokens is not None and output_tokens is not None:
                usage_out = Usage(prompt_tokens=prompt_tokens, completion_tokens=output_tokens)
            else:
                usage_out = await self.estimate_usage(request.messages, "".join(generated))
            yield ModelOutput(finish_reason=finish or FinishReason.STOP, usage=usage_out)
            if done:
                await drain(events)

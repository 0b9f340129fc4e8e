"""Any OpenAI-compatible Chat Completions API, natively async over httpx.

OpenAI, Azure OpenAI (`api_type = "azure"`), DeepSeek, Qwen/DashScope, Moonshot, Zhipu, Gemini's
OpenAI endpoint, vLLM, llama.cpp server, Ollama's /v1. Streams ask for
`stream_options.include_usage`, read usage from whichever chunk carries it (the usage-only chunk
with `choices: []` included), and always end with one chunk that has finish_reason and usage; when
the upstream sends no usage (llama.cpp server, old vLLM, some gateways) the worker counts it
itself and marks it estimated. `reasoning_content` / `reasoning` deltas become the reasoning field.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from concurrent.futures import Executor
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, Literal, Self
from urllib.parse import quote, urlencode

from pydantic import StrictBool, StrictStr
from pydantic.dataclasses import dataclass as pydantic_dataclass

from modelwire.core import errors
from modelwire.core.settings import SECTION, ModelConfig
from modelwire.core.types import (
    Capability,
    FinishReason,
    ModelMessage,
    ModelMetadata,
    ModelOutput,
    ModelRequest,
    Usage,
)
from modelwire.proxy.http_upstream import (
    HttpOptions,
    HttpParams,
    HttpProxyClient,
    drain,
    error_codes,
    http_error_from_code,
    message_from_payload,
    parse_json_event,
    read_http_params,
    remote_limits,
    wire_float,
)

DEFAULT_API_BASE = "https://api.openai.com/v1"
API_TYPES = ("openai", "azure")
MAX_TOKENS_PARAMS = ("max_tokens", "max_completion_tokens")
# Every OpenAI-compatible server chats, streams and (nearly all) takes tools and response_format;
# vision, reasoning and embeddings depend on the model, so they are configured where they apply.
DEFAULT_CAPABILITIES = (Capability.CHAT, Capability.STREAMING, Capability.TOOLS, Capability.JSON_SCHEMA)
SUPPORTED_CAPABILITIES = frozenset(DEFAULT_CAPABILITIES) | {Capability.VISION, Capability.REASONING, Capability.EMBEDDINGS}

_FINISH_REASONS = {
    "stop": FinishReason.STOP,
    "length": FinishReason.LENGTH,
    "content_filter": FinishReason.CONTENT_FILTER,
    "tool_calls": FinishReason.TOOL_CALLS,
    "function_call": FinishReason.TOOL_CALLS,
}


@dataclass(frozen=True)
class OpenAIParams:
    http: HttpParams
    api_type: str
    api_version: str | None
    max_tokens_param: str
    stream_usage: bool


@pydantic_dataclass(config=SECTION)
class OpenAIOptions(HttpOptions):
    api_type: Literal["openai", "azure"] = "openai"
    api_version: StrictStr | None = None
    max_tokens_param: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"
    stream_usage: StrictBool = True


def _parse_params(config: ModelConfig) -> OpenAIParams:
    options = config.options_as(OpenAIOptions)
    azure = options.api_type == "azure"
    http = read_http_params(config, options, None if azure else DEFAULT_API_BASE)
    if azure and not options.api_version:
        raise config.error("api_version", 'is required when api_type = "azure" (e.g. "2024-10-21")')
    if not azure and options.api_version is not None:
        raise config.error("api_version", 'is only used with api_type = "azure"')
    if azure and http.api_key is None:
        raise config.error("api_key_env", 'is required when api_type = "azure"')
    return OpenAIParams(
        http=http,
        api_type=options.api_type,
        api_version=options.api_version,
        max_tokens_param=options.max_tokens_param,
        stream_usage=options.stream_usage,
    )


def _finish_reason(value: object) -> FinishReason | None:
    if not isinstance(value, str) or not value:
        return None
    return _FINISH_REASONS.get(value, FinishReason.STOP)


def _usage(value: object) -> Usage | None:
    if not isinstance(value, dict):
        return None
    prompt, completion = value.get("prompt_tokens"), value.get("completion_tokens")
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    return Usage(prompt_tokens=prompt, completion_tokens=completion)


def _reasoning(message: dict[str, Any]) -> str | None:
    """DeepSeek, Qwen and older vLLM say `reasoning_content`; newer vLLM, Ollama, OpenRouter `reasoning`."""
    for key in ("reasoning_content", "reasoning"):
        value = message.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def _message(message: ModelMessage) -> dict[str, str]:
    wire = {"role": message.role.value, "content": message.content}
    if message.name:
        wire["name"] = message.name
    return wire


class OpenAIClient(HttpProxyClient):
    provider = "openai"

    def __init__(self, metadata: ModelMetadata, executor: Executor, params: OpenAIParams, max_concurrency: int) -> None:
        super().__init__(metadata, executor, params.http, max_concurrency)
        self._options = params
        base = params.http.api_base
        if params.api_type == "azure":
            deployment = quote(params.http.upstream_model, safe="")
            query = urlencode({"api-version": params.api_version})
            self._url = f"{base}/openai/deployments/{deployment}/chat/completions?{query}"
        else:
            self._url = f"{base}/chat/completions"

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
            metadata={"upstream_model": options.http.upstream_model, "api_type": options.api_type},
        )
        return cls(metadata, executor, options, params.max_concurrency)

    def _headers(self) -> dict[str, str]:
        key = self._params.api_key
        if key is None:
            return {}
        if self._options.api_type == "azure":
            return {"api-key": key.reveal()}
        return {"Authorization": f"Bearer {key.reveal()}"}

    def _body(self, request: ModelRequest, stream: bool) -> dict[str, Any]:
        sampling = request.sampling
        body: dict[str, Any] = {
            "model": self.upstream_model,
            "messages": [_message(message) for message in request.messages],
            "stream": stream,
        }
        if stream and self._options.stream_usage:
            body["stream_options"] = {"include_usage": True}
        optional: dict[str, Any] = {
            "temperature": wire_float(sampling.temperature),
            "top_p": wire_float(sampling.top_p),
            self._options.max_tokens_param: sampling.max_new_tokens,
            "seed": sampling.seed,
            "presence_penalty": wire_float(sampling.presence_penalty),
            "frequency_penalty": wire_float(sampling.frequency_penalty),
            "stop": list(sampling.stop) or None,
            "user": request.context.user or None,
        }
        body.update((key, value) for key, value in optional.items() if value is not None)
        return body

    def _payload_error(self, payload: dict[str, Any]) -> errors.ModelwireError:
        """An `{"error": ...}` object where a completion was expected (some servers send it mid-stream)."""
        error = payload.get("error")
        code = error.get("code") if isinstance(error, dict) else None
        if isinstance(code, str) and code.isdigit():
            code = int(code)
        message = self._redact(message_from_payload(payload) or "unknown error")
        return http_error_from_code(code if isinstance(code, int) else None, message, self._params, error_codes(payload))

    # --- unary: one non-streaming request, so usage is the upstream's own

    async def _completion(self, request: ModelRequest, payload: Any) -> ModelOutput:
        if not isinstance(payload, dict):
            raise errors.UpstreamUnavailable("upstream sent a completion that is not a JSON object")
        if payload.get("error"):
            raise self._payload_error(payload)
        choices = payload.get("choices")
        choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else None
        message = choice.get("message") if choice is not None else None
        if choice is None or not isinstance(message, dict):
            raise errors.UpstreamUnavailable("upstream sent a completion without choices[0].message")
        content = message.get("content")
        text = content if isinstance(content, str) else ""
        reasoning = _reasoning(message)
        usage = _usage(payload.get("usage")) or await self.estimate_usage(request.messages, text + (reasoning or ""))
        return ModelOutput(
            text=text,
            reasoning=reasoning,
            finish_reason=_finish_reason(choice.get("finish_reason")) or FinishReason.STOP,
            usage=usage,
        )

    # --- streaming

    async def _stream_once(self, request: ModelRequest, body: dict[str, Any]) -> AsyncGenerator[ModelOutput, None]:
        finish: FinishReason | None = None
        usage: Usage | None = None
        generated: list[str] = []
        async with aclosing(self.post_events(self._url, body, self._headers())) as events:
            done = False
            async for event in events:
                if event.data.strip() == "[DONE]":
                    done = True
                    break
                payload = parse_json_event(event)
                if not isinstance(payload, dict):
                    raise errors.UpstreamUnavailable("upstream sent a malformed event stream: a chunk is not a JSON object")
                if payload.get("error"):
                    raise self._payload_error(payload)
                # Any chunk may carry usage; with include_usage it is the last one, with `choices: []`.
                usage = _usage(payload.get("usage")) or usage
                choices = payload.get("choices")
                for choice in choices if isinstance(choices, list) else ():
                    if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                        continue
                    delta = choice.get("delta")
                    if isinstance(delta, dict):
                        content = delta.get("content")
                        text = content if isinstance(content, str) else ""
                        reasoning = _reasoning(delta)
                        if text or reasoning:
                            generated.append(text + (reasoning or ""))
                            yield ModelOutput(text=text, reasoning=reasoning)
                    finish = _finish_reason(choice.get("finish_reason")) or finish
            if not done and finish is None:
                raise errors.UpstreamUnavailable("upstream stream ended before the completion finished")
            if usage is None:
                usage = await self.estimate_usage(request.messages, "".join(generated))
            yield ModelOutput(finish_reason=finish or FinishReason.STOP, usage=usage)
            if done:
                await drain(events)

"""Any OpenAI-compatible Chat Completions API, natively async over aiohttp (providers/http/).

OpenAI, Azure OpenAI (`api_type = "azure"`), DeepSeek, Qwen/DashScope, Moonshot, Zhipu, Gemini's
OpenAI endpoint, vLLM, llama.cpp server, Ollama's /v1. Streams ask for
`stream_options.include_usage`, read usage from whichever chunk carries it (the usage-only chunk
with `choices: []` included), and always end with one chunk that has finish_reason and usage; when
the upstream sends no usage (llama.cpp server, old vLLM, some gateways) the worker counts it
itself, tool-call names and arguments included, and marks it estimated. `reasoning_content` /
`reasoning` deltas become the reasoning field.

Contract v1.1, field by field:
- `tools` → `tools: [{"type": "function", "function": {name, description, parameters, strict}}]`,
  `parameters` being the caller's JSON Schema parsed (key order kept); `tool_choice` → "auto",
  "none", "required" or `{"type": "function", "function": {"name"}}` (AUTO and NONE without tools
  are left out: OpenAI refuses a tool_choice without tools, and with none there is nothing to
  call either way); `parallel_tool_calls` as is.
- An assistant turn's `tool_calls` → `tool_calls: [{id, "type": "function", function: {name,
  arguments}}]` with `content` null when it has no text; a ROLE_TOOL message → `{"role": "tool",
  "tool_call_id", "content"}` (no `name`: the API defines none there, and the call id names the
  call; a name other than that call's is refused); `parts` → a content array of `text` and
  `image_url` parts (bytes as a `data:` URL). An earlier assistant turn's `reasoning` goes back
  only under the field the `reasoning_field` option names (DeepSeek's and Moonshot's thinking
  modes want `reasoning_content` on tool-call turns); unset, it is left out, as Chat Completions
  defines no field for it, so the turn `assistant_turn(output)` builds is always accepted.
- `output_format` → `response_format` json_object or json_schema {name, schema, strict};
  `reasoning.effort` → `reasoning_effort`.
- Answers: `message.tool_calls` → whole ToolCalls; streamed `delta.tool_calls` → ToolCallDeltas as
  they come, keyed by `index`, except that an id or name a call already has is not repeated (the
  contract gives them on a call's first delta; llama.cpp's server repeats both on every delta),
  and a new, different id on a known index opens a new call at the next free index (Gemini's
  endpoint streams parallel calls all at index 0); an id seen before continues its own call.
  TOOL_CALLS is the finish when, and only when,
  tool calls came: "stop" after calls (OpenAI's answer to a forced tool_choice) is TOOL_CALLS,
  "tool_calls" without any is STOP. A refusal (`message.refusal`, `delta.refusal`) is the
  answer's text, finishing CONTENT_FILTER, as Anthropic's `stop_reason: "refusal"`. Usage
  `prompt_tokens_details.cached_tokens` (DeepSeek: `prompt_cache_hit_tokens`) →
  cached_prompt_tokens, `completion_tokens_details.reasoning_tokens` → reasoning_tokens.
- Embed → `POST /embeddings` (`encoding_format: "float"`, `dimensions`), vectors in `index` order;
  an answer of the wrong count or dimension is UNAVAILABLE, never passed on.

What Chat Completions cannot express is refused by `unsupported`, by field: a ROLE_TOOL message
without tool_call_id or named otherwise than its call, an image outside a user message,
`reasoning.budget_tokens`, and a `reasoning_signature` (none of these providers gives one). A
request with none of the new fields takes the path it took before them, plus a few attribute
checks per message and one lookup per streamed delta.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from concurrent.futures import Executor
from contextlib import aclosing
from functools import partial
from typing import Any, Literal
from urllib.parse import quote, urlencode

from pydantic import StrictBool, StrictStr
from pydantic.dataclasses import dataclass as pydantic_dataclass

from modelwire.core import errors
from modelwire.core.errors import FieldViolation
from modelwire.core.settings import SECTION, ModelConfig
from modelwire.core.types import (
    Capability,
    Embeddings,
    EmbedRequest,
    FinishReason,
    ModelMetadata,
    ModelOutput,
    ModelRequest,
    Usage,
)
from modelwire.providers.http.client import HttpProxyClient
from modelwire.providers.http.errors import error_codes, http_error_from_code, message_from_payload
from modelwire.providers.http.options import HttpOptions, read_http_params
from modelwire.providers.http.retry import retrying_call
from modelwire.providers.http.sse import drain, finish_reason, parse_json_event
from modelwire.providers.openai.codec import (
    FINISH_REASONS,
    OpenAIParams,
    StreamedCalls,
    body,
    contract_finish,
    embedding_usage,
    reasoning_of,
    refusal_of,
    text_of,
    tool_calls_of,
    usage_of,
    vectors_of,
)
from modelwire.providers.openai.refusals import unsupported
from modelwire.tokenize.tiktoken_counter import count_tokens

DEFAULT_API_BASE = "https://api.openai.com/v1"
# Every OpenAI-compatible server chats, streams and (nearly all) takes tools and response_format;
# vision, reasoning and embeddings depend on the model, so they are configured where they apply.
DEFAULT_CAPABILITIES = (
    Capability.CHAT,
    Capability.STREAMING,
    Capability.TOOLS,
    Capability.JSON_SCHEMA,
)
SUPPORTED_CAPABILITIES = frozenset(DEFAULT_CAPABILITIES) | {
    Capability.VISION,
    Capability.REASONING,
    Capability.EMBEDDINGS,
}


@pydantic_dataclass(config=SECTION)
class OpenAIOptions(HttpOptions):
    api_type: Literal["openai", "azure"] = "openai"
    api_version: StrictStr | None = None
    max_tokens_param: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"
    stream_usage: StrictBool = True
    # The assistant message field that takes an earlier turn's reasoning back: Chat Completions has
    # none (unset: left out); DeepSeek's and Moonshot's thinking modes want `reasoning_content`
    # back on tool-call turns and answer 400 without it.
    reasoning_field: Literal["reasoning_content", "reasoning"] | None = None


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
        reasoning_field=options.reasoning_field,
    )


class OpenAIClient(HttpProxyClient[OpenAIParams]):
    provider = "openai"
    default_capabilities = DEFAULT_CAPABILITIES
    supported_capabilities = SUPPORTED_CAPABILITIES

    def __init__(
        self,
        metadata: ModelMetadata,
        executor: Executor,
        params: OpenAIParams,
        max_concurrency: int,
    ) -> None:
        super().__init__(metadata, executor, params, max_concurrency)
        self._url = self._endpoint("chat/completions")
        self._embeddings_url = self._endpoint("embeddings")

    def _endpoint(self, path: str) -> str:
        base = self._params.api_base
        if self._options.api_type == "azure":
            deployment = quote(self._params.upstream_model, safe="")
            query = urlencode({"api-version": self._options.api_version})
            return f"{base}/openai/deployments/{deployment}/{path}?{query}"
        return f"{base}/{path}"

    @classmethod
    def read_options(cls, config: ModelConfig) -> OpenAIParams:
        return _parse_params(config)

    @classmethod
    def metadata_extra(cls, options: OpenAIParams) -> dict[str, str]:
        return {"api_type": options.api_type}

    def _headers(self) -> dict[str, str]:
        key = self._params.api_key
        if key is None:
            return {}
        if self._options.api_type == "azure":
            return {"api-key": key.reveal()}
        return {"Authorization": f"Bearer {key.reveal()}"}

    def unsupported(self, request: ModelRequest) -> list[FieldViolation]:
        return unsupported(self.default_model, request)

    def _body(self, request: ModelRequest, stream: bool) -> dict[str, Any]:
        return body(request, self._options, self.upstream_model, stream)

    def _payload_error(self, payload: dict[str, Any]) -> errors.ModelwireError:
        """An `{"error": ...}` object where a completion was expected (some servers send it
        mid-stream)."""
        error = payload.get("error")
        code = error.get("code") if isinstance(error, dict) else None
        if isinstance(code, str) and code.isdigit():
            code = int(code)
        message = message_from_payload(payload, self._redact) or "unknown error"
        return http_error_from_code(
            code if isinstance(code, int) else None, message, self._params, error_codes(payload)
        )

    # --- unary: one non-streaming request, so usage is the upstream's own

    async def _completion(self, request: ModelRequest, payload: Any) -> ModelOutput:
        if not isinstance(payload, dict):
            raise errors.UpstreamUnavailable("upstream sent a completion that is not a JSON object")
        if payload.get("error"):
            raise self._payload_error(payload)
        choices = payload.get("choices")
        choice = (
            choices[0]
            if isinstance(choices, list) and choices and isinstance(choices[0], dict)
            else None
        )
        message = choice.get("message") if choice is not None else None
        if choice is None or not isinstance(message, dict):
            raise errors.UpstreamUnavailable(
                "upstream sent a completion without choices[0].message"
            )
        refusal = refusal_of(message)
        text = text_of(message.get("content")) + refusal
        reasoning = reasoning_of(message)
        tool_calls = tool_calls_of(message)
        usage = usage_of(payload.get("usage")) or await self.estimate_usage(
            request.messages,
            text
            + (reasoning or "")
            + "".join(call.name + call.arguments_json for call in tool_calls),
        )
        return ModelOutput(
            text=text,
            reasoning=reasoning,
            finish_reason=contract_finish(
                finish_reason(FINISH_REASONS, choice.get("finish_reason")),
                bool(tool_calls),
                bool(refusal),
            ),
            usage=usage,
            tool_calls=tool_calls,
        )

    # --- streaming

    async def _stream_once(
        self, request: ModelRequest, body: dict[str, Any]
    ) -> AsyncGenerator[ModelOutput, None]:
        finish: FinishReason | None = None
        usage: Usage | None = None
        generated: list[str] = []
        calls = StreamedCalls()
        called = refused = False
        async with aclosing(self.post_events(self._url, body, self._headers())) as events:
            done = False
            async for event in events:
                if event.data.strip() == "[DONE]":
                    done = True
                    break
                payload = parse_json_event(event)
                if not isinstance(payload, dict):
                    raise errors.UpstreamUnavailable(
                        "upstream sent a malformed event stream: a chunk is not a JSON object"
                    )
                if payload.get("error"):
                    raise self._payload_error(payload)
                # Any chunk may carry usage; with include_usage it is the last one, with
                # `choices: []`.
                usage = usage_of(payload.get("usage")) or usage
                choices = payload.get("choices")
                for choice in choices if isinstance(choices, list) else ():
                    if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                        continue
                    delta = choice.get("delta")
                    if isinstance(delta, dict):
                        content = delta.get("content")
                        text = content if isinstance(content, str) else ""
                        refusal = refusal_of(delta)
                        if refusal:
                            refused = True
                            text += refusal
                        reasoning = reasoning_of(delta)
                        wire_calls = delta.get("tool_calls")
                        if wire_calls:
                            deltas = calls.deltas(wire_calls)
                            called = called or bool(deltas)
                            # An estimate of usage counts the calls' names and arguments too.
                            generated.append(
                                text
                                + (reasoning or "")
                                + "".join(d.name + d.arguments_delta for d in deltas)
                            )
                            if text or reasoning or deltas:
                                yield ModelOutput(
                                    text=text, reasoning=reasoning, tool_call_deltas=deltas
                                )
                        elif text or reasoning:
                            generated.append(text + (reasoning or ""))
                            yield ModelOutput(text=text, reasoning=reasoning)
                    finish = finish_reason(FINISH_REASONS, choice.get("finish_reason")) or finish
            if not done and finish is None:
                raise errors.UpstreamUnavailable(
                    "upstream stream ended before the completion finished"
                )
            if usage is None:
                usage = await self.estimate_usage(request.messages, "".join(generated))
            yield ModelOutput(finish_reason=contract_finish(finish, called, refused), usage=usage)
            if done:
                await drain(events)

    # --- embeddings

    async def embed(self, request: EmbedRequest) -> Embeddings:
        body: dict[str, Any] = {
            "model": self.upstream_model,
            "input": list(request.inputs),
            "encoding_format": "float",
        }
        if request.dimensions is not None:
            body["dimensions"] = request.dimensions
        payload = await retrying_call(
            self._retry,
            self.default_model,
            lambda: self.post_json(self._embeddings_url, body, self._headers()),
        )
        if not isinstance(payload, dict):
            raise errors.UpstreamUnavailable("upstream sent embeddings that are not a JSON object")
        if payload.get("error"):
            raise self._payload_error(payload)
        vectors = vectors_of(payload, request)
        return Embeddings(
            vectors=vectors,
            usage=embedding_usage(payload.get("usage"))
            or await self._estimate_inputs(request.inputs),
        )

    async def _estimate_inputs(self, inputs: Sequence[str]) -> Usage:
        """Usage the worker counted itself, for an upstream that reported none."""
        text = "\n".join(inputs)
        try:
            count = await self.count_with(text, partial(count_tokens, self.upstream_model, text))
        except errors.TokenizerUnavailable:
            return Usage(estimated=True)
        return Usage(prompt_tokens=count.count, estimated=True)

"""Anthropic's Messages API, natively async over aiohttp (providers/http/).

Requests. System messages go to `system`: one string (joined by blank lines), or text blocks when
one of them carries a cache breakpoint. Consecutive messages of one role are merged into one turn,
as the API wants user and assistant turns to alternate: plain texts joined by a blank line,
anything else as content blocks in order. A message that is more than plain text becomes blocks:
text and `image` (base64 or url source); for an assistant turn its earlier thinking first (sent
back as it came, see `signature_of`), then its text, then one `tool_use` per tool call; a tool
message is a `tool_result` in a user turn, so consecutive results share one turn, as the API
requires. `cache_breakpoint` puts `cache_control` on the message's last block. Tools go as
`tools[].input_schema` (the schema text parsed, key order kept), the tool choice as
auto/any/tool/none with `disable_parallel_tool_use` for `parallel_tool_calls = false`, reasoning as
`thinking` (`enabled` with `budget_tokens`, or `adaptive` with `output_config.effort`, as the
model's `thinking` option says), structured output as a forced tool whose input is the answer
(`output_tool` says why). Whatever the API cannot express is refused by field and model
(`AnthropicClient.unsupported`), never dropped: sampling seed and penalties, message names, a tool
message without tool_call_id, and the documented limits of thinking, images and cache_control.

Responses. Text blocks are text, thinking blocks reasoning (with the signature the next turn must
send back, `signature_of`), `tool_use` blocks tool calls (their input as JSON text); usage counts
cache reads and writes into prompt tokens and also reports them apart, and thinking tokens as
reasoning tokens. Streams map `text_delta` to text, `thinking_delta` to reasoning, a `tool_use`
block's start to a tool-call delta with its id and name (indexed by the call's place among this
turn's calls, not the block's) and its `input_json_delta`s to argument deltas; prompt tokens come
from `message_start`, updated by `message_delta` with the output tokens, and `stop_reason` becomes
finish_reason. An `error` event inside the stream is mapped like the HTTP status it stands for.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from concurrent.futures import Executor
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from pydantic import StrictStr
from pydantic.dataclasses import dataclass as pydantic_dataclass

from modelwire.core import errors
from modelwire.core.errors import FieldViolation
from modelwire.core.settings import SECTION, ModelConfig
from modelwire.core.types import (
    Capability,
    FinishReason,
    ModelMetadata,
    ModelOutput,
    ModelRequest,
    ToolCall,
)
from modelwire.providers.anthropic.codec import (
    EFFORTS,
    ERROR_STATUS,
    FINISH_REASONS,
    StreamBlocks,
    Thinking,
    final_finish,
    input_json,
    output_tool,
    reasoning_block,
    signature_of,
    system_and_turns,
    update_usage,
    usage_of,
    wire_tool,
    wire_tool_choice,
)
from modelwire.providers.anthropic.refusals import Refusals, budget_problem, unsupported
from modelwire.providers.http.client import HttpProxyClient
from modelwire.providers.http.errors import (
    clean_message,
    http_error_from_code,
    message_from_payload,
)
from modelwire.providers.http.options import HttpOptions, HttpParams, read_http_params
from modelwire.providers.http.sse import drain, finish_reason, parse_json_event

DEFAULT_API_BASE = "https://api.anthropic.com"
DEFAULT_ANTHROPIC_VERSION = "2023-06-01"
# Every Claude model since Claude 3 takes tools, images and cache_control; extended thinking only
# some, so reasoning is configured where it applies. Anthropic has no embeddings and no grammars.
DEFAULT_CAPABILITIES = (
    Capability.CHAT,
    Capability.STREAMING,
    Capability.TOOLS,
    Capability.JSON_SCHEMA,
    Capability.VISION,
    Capability.PROMPT_CACHE,
)
SUPPORTED_CAPABILITIES = frozenset(DEFAULT_CAPABILITIES) | {Capability.REASONING}


@dataclass(frozen=True)
class AnthropicParams:
    http: HttpParams
    anthropic_version: str
    thinking: Thinking


@pydantic_dataclass(config=SECTION)
class AnthropicOptions(HttpOptions):
    anthropic_version: StrictStr = DEFAULT_ANTHROPIC_VERSION
    # How the model thinks: `enabled` takes reasoning.budget_tokens (Claude 3.7 to 4.6), `adaptive`
    # takes reasoning.effort (Opus 4.6, Sonnet 4.6 and later; Opus 4.7 refuses budgets).
    thinking: Thinking = "enabled"


def _parse_params(config: ModelConfig) -> AnthropicParams:
    options = config.options_as(AnthropicOptions)
    return AnthropicParams(
        http=read_http_params(config, options, DEFAULT_API_BASE),
        anthropic_version=options.anthropic_version,
        thinking=options.thinking,
    )


class AnthropicClient(HttpProxyClient[AnthropicParams]):
    provider = "anthropic"
    default_capabilities = DEFAULT_CAPABILITIES
    supported_capabilities = SUPPORTED_CAPABILITIES

    def __init__(
        self,
        metadata: ModelMetadata,
        executor: Executor,
        params: AnthropicParams,
        max_concurrency: int,
    ) -> None:
        super().__init__(metadata, executor, params, max_concurrency)
        self._url = f"{params.http.api_base}/v1/messages"

    @classmethod
    def read_options(cls, config: ModelConfig) -> AnthropicParams:
        return _parse_params(config)

    def _headers(self) -> dict[str, str]:
        headers = {"anthropic-version": self._options.anthropic_version}
        if self._params.api_key is not None:
            headers["x-api-key"] = self._params.api_key.reveal()
        return headers

    def unsupported(self, request: ModelRequest) -> list[FieldViolation]:
        return unsupported(self._metadata, self._options.thinking, request)

    # --- requests

    def _body(self, request: ModelRequest, stream: bool) -> dict[str, Any]:
        sampling = request.sampling
        system, turns = system_and_turns(request.messages)
        body: dict[str, Any] = {
            "model": self.upstream_model,
            "max_tokens": sampling.max_new_tokens or self._metadata.max_output_tokens,
            "messages": turns,
            "stream": stream,
        }
        if system:
            body["system"] = system
        if sampling.temperature is not None:
            body["temperature"] = sampling.temperature
        if sampling.top_p is not None:
            body["top_p"] = sampling.top_p
        if sampling.stop:
            body["stop_sequences"] = list(sampling.stop)
        if request.context.user:
            body["metadata"] = {"user_id": request.context.user}
        if request.tools or request.output_format is not None or request.reasoning is not None:
            self._add_v1_1_fields(request, body)
        return body

    def _add_v1_1_fields(self, request: ModelRequest, body: dict[str, Any]) -> None:
        """Tools, structured output and reasoning; kept off the path of requests without them."""
        if request.tools:
            body["tools"] = [wire_tool(tool) for tool in request.tools]
            choice = wire_tool_choice(request)
            if choice is not None:
                body["tool_choice"] = choice
        if request.output_format is not None:
            tool = output_tool(request.output_format)
            body["tools"] = [tool]
            body["tool_choice"] = {
                "type": "tool",
                "name": tool["name"],
                "disable_parallel_tool_use": True,
            }
        reasoning = request.reasoning
        if reasoning is None:
            return
        if self._options.thinking == "adaptive":
            body["thinking"] = {"type": "adaptive"}
            if reasoning.effort is not None:
                body["output_config"] = {"effort": EFFORTS[reasoning.effort]}
            return
        # Checked again: the context check may have lowered max_tokens since `unsupported` ran.
        problem = budget_problem(reasoning.budget_tokens, body["max_tokens"])
        if problem is not None:
            refusals = Refusals(self.default_model)
            refusals.add("reasoning.budget_tokens", problem)
            raise errors.InvalidRequest(refusals.violations)
        body["thinking"] = {"type": "enabled", "budget_tokens": reasoning.budget_tokens}

    def _payload_error(self, payload: dict[str, Any]) -> errors.ModelwireError:
        error = payload.get("error")
        kind = error.get("type") if isinstance(error, dict) else None
        fallback = clean_message(str(kind or "unknown error"), self._redact)
        message = message_from_payload(payload, self._redact) or fallback
        return http_error_from_code(ERROR_STATUS.get(str(kind)), message, self._params)

    # --- unary

    async def _completion(self, request: ModelRequest, payload: Any) -> ModelOutput:
        if not isinstance(payload, dict):
            raise errors.UpstreamUnavailable("upstream sent a message that is not a JSON object")
        if payload.get("type") == "error":
            raise self._payload_error(payload)
        blocks = payload.get("content")
        if not isinstance(blocks, list):
            raise errors.UpstreamUnavailable("upstream sent a message without content")
        text: list[str] = []
        thinking: list[str] = []
        reasoning: list[dict[str, Any]] = []
        calls: list[ToolCall] = []
        for block in blocks:
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "text":
                text.append(str(block.get("text", "")))
            elif kind == "thinking" or kind == "redacted_thinking":
                thinking.append(str(block.get("thinking", "")))
                reasoning.append(reasoning_block(block))
            elif kind == "tool_use":
                calls.append(
                    ToolCall(
                        id=str(block.get("id", "")),
                        name=str(block.get("name", "")),
                        arguments_json=input_json(block.get("input")),
                    )
                )
        structured = request.output_format is not None
        if structured:
            text += (call.arguments_json for call in calls)
            calls = []
        usage_payload = payload.get("usage")
        if isinstance(usage_payload, dict) and isinstance(usage_payload.get("output_tokens"), int):
            usage = usage_of(usage_payload)
        else:
            usage = await self.estimate_usage(
                request.messages, "".join(text + thinking + [call.arguments_json for call in calls])
            )
        return ModelOutput(
            text="".join(text),
            reasoning="".join(thinking) or None,
            finish_reason=final_finish(
                finish_reason(FINISH_REASONS, payload.get("stop_reason")), structured
            ),
            usage=usage,
            tool_calls=tuple(calls),
            reasoning_signature=signature_of(reasoning),
        )

    # --- streaming

    async def _stream_once(
        self, request: ModelRequest, body: dict[str, Any]
    ) -> AsyncGenerator[ModelOutput, None]:
        finish: FinishReason | None = None
        usage: dict[str, Any] = {}
        generated: list[str] = []
        structured = request.output_format is not None
        blocks = StreamBlocks(structured, generated)
        async with aclosing(self.post_events(self._url, body, self._headers())) as events:
            done = False
            async for event in events:
                payload = parse_json_event(event)
                if not isinstance(payload, dict):
                    raise errors.UpstreamUnavailable(
                        "upstream sent a malformed event stream: an event is not a JSON object"
                    )
                kind = payload.get("type", event.event)
                output: ModelOutput | None = None
                if kind == "content_block_delta":
                    delta = payload.get("delta")
                    if not isinstance(delta, dict):
                        continue
                    if delta.get("type") == "text_delta":
                        text = delta.get("text")
                        if isinstance(text, str) and text:
                            generated.append(text)
                            output = ModelOutput(text=text)
                    else:
                        output = blocks.delta(payload.get("index"), delta)
                elif kind == "content_block_start":
                    block = payload.get("content_block")
                    if isinstance(block, dict):
                        output = blocks.start(payload.get("index"), block)
                elif kind == "content_block_stop":
                    output = blocks.stop(payload.get("index"))
                elif kind == "message_start":
                    message = payload.get("message")
                    if isinstance(message, dict):
                        update_usage(usage, message.get("usage"))
                elif kind == "message_delta":
                    delta = payload.get("delta")
                    if isinstance(delta, dict):
                        finish = finish_reason(FINISH_REASONS, delta.get("stop_reason")) or finish
                    update_usage(usage, payload.get("usage"))
                elif kind == "message_stop":
                    done = True
                    break
                elif kind == "error":
                    raise self._payload_error(payload)
                # ping and event types added later are ignored, as Anthropic's versioning asks.
                if output is not None:
                    yield output
            if not done and finish is None:
                raise errors.UpstreamUnavailable(
                    "upstream stream ended before the message finished"
                )
            if isinstance(usage.get("input_tokens"), int) and isinstance(
                usage.get("output_tokens"), int
            ):
                usage_out = usage_of(usage)
            else:
                usage_out = await self.estimate_usage(request.messages, "".join(generated))
            yield ModelOutput(
                finish_reason=final_finish(finish, structured),
                usage=usage_out,
                reasoning_signature=blocks.signature(),
            )
            if done:
                await drain(events)

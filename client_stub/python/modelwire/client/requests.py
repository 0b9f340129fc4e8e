"""Building requests from plain Python values, shared by the async and the sync client.

Plain values where they are enough (a prompt string, (role, text) pairs, keyword options), and
small builders for the rest, which return the contract's own messages (`message`, `image`,
`tool_result`, `assistant_turn`, `tool`, `json_object_format`, `json_schema_format`,
`grammar_format`). Nothing is checked here that the worker checks: it refuses what is wrong or
what the model cannot honour, by field (`ModelwireCallError.violations`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypedDict

from modelwire.v1 import worker_pb2 as pb

RoleName = Literal["system", "user", "assistant", "tool"]
# A prompt string (one user message), or messages: (role, text) pairs and built messages, mixed.
Messages = str | Sequence[tuple[str, str] | pb.ModelMessage]
ReasoningEffort = Literal["minimal", "low", "medium", "high"]
# "auto", "none", "required", or the name of the tool the model must call.
ToolChoice = str | pb.ToolChoice

_ROLES = {
    "system": pb.ROLE_SYSTEM,
    "user": pb.ROLE_USER,
    "assistant": pb.ROLE_ASSISTANT,
    "tool": pb.ROLE_TOOL,
}
_TOOL_CHOICE_MODES = {
    "auto": pb.TOOL_CHOICE_MODE_AUTO,
    "none": pb.TOOL_CHOICE_MODE_NONE,
    "required": pb.TOOL_CHOICE_MODE_REQUIRED,
}
_EFFORTS = {
    "minimal": pb.REASONING_EFFORT_MINIMAL,
    "low": pb.REASONING_EFFORT_LOW,
    "medium": pb.REASONING_EFFORT_MEDIUM,
    "high": pb.REASONING_EFFORT_HIGH,
}
# The image types the contract accepts for inline data, by file extension.
IMAGE_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
}
_URL_PREFIXES = ("https://", "http://", "data:")


class RequestOptions(TypedDict, total=False):
    """The keyword options of `generate`, `stream` and `build_request`."""

    temperature: float | None
    top_p: float | None
    max_new_tokens: int | None
    stop: Sequence[str]
    seed: int | None
    request_id: str
    tools: Sequence[pb.Tool]
    tool_choice: ToolChoice | None
    parallel_tool_calls: bool | None
    output_format: pb.OutputFormat | None
    reasoning_effort: ReasoningEffort | None
    reasoning_budget_tokens: int | None


def image(source: str | Path | bytes, mime_type: str = "") -> pb.Image:
    """An image part's image: an https:, http: or data: URL (the provider fetches it), a file
    (read now; its type from the extension unless `mime_type` says it), or encoded bytes (then
    `mime_type` is required)."""
    if isinstance(source, bytes):
        if not mime_type:
            raise ValueError(
                "image bytes need a mime_type (image/png, image/jpeg, image/gif or image/webp)"
            )
        return pb.Image(data=source, mime_type=mime_type)
    if isinstance(source, str) and source.startswith(_URL_PREFIXES):
        return pb.Image(url=source, mime_type=mime_type)
    path = Path(source)
    if not mime_type:
        mime_type = IMAGE_TYPES.get(path.suffix.lower(), "")
        if not mime_type:
            raise ValueError(
                f"cannot tell the image type of {str(path)!r} from its extension "
                f"({', '.join(IMAGE_TYPES)}); pass mime_type"
            )
    return pb.Image(data=path.read_bytes(), mime_type=mime_type)


def message(
    role: RoleName,
    *content: str | pb.Image,
    name: str = "",
    tool_calls: Sequence[pb.ToolCall] = (),
    tool_call_id: str = "",
    reasoning: str | None = None,
    reasoning_signature: bytes = b"",
    cache_breakpoint: bool = False,
) -> pb.ModelMessage:
    """One message. A single text is its `content`; texts and images, in order, are its `parts`:
    `message("user", "What is in this picture?", image("cat.png"))`. `cache_breakpoint`: the
    prompt up to here may be cached (models with CAPABILITY_PROMPT_CACHE)."""
    built = pb.ModelMessage(
        role=_ROLES.get(role, pb.ROLE_UNSPECIFIED),
        name=name,
        tool_calls=list(tool_calls),
        tool_call_id=tool_call_id,
        reasoning_signature=reasoning_signature,
        cache_breakpoint=cache_breakpoint,
    )
    if len(content) == 1 and isinstance(content[0], str):
        built.content = content[0]
    else:
        built.parts.extend(
            pb.ContentPart(text=part) if isinstance(part, str) else pb.ContentPart(image=part)
            for part in content
        )
    if reasoning is not None:
        built.reasoning = reasoning
    return built


def tool_result(tool_call_id: str, content: str) -> pb.ModelMessage:
    """The ROLE_TOOL message that answers the tool call `tool_call_id` (usually JSON text)."""
    return pb.ModelMessage(role=pb.ROLE_TOOL, tool_call_id=tool_call_id, content=content)


def assistant_turn(output: pb.ModelOutput) -> pb.ModelMessage:
    """A model's answer (Generate's output, or `OutputCollector.output()` of a stream) as the
    assistant message of the next request: its text, tool calls, reasoning and signature."""
    turn = pb.ModelMessage(
        role=pb.ROLE_ASSISTANT,
        content=output.text,
        tool_calls=list(output.tool_calls),
        reasoning_signature=output.reasoning_signature,
    )
    if output.HasField("reasoning"):
        turn.reasoning = output.reasoning
    return turn


def _json_text(value: Mapping[str, Any] | str) -> str:
    """JSON text travels as given; a mapping is serialised (its key order kept)."""
    return value if isinstance(value, str) else json.dumps(value)


def tool(
    name: str,
    parameters: Mapping[str, Any] | str | None = None,
    *,
    description: str = "",
    strict: bool = False,
) -> pb.Tool:
    """A function the model may call; `parameters` is a JSON Schema object (a mapping or JSON
    text, which is sent as is); None: no arguments."""
    return pb.Tool(
        name=name,
        description=description,
        parameters_json_schema="" if parameters is None else _json_text(parameters),
        strict=strict,
    )


def json_object_format() -> pb.OutputFormat:
    """Output is one JSON object (models with CAPABILITY_JSON_SCHEMA)."""
    return pb.OutputFormat(json_object=True)


def json_schema_format(
    name: str, schema: Mapping[str, Any] | str, *, strict: bool = False
) -> pb.OutputFormat:
    """Output is JSON matching `schema` (a mapping or JSON text; models with
    CAPABILITY_JSON_SCHEMA)."""
    return pb.OutputFormat(
        json_schema=pb.JsonSchema(name=name, schema_json=_json_text(schema), strict=strict)
    )


def grammar_format(gbnf: str) -> pb.OutputFormat:
    """Output follows a GBNF grammar (llama.cpp's format; models with CAPABILITY_GRAMMAR)."""
    return pb.OutputFormat(grammar=gbnf)


def to_messages(messages: Messages) -> list[pb.ModelMessage]:
    if isinstance(messages, str):
        return [pb.ModelMessage(role=pb.ROLE_USER, content=messages)]
    return [
        item
        if isinstance(item, pb.ModelMessage)
        else pb.ModelMessage(role=_ROLES.get(item[0], pb.ROLE_UNSPECIFIED), content=item[1])
        for item in messages
    ]


def _tool_choice(choice: ToolChoice) -> pb.ToolChoice:
    """A mode by its name; any other name is the tool to call (a tool named like a mode needs
    `pb.ToolChoice(tool_name=...)`)."""
    if isinstance(choice, pb.ToolChoice):
        return choice
    mode = _TOOL_CHOICE_MODES.get(choice)
    return pb.ToolChoice(mode=mode) if mode is not None else pb.ToolChoice(tool_name=choice)


def build_request(
    model: str,
    messages: Messages,
    *,
    temperature: float | None = None,
    top_p: float | None = None,
    max_new_tokens: int | None = None,
    stop: Sequence[str] = (),
    seed: int | None = None,
    request_id: str = "",
    tools: Sequence[pb.Tool] = (),
    tool_choice: ToolChoice | None = None,
    parallel_tool_calls: bool | None = None,
    output_format: pb.OutputFormat | None = None,
    reasoning_effort: ReasoningEffort | None = None,
    reasoning_budget_tokens: int | None = None,
) -> pb.ModelRequest:
    sampling = pb.SamplingParams(stop=list(stop))
    if temperature is not None:
        sampling.temperature = temperature
    if top_p is not None:
        sampling.top_p = top_p
    if max_new_tokens is not None:
        sampling.max_new_tokens = max_new_tokens
    if seed is not None:
        sampling.seed = seed
    request = pb.ModelRequest(
        model=model,
        messages=to_messages(messages),
        sampling=sampling,
        context=pb.RequestContext(request_id=request_id),
        tools=list(tools),
    )
    if tool_choice is not None:
        request.tool_choice.CopyFrom(_tool_choice(tool_choice))
    if parallel_tool_calls is not None:
        request.parallel_tool_calls = parallel_tool_calls
    if output_format is not None:
        request.output_format.CopyFrom(output_format)
    if reasoning_effort is not None or reasoning_budget_tokens is not None:
        request.reasoning.SetInParent()
        if reasoning_effort is not None:
            if reasoning_effort not in _EFFORTS:
                raise ValueError(
                    f"reasoning_effort must be one of {', '.join(_EFFORTS)}, got "
                    f"{reasoning_effort!r}"
                )
            request.reasoning.effort = _EFFORTS[reasoning_effort]
        if reasoning_budget_tokens is not None:
            request.reasoning.budget_tokens = reasoning_budget_tokens
    return request


def count_request(model: str, messages: Messages) -> pb.CountTokenRequest:
    if isinstance(messages, str):
        return pb.CountTokenRequest(model=model, prompt=messages)
    return pb.CountTokenRequest(model=model, messages=to_messages(messages))


def embed_request(
    model: str, inputs: str | Sequence[str], dimensions: int | None = None
) -> pb.EmbedRequest:
    """A single string is one input, not a sequence of characters."""
    request = pb.EmbedRequest(
        model=model, inputs=[inputs] if isinstance(inputs, str) else list(inputs)
    )
    if dimensions is not None:
        request.dimensions = dimensions
    return request

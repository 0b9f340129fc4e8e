"""Anthropic's Messages and count_tokens requests from a caller → the domain (facade/
anthropic_wire/__init__.py says what translates and what is refused), with no I/O: each field
translated exactly or refused by its own path."""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import replace
from typing import Any

from modelwire.core.errors import FieldViolation, InvalidRequest
from modelwire.core.types import (
    ContentPart,
    Image,
    JsonSchemaFormat,
    ModelMessage,
    ModelRequest,
    NamedTool,
    ReasoningOptions,
    RequestContext,
    Role,
    SamplingParams,
    Tool,
    ToolCall,
    ToolChoice,
    ToolChoiceMode,
)
from modelwire.facade.calls import GenerationCall
from modelwire.providers.anthropic.codec import (
    EFFORTS,
    input_json,
    reasoning_block,
    signature_of,
)
from modelwire.providers.anthropic.refusals import IMAGE_MEDIA_TYPES

_UNTRANSLATED = "is not a field this gateway translates"

# Fields refused with a reason of their own (any other unknown field: _UNTRANSLATED).
_NAMED = {
    "container": "code execution containers are not run by this gateway",
    "mcp_servers": "this gateway connects to no MCP servers",
    "context_management": "this gateway does not edit a conversation's context",
    "output_format": "structured outputs go in output_config.format",
    "citations": "citations are not translated by this gateway",
}

_BLOCKS_REFUSED = {
    "document": "documents (PDF, plain text) are not translated by this gateway",
    "search_result": "search results are not translated by this gateway",
}

_MESSAGES_KEYS = frozenset(
    {
        "model",
        "max_tokens",
        "messages",
        "system",
        "stop_sequences",
        "temperature",
        "top_p",
        "top_k",
        "tools",
        "tool_choice",
        "thinking",
        "output_config",
        "metadata",
        "stream",
        "service_tier",
        "cache_control",
    }
)
_COUNT_KEYS = frozenset({"model", "messages", "system", "tools", "thinking", "tool_choice"})

# The Messages API's bounds (int32 for the contract's counts).
_MAX_INT = 2**31 - 1

_TOOL_CHOICES = {
    "auto": ToolChoiceMode.AUTO,
    "any": ToolChoiceMode.REQUIRED,
    "none": ToolChoiceMode.NONE,
}
_EFFORT_OF = {wire: effort for effort, wire in EFFORTS.items()}
# The schema name a structured output gets: the API's format has none, the contract needs one.
OUTPUT_SCHEMA_NAME = "output"


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _json_text(value: object) -> str | None:
    """JSON text of a value from the body, or None for one JSON cannot hold (NaN)."""
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False)
    except ValueError:
        return None


class _Body:
    """A request body read field by field, every problem a violation naming its path."""

    def __init__(self) -> None:
        self.violations: list[FieldViolation] = []

    def refuse(self, param: str, description: str) -> None:
        self.violations.append(FieldViolation(param, description))

    def raise_any(self) -> None:
        if self.violations:
            raise InvalidRequest(self.violations)

    def fields(self, value: object, where: str, known: frozenset[str]) -> dict[str, Any]:
        """`value` as an object; a key not in `known` is refused unless it is null."""
        if not isinstance(value, dict):
            self.refuse(where, "must be a JSON object")
            return {}
        for key, item in value.items():
            if key not in known and item is not None:
                self.refuse(_join(where, key), _NAMED.get(key, _UNTRANSLATED))
        return value

    def string(self, fields: dict[str, Any], key: str, where: str, required: bool = False) -> str:
        value = fields.get(key)
        if isinstance(value, str):
            return value
        if value is not None or required:
            self.refuse(_join(where, key), "must be a string")
        return ""

    def integer(self, fields: dict[str, Any], key: str, where: str = "") -> int | None:
        value = fields.get(key)
        if value is None or (type(value) is int and abs(value) <= _MAX_INT):
            return value
        self.refuse(_join(where, key), f"must be an integer of at most {_MAX_INT}")
        return None

    def number(self, fields: dict[str, Any], key: str) -> float | None:
        value = fields.get(key)
        if value is None or (isinstance(value, int | float) and not isinstance(value, bool)):
            return None if value is None else float(value)
        self.refuse(key, "must be a number")
        return None

    def boolean(self, fields: dict[str, Any], key: str, where: str = "") -> bool | None:
        value = fields.get(key)
        if value is None or isinstance(value, bool):
            return value
        self.refuse(_join(where, key), "must be true or false")
        return None

    def optional(self, fields: dict[str, Any], key: str, known: frozenset[str]) -> dict[str, Any]:
        """An object field that may be absent or null (then empty)."""
        value = fields.get(key)
        return {} if value is None else self.fields(value, key, known)

    def listed(self, fields: dict[str, Any], key: str, where: str = "") -> list[Any]:
        value = fields.get(key)
        if isinstance(value, list):
            return value
        if value is not None:
            self.refuse(_join(where, key), "must be a list")
        return []

    def cache_control(self, fields: dict[str, Any], where: str) -> bool:
        """Whether a block asks for a cache breakpoint (ephemeral, the default 5-minute one)."""
        value = fields.get("cache_control")
        if value is None:
            return False
        where = _join(where, "cache_control")
        control = self.fields(value, where, frozenset({"type", "ttl"}))
        if control.get("type") != "ephemeral":
            self.refuse(_join(where, "type"), 'must be "ephemeral"')
        if control.get("ttl") not in (None, "5m"):
            self.refuse(
                _join(where, "ttl"),
                "this gateway's cache breakpoints have the default lifetime (5m) only",
            )
        return True

    # --- the conversation -----------------------------------------------------------------------

    def system(self, value: object, messages: list[ModelMessage], origins: list[str]) -> None:
        """One SYSTEM message per text block, as the provider sends them back (its breakpoints
        go on their own blocks)."""
        if value is None:
            return
        if isinstance(value, str):
            if value:
                messages.append(ModelMessage(role=Role.SYSTEM, content=value))
                origins.append("system")
            return
        if not isinstance(value, list):
            self.refuse("system", "must be a string or a list of text blocks")
            return
        for index, block in enumerate(value):
            where = f"system[{index}]"
            if self._kind(block, where) != "text":
                self.refuse(_join(where, "type"), 'must be "text"')
                continue
            fields = self.fields(block, where, frozenset({"type", "text", "cache_control"}))
            text = self.string(fields, "text", where, required=True)
            cached = self.cache_control(fields, where)
            messages.append(ModelMessage(role=Role.SYSTEM, content=text, cache_breakpoint=cached))
            origins.append(where)

    def message(
        self, value: object, index: int, messages: list[ModelMessage], origins: list[str]
    ) -> None:
        where = f"messages[{index}]"
        if not isinstance(value, dict):
            self.refuse(where, "must be a message object (role and content)")
            return
        fields = self.fields(value, where, frozenset({"role", "content"}))
        role = fields.get("role")
        content = fields.get("content")
        if role not in ("user", "assistant"):
            self.refuse(
                _join(where, "role"),
                'must be "user" or "assistant" (a system prompt is the top-level system)',
            )
            return
        if isinstance(content, str):
            messages.append(
                ModelMessage(role=Role.USER if role == "user" else Role.ASSISTANT, content=content)
            )
            origins.append(where)
        elif not isinstance(content, list):
            self.refuse(_join(where, "content"), "must be a string or a list of content blocks")
        elif role == "user":
            self._user(content, where, messages, origins)
        else:
            self._assistant(content, where, messages, origins)

    def _user(
        self, blocks: list[Any], where: str, messages: list[ModelMessage], origins: list[str]
    ) -> None:
        """A user turn: its tool_result blocks become TOOL messages, the text and images
        between them USER messages, in order (so one turn may be several domain messages)."""
        first = len(messages)
        run = _Run()
        for number, block in enumerate(blocks):
            path = f"{where}.content[{number}]"
            kind = self._kind(block, path)
            if kind == "tool_result":
                self._flush(run, messages, origins)
                messages.append(self._tool_result(block, path))
                origins.append(path)
            elif kind in ("text", "image"):
                part = self._part(block, kind, path)
                if part is not None:
                    run.add(part, self.cache_control(block, path), path)
            elif kind is not None:
                self._refuse_block(kind, path, "a user turn takes text, image and tool_result")
        self._flush(run, messages, origins)
        if len(messages) == first + 1 and messages[first].role is Role.USER:
            origins[first] = where

    def _flush(self, run: _Run, messages: list[ModelMessage], origins: list[str]) -> None:
        if not run.paths:
            return
        self._breakpoint(run.marks, run.paths)
        messages.append(ModelMessage(role=Role.USER, **run.content(), cache_breakpoint=run.cached))
        origins.append(run.paths[0])
        run.clear()

    def _assistant(
        self, blocks: list[Any], where: str, messages: list[ModelMessage], origins: list[str]
    ) -> None:
        """An assistant turn is one domain message: thinking, then text (and images), then tool
        calls, the order Claude writes them and the provider sends them back; text after a
        tool_use would be moved, so it is refused. Thinking blocks anywhere keep their order
        (a stream ends its thinking block last, see MessageStream)."""
        run = _Run()
        reasoning: list[dict[str, Any]] = []
        calls: list[ToolCall] = []
        for number, block in enumerate(blocks):
            path = f"{where}.content[{number}]"
            kind = self._kind(block, path)
            if kind in ("thinking", "redacted_thinking"):
                reasoning.append(self._reasoning(block, kind, path))
            elif kind == "tool_use":
                call = self._tool_use(block, path)
                run.add(None, self.cache_control(block, path), path)
                if call is not None:
                    calls.append(call)
            elif kind in ("text", "image"):
                if calls:
                    self.refuse(
                        path,
                        "an assistant turn's text and images come before its tool_use blocks "
                        "here (the gateway keeps a turn's text and its tool calls apart)",
                    )
                part = self._part(block, kind, path)
                if part is not None:
                    run.add(part, self.cache_control(block, path), path)
            elif kind is not None:
                self._refuse_block(
                    kind, path, "an assistant turn takes text, image, tool_use and thinking"
                )
        self._breakpoint(run.marks, run.paths)
        text, signature = _reasoning_of(reasoning)
        messages.append(
            ModelMessage(
                role=Role.ASSISTANT,
                **run.content(),
                tool_calls=tuple(calls),
                reasoning=text,
                reasoning_signature=signature,
                cache_breakpoint=run.cached,
            )
        )
        origins.append(where)

    def _breakpoint(self, marks: list[bool], paths: list[str]) -> None:
        """The domain marks a whole message (its last block): a mark on an earlier block of
        it would move."""
        for marked, path in zip(marks[:-1], paths[:-1], strict=True):
            if marked:
                self.refuse(
                    _join(path, "cache_control"),
                    "this gateway marks whole messages for caching: cache_control goes on a "
                    "turn's last block (or on a tool_result)",
                )

    def _kind(self, block: object, path: str) -> str | None:
        if not isinstance(block, dict):
            self.refuse(path, "must be a content block (an object with a type)")
            return None
        if not isinstance(block.get("type"), str):
            self.refuse(_join(path, "type"), "must be a string naming the block's type")
            return None
        kind: str = block["type"]
        return kind

    def _refuse_block(self, kind: str, path: str, takes: str) -> None:
        self.refuse(_join(path, "type"), _BLOCKS_REFUSED.get(kind, f"{takes} blocks, not {kind}"))

    def _part(self, block: dict[str, Any], kind: str, path: str) -> ContentPart | None:
        if kind == "text":
            fields = self.fields(block, path, frozenset({"type", "text", "cache_control"}))
            return self.string(fields, "text", path, required=True)
        fields = self.fields(block, path, frozenset({"type", "source", "cache_control"}))
        return self._image(fields.get("source"), _join(path, "source"))

    def _image(self, value: object, where: str) -> Image | None:
        source = value if isinstance(value, dict) else {}
        kind = source.get("type")
        if kind == "base64":
            fields = self.fields(source, where, frozenset({"type", "media_type", "data"}))
            media_type = self.string(fields, "media_type", where, required=True)
            if media_type and media_type not in IMAGE_MEDIA_TYPES:
                self.refuse(
                    _join(where, "media_type"), f"must be one of {', '.join(IMAGE_MEDIA_TYPES)}"
                )
            try:
                data = base64.b64decode(
                    self.string(fields, "data", where, required=True), validate=True
                )
            except (binascii.Error, ValueError):
                self.refuse(_join(where, "data"), "must be base64")
                return None
            return Image(data=data, mime_type=media_type)
        if kind == "url":
            fields = self.fields(source, where, frozenset({"type", "url"}))
            return Image(url=self.string(fields, "url", where, required=True))
        if kind == "file":
            self.refuse(where, "file ids (the Files API) are not translated by this gateway")
        else:
            self.refuse(_join(where, "type"), 'must be "base64" or "url"')
        return None

    def _tool_result(self, block: dict[str, Any], path: str) -> ModelMessage:
        fields = self.fields(
            block, path, frozenset({"type", "tool_use_id", "content", "is_error", "cache_control"})
        )
        call_id = self.string(fields, "tool_use_id", path, required=True)
        if self.boolean(fields, "is_error", path):
            self.refuse(
                _join(path, "is_error"),
                "this gateway's tool results have no error flag: say the error in the content",
            )
        cached = self.cache_control(fields, path)
        content = fields.get("content")
        if content is None or isinstance(content, str):
            return ModelMessage(
                role=Role.TOOL, content=content or "", tool_call_id=call_id, cache_breakpoint=cached
            )
        parts: list[ContentPart] = []
        for number, inner in enumerate(self.listed(fields, "content", path)):
            where = f"{path}.content[{number}]"
            kind = self._kind(inner, where)
            if kind in ("text", "image"):
                if inner.get("cache_control") is not None:
                    self.refuse(
                        _join(where, "cache_control"),
                        "put cache_control on the tool_result block itself",
                    )
                part = self._part(inner, kind, where)
                if part is not None:
                    parts.append(part)
            elif kind is not None:
                self._refuse_block(kind, where, "a tool_result takes text and image")
        if len(parts) == 1 and isinstance(parts[0], str):
            return ModelMessage(
                role=Role.TOOL, content=parts[0], tool_call_id=call_id, cache_breakpoint=cached
            )
        return ModelMessage(
            role=Role.TOOL,
            content="",
            parts=tuple(parts),
            tool_call_id=call_id,
            cache_breakpoint=cached,
        )

    def _tool_use(self, block: dict[str, Any], path: str) -> ToolCall | None:
        fields = self.fields(
            block, path, frozenset({"type", "id", "name", "input", "cache_control"})
        )
        call_id = self.string(fields, "id", path, required=True)
        name = self.string(fields, "name", path, required=True)
        value = fields.get("input")
        arguments = _json_text(value) if isinstance(value, dict) else None
        if arguments is None:
            self.refuse(_join(path, "input"), "must be a JSON object")
            return None
        # The provider's own form of a tool_use input (input_json), so a call that went out
        # through this facade comes back as the same arguments_json.
        return ToolCall(id=call_id, name=name, arguments_json=input_json(value))

    def _reasoning(self, block: dict[str, Any], kind: str, path: str) -> dict[str, Any]:
        if kind == "thinking":
            fields = self.fields(block, path, frozenset({"type", "thinking", "signature"}))
            self.string(fields, "thinking", path, required=True)
            self.string(fields, "signature", path, required=True)
        else:
            fields = self.fields(block, path, frozenset({"type", "data"}))
            self.string(fields, "data", path, required=True)
        return reasoning_block(fields)

    # --- options --------------------------------------------------------------------------------

    def tools(self, fields: dict[str, Any]) -> tuple[Tool, ...]:
        tools: list[Tool] = []
        for index, value in enumerate(self.listed(fields, "tools")):
            where = f"tools[{index}]"
            kind = value.get("type") if isinstance(value, dict) else None
            if kind not in (None, "custom"):
                self.refuse(
                    _join(where, "type"),
                    f"server tool {kind!r} is not run by this gateway: only custom tools (name, "
                    "description, input_schema)",
                )
                continue
            tool = self.fields(
                value, where, frozenset({"type", "name", "description", "input_schema", "strict"})
            )
            name = self.string(tool, "name", where, required=True)
            description = self.string(tool, "description", where)
            schema = tool.get("input_schema")
            schema_json = _json_text(schema) if isinstance(schema, dict) else None
            if schema_json is None:
                self.refuse(_join(where, "input_schema"), "must be a JSON Schema object")
            strict = self.boolean(tool, "strict", where)
            tools.append(Tool(name, description, schema_json or "", strict=bool(strict)))
        return tuple(tools)

    def tool_choice(self, value: object) -> tuple[ToolChoice | None, bool | None]:
        """The choice, and parallel_tool_calls: False when parallel use is disabled, else unset
        (Anthropic's default allows it)."""
        if value is None:
            return None, None
        kind = value.get("type") if isinstance(value, dict) else None
        kind = kind if isinstance(kind, str) else None  # a list or object is no choice's name
        known = {"type"} if kind == "none" else {"type", "disable_parallel_tool_use"}
        fields = self.fields(value, "tool_choice", frozenset(known | {"name"}))
        choice: ToolChoice | None
        if kind == "tool":
            choice = NamedTool(self.string(fields, "name", "tool_choice", required=True))
        elif kind in _TOOL_CHOICES:
            if fields.get("name") is not None:
                self.refuse("tool_choice.name", 'goes only with type "tool"')
            choice = _TOOL_CHOICES[kind]
        else:
            self.refuse("tool_choice.type", 'must be "auto", "any", "tool" or "none"')
            return None, None
        disabled = self.boolean(fields, "disable_parallel_tool_use", "tool_choice")
        return choice, False if disabled else None

    def reasoning(self, thinking: object, output_config: dict[str, Any]) -> ReasoningOptions | None:
        """enabled → a budget; adaptive → the model decides, steered by output_config.effort;
        disabled or absent → none. An effort without adaptive thinking would turn thinking on
        (the provider sends effort with adaptive thinking), so it is refused."""
        effort_name = output_config.get("effort")
        effort = _EFFORT_OF.get(effort_name) if isinstance(effort_name, str) else None
        if effort_name is not None and effort is None:
            self.refuse(
                "output_config.effort",
                f"this gateway takes efforts {', '.join(_EFFORT_OF)} (no {effort_name!r})",
            )
        if thinking is None:
            kind = None
        else:
            kind = thinking.get("type") if isinstance(thinking, dict) else None
            known = {"type", "budget_tokens"} if kind == "enabled" else {"type"}
            self.fields(thinking, "thinking", frozenset(known))
        if effort_name is not None and kind != "adaptive":
            self.refuse(
                "output_config.effort",
                'this gateway takes an effort only with thinking {"type": "adaptive"}',
            )
        if kind == "adaptive":
            return ReasoningOptions(effort=effort)
        if kind == "enabled":
            assert isinstance(thinking, dict)
            budget = self.integer(thinking, "budget_tokens", "thinking")
            if budget is None:
                self.refuse("thinking.budget_tokens", "is required with thinking enabled")
            return ReasoningOptions(budget_tokens=budget)
        if kind not in (None, "disabled"):
            self.refuse("thinking.type", 'must be "enabled", "adaptive" or "disabled"')
        return None

    def output_format(self, output_config: dict[str, Any]) -> JsonSchemaFormat | None:
        """Structured outputs: the API constrains the output to the schema, hence strict."""
        value = output_config.get("format")
        if value is None:
            return None
        where = "output_config.format"
        fields = self.fields(value, where, frozenset({"type", "schema"}))
        if fields.get("type") != "json_schema":
            self.refuse(_join(where, "type"), 'must be "json_schema"')
        schema = fields.get("schema")
        schema_json = _json_text(schema) if isinstance(schema, dict) else None
        if schema_json is None:
            self.refuse(_join(where, "schema"), "must be a JSON Schema object")
            return None
        return JsonSchemaFormat(name=OUTPUT_SCHEMA_NAME, schema_json=schema_json, strict=True)

    def conversation(self, fields: dict[str, Any]) -> tuple[list[ModelMessage], list[str]]:
        messages: list[ModelMessage] = []
        origins: list[str] = []
        self.system(fields.get("system"), messages, origins)
        if "messages" not in fields:
            self.refuse("messages", "is required")
        turns = self.listed(fields, "messages")
        if "messages" in fields and not turns:
            self.refuse("messages", "must hold at least one message")
        for index, turn in enumerate(turns):
            self.message(turn, index, messages, origins)
        return messages, origins


class _Run:
    """The blocks of one domain message being gathered: its parts (None for a tool_use, which
    only counts for where a cache mark sits), which are marked, and their paths."""

    __slots__ = ("parts", "marks", "paths")

    def __init__(self) -> None:
        self.parts: list[ContentPart] = []
        self.marks: list[bool] = []
        self.paths: list[str] = []

    def add(self, part: ContentPart | None, marked: bool, path: str) -> None:
        if part is not None:
            self.parts.append(part)
        self.marks.append(marked)
        self.paths.append(path)

    @property
    def cached(self) -> bool:
        return any(self.marks)

    def content(self) -> dict[str, Any]:
        """One text is the message's content (as a string content would be); more, or images,
        are its parts."""
        if not self.parts:
            return {"content": ""}
        if len(self.parts) == 1 and isinstance(self.parts[0], str):
            return {"content": self.parts[0]}
        return {"content": "", "parts": tuple(self.parts)}

    def clear(self) -> None:
        self.parts, self.marks, self.paths = [], [], []


def _reasoning_of(blocks: list[dict[str, Any]]) -> tuple[str | None, bytes]:
    """A turn's thinking blocks as the domain's reasoning and signature (`signature_of`). One
    thinking block whose signature is a JSON array, a stream's carrier of several blocks
    (MessageStream), gives that signature's bytes as they were."""
    if not blocks:
        return None, b""
    return "".join(block.get("thinking", "") for block in blocks) or None, signature_of(blocks)


def _object(body: object) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidRequest([FieldViolation("body", "must be a JSON object")])
    return body


def parse_messages(body: object) -> GenerationCall:
    """POST /v1/messages as a domain call; InvalidRequest names each problem by its path."""
    parser = _Body()
    fields = parser.fields(_object(body), "", _MESSAGES_KEYS)
    model = parser.string(fields, "model", "", required=True)
    if fields.get("max_tokens") is None:
        parser.refuse("max_tokens", "is required")
    max_tokens = parser.integer(fields, "max_tokens")
    messages, origins = parser.conversation(fields)
    if parser.cache_control(fields, "") and messages:
        # Top-level cache_control marks the last cacheable block: the last message's.
        messages[-1] = replace(messages[-1], cache_breakpoint=True)
    temperature = parser.number(fields, "temperature")
    if temperature is not None and not 0.0 <= temperature <= 1.0:
        parser.refuse("temperature", f"must be in [0, 1], got {temperature:g}")
    if fields.get("top_k") not in (None, 0):
        parser.refuse("top_k", "this gateway has no top_k sampling (use top_p or temperature)")
    stops = parser.listed(fields, "stop_sequences")
    for index, stop in enumerate(stops):
        if not isinstance(stop, str):
            parser.refuse(f"stop_sequences[{index}]", "must be a string")
    if fields.get("service_tier") not in (None, "auto", "standard_only"):
        parser.refuse("service_tier", 'this gateway takes "auto" and "standard_only"')
    metadata = parser.optional(fields, "metadata", frozenset({"user_id"}))
    user = parser.string(metadata, "user_id", "metadata")
    output_config = parser.optional(fields, "output_config", frozenset({"effort", "format"}))
    tool_choice, parallel = parser.tool_choice(fields.get("tool_choice"))
    request = ModelRequest(
        model=model,
        messages=tuple(messages),
        sampling=SamplingParams(
            temperature=temperature,
            top_p=parser.number(fields, "top_p"),
            max_new_tokens=max_tokens,
            stop=tuple(stop for stop in stops if isinstance(stop, str)),
        ),
        context=RequestContext(user=user),
        tools=parser.tools(fields),
        tool_choice=tool_choice,
        parallel_tool_calls=parallel,
        output_format=parser.output_format(output_config),
        reasoning=parser.reasoning(fields.get("thinking"), output_config),
    )
    stream = parser.boolean(fields, "stream")
    parser.raise_any()
    return GenerationCall(request=request, stream=bool(stream), origins=tuple(origins))


def parse_count_tokens(body: object) -> ModelRequest:
    """POST /v1/messages/count_tokens as a domain request: model, system and messages, with
    thinking and tool_choice read as POST /v1/messages reads them. The count is of the messages
    (and system prompt) only: counting tools is not supported, so `tools` is refused rather than
    left out of a count that would then come out short."""
    parser = _Body()
    fields = parser.fields(_object(body), "", _COUNT_KEYS)
    model = parser.string(fields, "model", "", required=True)
    messages, _ = parser.conversation(fields)
    if fields.get("tools") not in (None, []):
        parser.refuse(
            "tools",
            "counting tools is not supported by this gateway: it counts the system prompt and "
            "messages only (send the request without tools)",
        )
    tool_choice, parallel = parser.tool_choice(fields.get("tool_choice"))
    reasoning = parser.reasoning(fields.get("thinking"), {})
    parser.raise_any()
    return ModelRequest(
        model=model,
        messages=tuple(messages),
        tool_choice=tool_choice,
        parallel_tool_calls=parallel,
        reasoning=reasoning,
    )


# The contract's field names (worker/validation.py, providers' refusals) → the Messages API's.
_PARAMS = {
    "sampling.temperature": "temperature",
    "sampling.top_p": "top_p",
    "sampling.max_new_tokens": "max_tokens",
    "sampling.stop": "stop_sequences",
    "tool_choice.tool_name": "tool_choice.name",
    "tool_choice.mode": "tool_choice.type",
    "parallel_tool_calls": "tool_choice.disable_parallel_tool_use",
    "reasoning": "thinking",
    "reasoning.budget_tokens": "thinking.budget_tokens",
    "reasoning.effort": "output_config.effort",
    "output_format": "output_config.format",
    "output_format.json_schema.name": "output_config.format",
    "output_format.json_schema.schema_json": "output_config.format.schema",
}
_INDEXED = re.compile(r"(sampling\.stop|tools|messages)\[(\d+)\](.*)", re.DOTALL)


def error_param(field: str, call: GenerationCall | None) -> str:
    """A contract field named in a refusal, as the caller's field. A message's fields are the
    caller's message or block it came from (`call.origins`): its parts and tool calls have no
    place of their own in the caller's terms. A field this API does not name passes unchanged."""
    named = _PARAMS.get(field)
    if named is not None:
        return named
    match = _INDEXED.fullmatch(field)
    if match is None:
        return field
    kind, index, rest = match.groups()
    if kind == "sampling.stop":
        return f"stop_sequences[{index}]{rest}"
    if kind == "tools":
        return f"tools[{index}]" + (".input_schema" if rest == ".parameters_json_schema" else rest)
    number = int(index)
    if call is None or number >= len(call.origins):
        return field
    origin = call.origins[number]
    return f"{origin}.tool_use_id" if rest == ".tool_call_id" else origin

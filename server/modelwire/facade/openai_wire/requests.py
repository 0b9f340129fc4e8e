"""OpenAI's Chat Completions and embeddings requests from a caller → the domain (facade/
openai_wire/__init__.py says what translates and what is refused), with no I/O: each field
translated exactly or refused by its own path, `param` in OpenAI's terms."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from modelwire.core import strict_json
from modelwire.core.errors import FieldViolation, InvalidRequest
from modelwire.core.types import (
    ContentPart,
    EmbedRequest,
    Image,
    JsonObjectFormat,
    JsonSchemaFormat,
    ModelMessage,
    ModelRequest,
    NamedTool,
    OutputFormat,
    ReasoningEffort,
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

T = TypeVar("T")

_UNKNOWN = "is not a field this gateway translates"
_INT32 = 2**31 - 1
_INT64 = 2**63 - 1


class _Refused(Exception):
    """One problem with the body, named by its OpenAI param."""

    def __init__(self, param: str, description: str) -> None:
        super().__init__(description)
        self.violation = FieldViolation(param, description)


@dataclass(frozen=True, slots=True)
class ChatCall(GenerationCall):
    """A chat completion call, with what `error_param` needs to name fields as the caller sent
    them: which of `max_tokens` and `max_completion_tokens` it used, and whether `stop` was one
    string rather than a list."""

    max_tokens_param: str = "max_completion_tokens"
    stop_string: bool = False


# --- values ---------------------------------------------------------------------------------------


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _object(value: object, param: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Refused(param, f"must be an object, got {_type_name(value)}")
    return value


def _keys(value: dict[str, Any], param: str, known: frozenset[str]) -> None:
    for key in value:
        if key not in known:
            raise _Refused(f"{param}.{key}", _UNKNOWN)


def _string(value: object, param: str) -> str:
    if not isinstance(value, str):
        raise _Refused(param, f"must be a string, got {_type_name(value)}")
    return value


def _bool(value: object, param: str) -> bool:
    if not isinstance(value, bool):
        raise _Refused(param, f"must be a boolean, got {_type_name(value)}")
    return value


def _number(value: object, param: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Refused(param, f"must be a number, got {_type_name(value)}")
    try:
        return float(value)
    except OverflowError:  # an integer literal past a double's range
        raise _Refused(param, "is too large for a number") from None


def _integer(value: object, param: str, most: int) -> int:
    """An integer the contract's field holds (int32 or int64): a larger one is refused here, not
    overflowed on its way to a worker."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Refused(param, f"must be an integer, got {_type_name(value)}")
    if not -most - 1 <= value <= most:
        raise _Refused(param, f"must be at most {most} in magnitude, got {value}")
    return value


def _list(value: object, param: str) -> list[Any]:
    if not isinstance(value, list):
        raise _Refused(param, f"must be an array, got {_type_name(value)}")
    return value


def _schema_text(value: object, param: str) -> str:
    """A JSON Schema object as the domain's JSON text, its keys in the caller's order."""
    return strict_json.dumps(_object(value, param))


# --- messages -------------------------------------------------------------------------------------

_ROLES = {
    "system": Role.SYSTEM,
    "developer": Role.SYSTEM,
    "user": Role.USER,
    "assistant": Role.ASSISTANT,
    "tool": Role.TOOL,
}
_MESSAGE_KEYS = {
    Role.SYSTEM: frozenset({"role", "content", "name"}),
    Role.USER: frozenset({"role", "content", "name"}),
    Role.TOOL: frozenset({"role", "content", "tool_call_id"}),
    Role.ASSISTANT: frozenset(
        {
            "role",
            "content",
            "name",
            "tool_calls",
            "reasoning_content",
            "reasoning_signature",
            # What a response's message carries when a caller sends it back: accepted empty.
            "refusal",
            "audio",
            "function_call",
            "annotations",
        }
    ),
}
_TEXT_PART_KEYS = frozenset({"type", "text", "prompt_cache_breakpoint"})
_IMAGE_PART_KEYS = frozenset({"type", "image_url", "prompt_cache_breakpoint"})
_DATA_URL = re.compile(r"data:([^;,]*);base64,(.*)", re.DOTALL)


def _image(value: object, param: str) -> Image:
    image_url = _object(value, param)
    _keys(image_url, param, frozenset({"url", "detail"}))
    detail = image_url.get("detail")
    if detail not in (None, "auto"):
        raise _Refused(
            f"{param}.detail",
            f"{detail!r} cannot be honoured: images go to the model at its own resolution; leave "
            'detail out or set "auto"',
        )
    url = _string(image_url.get("url"), f"{param}.url")
    if not url.startswith("data:"):
        return Image(url=url)
    data_url = _DATA_URL.fullmatch(url)
    if data_url is None:
        raise _Refused(f"{param}.url", "a data: URL must be base64 (data:<type>;base64,<data>)")
    try:
        data = base64.b64decode(data_url.group(2), validate=True)
    except ValueError:  # binascii.Error, or a character outside ASCII
        raise _Refused(f"{param}.url", "the data: URL's data is not base64") from None
    return Image(data=data, mime_type=data_url.group(1))


def _cache_breakpoint(part: dict[str, Any], param: str, last: bool) -> bool:
    """`prompt_cache_breakpoint` on a part. The domain marks a whole message (the cache ends with
    it), so only its last part takes one, and with no `ttl` (the lifetime is the provider's)."""
    value = part.get("prompt_cache_breakpoint")
    if value is None:
        return False
    where = f"{param}.prompt_cache_breakpoint"
    marker = _object(value, where)
    _keys(marker, where, frozenset({"mode", "ttl"}))
    if marker.get("mode") != "explicit":
        raise _Refused(f"{where}.mode", 'must be "explicit"')
    if marker.get("ttl") is not None:
        raise _Refused(f"{where}.ttl", "cannot be honoured: the cache's lifetime is the provider's")
    if not last:
        raise _Refused(where, "only a message's last part takes one here (the cache ends there)")
    return True


def _parts(value: list[Any], param: str, role: Role) -> tuple[tuple[ContentPart, ...], bool]:
    """A content array as the message's parts, and whether it marks a cache breakpoint."""
    if not value:
        raise _Refused(param, "must hold at least one part")
    parts: list[ContentPart] = []
    marked = False
    last = len(value) - 1
    for number, item in enumerate(value):
        where = f"{param}[{number}]"
        part = _object(item, where)
        kind = part.get("type")
        if kind == "text":
            _keys(part, where, _TEXT_PART_KEYS)
            parts.append(_string(part.get("text"), f"{where}.text"))
        elif kind == "image_url" and role is Role.USER:
            _keys(part, where, _IMAGE_PART_KEYS)
            parts.append(_image(part.get("image_url"), f"{where}.image_url"))
        else:
            takes = "text and image_url" if role is Role.USER else "text"
            raise _Refused(
                f"{where}.type",
                f"{kind!r} is not a part this gateway translates in a {role.value} message "
                f"(it takes {takes})",
            )
        marked = _cache_breakpoint(part, where, number == last) or marked
    return tuple(parts), marked


def _tool_calls(value: object, param: str) -> tuple[ToolCall, ...]:
    calls: list[ToolCall] = []
    for number, item in enumerate(_list(value, param)):
        where = f"{param}[{number}]"
        call = _object(item, where)
        if call.get("type") != "function":
            raise _Refused(f"{where}.type", 'only "function" tool calls are translated')
        _keys(call, where, frozenset({"id", "type", "function"}))
        function = _object(call.get("function"), f"{where}.function")
        _keys(function, f"{where}.function", frozenset({"name", "arguments"}))
        calls.append(
            ToolCall(
                id=_string(call.get("id"), f"{where}.id"),
                name=_string(function.get("name"), f"{where}.function.name"),
                arguments_json=_string(function.get("arguments"), f"{where}.function.arguments"),
            )
        )
    return tuple(calls)


def _signature(value: object, param: str) -> bytes:
    try:
        return base64.b64decode(_string(value, param), validate=True)
    except ValueError:  # binascii.Error, or a character outside ASCII
        raise _Refused(param, "must be base64, as the response carried it") from None


def _assistant_extras(message: dict[str, Any], param: str) -> None:
    """What an echoed response message carries that the domain has no place for: only empty."""
    if message.get("refusal") is not None:
        raise _Refused(
            f"{param}.refusal",
            "cannot be translated (a turn has no refusal apart from its text); send it as content",
        )
    for key in ("audio", "function_call"):
        if message.get(key) is not None:
            raise _Refused(f"{param}.{key}", f"{_UNKNOWN} (only null)")
    if message.get("annotations"):
        raise _Refused(f"{param}.annotations", f"{_UNKNOWN} (only empty)")


def _message(value: object, param: str) -> ModelMessage:
    message = _object(value, param)
    wire_role = message.get("role")
    role = _ROLES.get(wire_role) if isinstance(wire_role, str) else None
    if role is None:
        legacy = " (function messages are legacy: use tool messages)"
        raise _Refused(
            f"{param}.role",
            f"must be one of {', '.join(_ROLES)}, got {wire_role!r}"
            + (legacy if wire_role == "function" else ""),
        )
    _keys(message, param, _MESSAGE_KEYS[role])
    content = message.get("content")
    text, marked = "", False
    parts: tuple[ContentPart, ...] = ()
    if isinstance(content, list):
        parts, marked = _parts(content, f"{param}.content", role)
    elif content is not None or role is not Role.ASSISTANT:
        text = _string(content, f"{param}.content")
    name = message.get("name")
    name = "" if name is None else _string(name, f"{param}.name")
    if role is Role.TOOL:
        call_id = _string(message.get("tool_call_id"), f"{param}.tool_call_id")
        return ModelMessage(role, text, parts=parts, tool_call_id=call_id, cache_breakpoint=marked)
    if role is not Role.ASSISTANT:
        return ModelMessage(role, text, name=name, parts=parts, cache_breakpoint=marked)
    _assistant_extras(message, param)
    calls, reasoning = message.get("tool_calls"), message.get("reasoning_content")
    signature = message.get("reasoning_signature")
    return ModelMessage(
        role,
        text,
        name=name,
        parts=parts,
        tool_calls=() if calls is None else _tool_calls(calls, f"{param}.tool_calls"),
        reasoning=None if reasoning is None else _string(reasoning, f"{param}.reasoning_content"),
        reasoning_signature=(
            b"" if signature is None else _signature(signature, f"{param}.reasoning_signature")
        ),
        cache_breakpoint=marked,
    )


# --- the request's other fields -------------------------------------------------------------------


def _max_tokens(value: object, param: str) -> int:
    return _integer(value, param, _INT32)


def _seed(value: object, param: str) -> int:
    return _integer(value, param, _INT64)


def _stop(value: object, param: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    return tuple(
        _string(item, f"{param}[{index}]") for index, item in enumerate(_list(value, param))
    )


def _tool(value: object, param: str) -> Tool:
    tool = _object(value, param)
    if tool.get("type") != "function":
        raise _Refused(f"{param}.type", 'only "function" tools are translated')
    _keys(tool, param, frozenset({"type", "function"}))
    where = f"{param}.function"
    function = _object(tool.get("function"), where)
    _keys(function, where, frozenset({"name", "description", "parameters", "strict"}))
    description, parameters = function.get("description"), function.get("parameters")
    strict = function.get("strict")
    return Tool(
        name=_string(function.get("name"), f"{where}.name"),
        description="" if description is None else _string(description, f"{where}.description"),
        parameters_json_schema=(
            "" if parameters is None else _schema_text(parameters, f"{where}.parameters")
        ),
        strict=strict is not None and _bool(strict, f"{where}.strict"),
    )


def _tools(value: object, param: str) -> tuple[Tool, ...]:
    return tuple(_tool(item, f"{param}[{index}]") for index, item in enumerate(_list(value, param)))


def _tool_choice(value: object, param: str) -> ToolChoice:
    if isinstance(value, str):
        try:
            return ToolChoiceMode(value)
        except ValueError:
            raise _Refused(
                param, f'must be "auto", "none", "required" or a function to call, got {value!r}'
            ) from None
    choice = _object(value, param)
    if choice.get("type") != "function":
        raise _Refused(
            f"{param}.type", 'only "function" is translated (not allowed_tools or custom tools)'
        )
    _keys(choice, param, frozenset({"type", "function"}))
    function = _object(choice.get("function"), f"{param}.function")
    _keys(function, f"{param}.function", frozenset({"name"}))
    return NamedTool(_string(function.get("name"), f"{param}.function.name"))


def _response_format(value: object, param: str) -> OutputFormat | None:
    response_format = _object(value, param)
    kind = response_format.get("type")
    if kind in ("text", "json_object"):
        _keys(response_format, param, frozenset({"type"}))
        return None if kind == "text" else JsonObjectFormat()
    if kind != "json_schema":
        raise _Refused(f"{param}.type", "must be text, json_object or json_schema")
    _keys(response_format, param, frozenset({"type", "json_schema"}))
    where = f"{param}.json_schema"
    spec = _object(response_format.get("json_schema"), where)
    _keys(spec, where, frozenset({"name", "description", "schema", "strict"}))
    if spec.get("description"):
        raise _Refused(
            f"{where}.description",
            "cannot be translated (structured output has no description here); put it in the "
            "schema's own description",
        )
    if spec.get("schema") is None:
        raise _Refused(f"{where}.schema", "is required here (or use json_object)")
    strict = spec.get("strict")
    return JsonSchemaFormat(
        name=_string(spec.get("name"), f"{where}.name"),
        schema_json=_schema_text(spec["schema"], f"{where}.schema"),
        strict=strict is not None and _bool(strict, f"{where}.strict"),
    )


def _reasoning(value: object, param: str) -> ReasoningOptions:
    """The four efforts the contract has; `none`, `xhigh` and `max` have no domain equivalent
    (no reasoning is not "the model's default", which is what leaving the field out means)."""
    try:
        return ReasoningOptions(effort=ReasoningEffort(_string(value, param)))
    except ValueError:
        raise _Refused(
            param,
            f"{value!r} cannot be honoured: the efforts served are minimal, low, medium and high",
        ) from None


def _metadata(value: object, param: str) -> dict[str, str]:
    return {key: _string(item, f"{param}.{key}") for key, item in _object(value, param).items()}


def _include_usage(value: object, param: str) -> bool:
    options = _object(value, param)
    _keys(options, param, frozenset({"include_usage", "include_obfuscation"}))
    obfuscation, usage = options.get("include_obfuscation"), options.get("include_usage")
    if obfuscation is not None and _bool(obfuscation, f"{param}.include_obfuscation"):
        raise _Refused(
            f"{param}.include_obfuscation",
            "cannot be honoured: chunks are not padded here; set it false or leave it out",
        )
    return usage is not None and _bool(usage, f"{param}.include_usage")


_LEGACY = "legacy function calling is not translated; use tools and tool_choice"

# Fields accepted only with a value that means the default, and why any other is refused.
_DEFAULT_ONLY: dict[str, tuple[Callable[[object], bool], str]] = {
    "n": (lambda v: type(v) is int and v == 1, "only one choice per call is served"),
    "logprobs": (lambda v: v is False, "log probabilities are not returned"),
    "top_logprobs": (lambda v: False, "log probabilities are not returned"),
    "logit_bias": (lambda v: v == {}, "token biases cannot be honoured (tokenizers differ)"),
    "audio": (lambda v: False, "audio output is not served"),
    "modalities": (lambda v: v == ["text"], 'only text output is served (["text"])'),
    "prediction": (lambda v: False, "predicted outputs are not served"),
    "web_search_options": (lambda v: False, "web search is not served"),
    "service_tier": (lambda v: v in ("auto", "default"), 'only "auto" or "default" is served'),
    "store": (lambda v: v is False, "completions are not stored"),
    "verbosity": (lambda v: v == "medium", 'cannot be honoured (only "medium", the default)'),
    "function_call": (lambda v: False, _LEGACY),
    "functions": (lambda v: False, _LEGACY),
    "prompt_cache_key": (lambda v: False, "cannot be honoured (no cache routing by key)"),
    "prompt_cache_options": (lambda v: False, "cannot be honoured (caching is the provider's)"),
    "prompt_cache_retention": (lambda v: False, "cannot be honoured (caching is the provider's)"),
    "safety_identifier": (lambda v: False, "cannot be honoured (no abuse monitoring by id)"),
    "moderation": (lambda v: False, "moderation is not run"),
}
_TRANSLATED = frozenset(
    {
        "model",
        "messages",
        "temperature",
        "top_p",
        "max_tokens",
        "max_completion_tokens",
        "stop",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "response_format",
        "reasoning_effort",
        "user",
        "metadata",
        "stream",
        "stream_options",
    }
)


class _Body:
    """A body's fields, read one by one; each problem is collected, so one answer names them
    all (up to InvalidRequest's bound)."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body
        self.violations: list[FieldViolation] = []

    def field(self, key: str, parse: Callable[[object, str], T]) -> T | None:
        """The field parsed, or None when it is absent, null or refused."""
        value = self.body.get(key)
        if value is None:
            return None
        try:
            return parse(value, key)
        except _Refused as refused:
            self.violations.append(refused.violation)
            return None

    def refuse(self, param: str, description: str) -> None:
        self.violations.append(FieldViolation(param, description))


def _messages(body: _Body) -> tuple[ModelMessage, ...]:
    value = body.body.get("messages")
    if not isinstance(value, list) or not value:
        body.refuse(
            "messages",
            "is required" if value is None else "must be an array of at least one message",
        )
        return ()
    messages: list[ModelMessage] = []
    for index, item in enumerate(value):
        try:
            messages.append(_message(item, f"messages[{index}]"))
        except _Refused as refused:
            body.violations.append(refused.violation)
    return tuple(messages)


def _refuse_unknown(body: _Body) -> None:
    for key, value in body.body.items():
        if key in _TRANSLATED or value is None:
            continue
        rule = _DEFAULT_ONLY.get(key)
        if rule is None:
            body.refuse(key, _UNKNOWN)
        elif not rule[0](value):
            body.refuse(key, rule[1])


def parse_chat(body: object) -> ChatCall:
    """A POST /v1/chat/completions body as a domain call, or InvalidRequest naming every field
    it cannot translate exactly."""
    if not isinstance(body, dict):
        raise InvalidRequest([FieldViolation("", "the body must be a JSON object")])
    fields = _Body(body)
    _refuse_unknown(fields)
    model = fields.field("model", _string)
    if model is None and body.get("model") is None:
        fields.refuse("model", "is required")
    messages = _messages(fields)
    max_tokens = fields.field("max_tokens", _max_tokens)
    max_completion_tokens = fields.field("max_completion_tokens", _max_tokens)
    if None not in (max_tokens, max_completion_tokens) and max_tokens != max_completion_tokens:
        fields.refuse(
            "max_tokens",
            f"differs from max_completion_tokens ({max_completion_tokens}); send one of them",
        )
    sampling = SamplingParams(
        temperature=fields.field("temperature", _number),
        top_p=fields.field("top_p", _number),
        max_new_tokens=max_tokens if max_completion_tokens is None else max_completion_tokens,
        stop=fields.field("stop", _stop) or (),
        seed=fields.field("seed", _seed),
        presence_penalty=fields.field("presence_penalty", _number),
        frequency_penalty=fields.field("frequency_penalty", _number),
    )
    stream = fields.field("stream", _bool) or False
    include_usage = fields.field("stream_options", _include_usage) or False
    if body.get("stream_options") is not None and not stream:
        fields.refuse("stream_options", "only applies with stream: true")
    context = RequestContext(
        user=fields.field("user", _string) or "",
        metadata=fields.field("metadata", _metadata) or {},
    )
    request = ModelRequest(
        model=model or "",
        messages=messages,
        sampling=sampling,
        context=context,
        tools=fields.field("tools", _tools) or (),
        tool_choice=fields.field("tool_choice", _tool_choice),
        parallel_tool_calls=fields.field("parallel_tool_calls", _bool),
        output_format=fields.field("response_format", _response_format),
        reasoning=fields.field("reasoning_effort", _reasoning),
    )
    if fields.violations:
        raise InvalidRequest(fields.violations)
    return ChatCall(
        request,
        stream,
        origins=tuple(f"messages[{index}]" for index in range(len(messages))),
        include_usage=include_usage,
        max_tokens_param=(
            "max_tokens"
            if max_tokens is not None and max_completion_tokens is None
            else "max_completion_tokens"
        ),
        stop_string=isinstance(body.get("stop"), str),
    )


# --- field names ----------------------------------------------------------------------------------

_PARAMS = {
    "sampling.temperature": "temperature",
    "sampling.top_p": "top_p",
    "sampling.seed": "seed",
    "sampling.presence_penalty": "presence_penalty",
    "sampling.frequency_penalty": "frequency_penalty",
    "sampling.stop": "stop",
    "tool_choice.tool_name": "tool_choice",
    "tool_choice.mode": "tool_choice",
    "output_format": "response_format",
    "output_format.json_schema.name": "response_format.json_schema.name",
    "output_format.json_schema.schema_json": "response_format.json_schema.schema",
    "reasoning": "reasoning_effort",
    "reasoning.effort": "reasoning_effort",
    "reasoning.budget_tokens": "reasoning_effort",
    "inputs": "input",
}
_INDEXED = re.compile(r"(messages|tools|sampling\.stop|inputs)\[(\d+)\](.*)", re.DOTALL)
_MESSAGE_LIST = re.compile(r"\.(parts|tool_calls)\[(\d+)\](.*)", re.DOTALL)
_TOOL_FIELDS = {
    ".name": ".function.name",
    ".description": ".function.description",
    ".parameters_json_schema": ".function.parameters",
}
_CALL_FIELDS = {".name": ".function.name", ".arguments_json": ".function.arguments"}


def _message_param(rest: str, message: ModelMessage | None) -> str:
    """A domain message's field (after `messages[i]`) as Chat Completions names it."""
    if rest == ".reasoning":
        return ".reasoning_content"
    if rest == ".cache_breakpoint":
        last = len(message.parts) - 1 if message is not None and message.parts else None
        return ".content" if last is None else f".content[{last}].prompt_cache_breakpoint"
    listed = _MESSAGE_LIST.fullmatch(rest)
    if listed is None:
        return rest
    kind, number, inner = listed.groups()
    if kind == "tool_calls":
        return f".tool_calls[{number}]{_CALL_FIELDS.get(inner, inner)}"
    if inner.startswith(".image"):
        inner = ".image_url" if inner == ".image" else ".image_url.url"
    return f".content[{number}]{inner}"


def error_param(field: str, call: GenerationCall | None) -> str:
    """A field the contract's checks name (`sampling.max_new_tokens`, `messages[3].parts[0].image`)
    as this API's param (`max_completion_tokens`, `messages[3].content[0].image_url`); a field it
    has no name for passes unchanged."""
    if field == "sampling.max_new_tokens":
        return call.max_tokens_param if isinstance(call, ChatCall) else "max_completion_tokens"
    named = _PARAMS.get(field)
    if named is not None:
        return named
    indexed = _INDEXED.fullmatch(field)
    if indexed is None:
        return field
    kind, number, rest = indexed.groups()
    index = int(number)
    if kind == "sampling.stop":
        return "stop" if isinstance(call, ChatCall) and call.stop_string else f"stop[{index}]"
    if kind == "inputs":
        return f"input[{index}]{rest}"
    if kind == "tools":
        return f"tools[{index}]{_TOOL_FIELDS.get(rest, rest)}"
    known = call is not None and index < len(call.origins)
    origin = call.origins[index] if call is not None and known else f"messages[{index}]"
    message = call.request.messages[index] if call is not None and known else None
    return origin + _message_param(rest, message)


# --- embeddings, models, errors -------------------------------------------------------------------

_EMBEDDING_KEYS = frozenset({"model", "input", "dimensions", "encoding_format", "user"})


def _inputs(value: object, param: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    items = _list(value, param)
    if not items:
        raise _Refused(param, "must hold at least one text")
    if not all(isinstance(item, str) for item in items):
        raise _Refused(param, "must be a text or an array of texts (token arrays are not taken)")
    return tuple(items)


def _encoding_format(value: object, param: str) -> str:
    if value not in ("float", "base64"):
        raise _Refused(param, f'must be "float" or "base64", got {value!r}')
    return _string(value, param)


def _no_user(value: object, param: str) -> None:
    if _string(value, param):
        raise _Refused(
            param, "cannot be honoured: embeddings carry no end-user id here; leave it out"
        )


def parse_embeddings(body: object) -> tuple[EmbedRequest, str]:
    """A POST /v1/embeddings body as a domain request and the encoding its answer takes ("float",
    OpenAI's default, or "base64", which the openai SDK asks for unless told otherwise).

    `user` is refused unless empty: the domain's embedding request has no request context to carry
    it in, and an end-user id dropped silently would break a caller's abuse attribution."""
    if not isinstance(body, dict):
        raise InvalidRequest([FieldViolation("", "the body must be a JSON object")])
    fields = _Body(body)
    for key, value in body.items():
        if key not in _EMBEDDING_KEYS and value is not None:
            fields.refuse(key, _UNKNOWN)
    model = fields.field("model", _string)
    if body.get("model") is None:
        fields.refuse("model", "is required")
    inputs = fields.field("input", _inputs)
    if body.get("input") is None:
        fields.refuse("input", "is required")
    dimensions = fields.field("dimensions", lambda value, param: _integer(value, param, _INT32))
    encoding = fields.field("encoding_format", _encoding_format) or "float"
    fields.field("user", _no_user)
    if fields.violations:
        raise InvalidRequest(fields.violations)
    return EmbedRequest(model=model or "", inputs=inputs or (), dimensions=dimensions), encoding

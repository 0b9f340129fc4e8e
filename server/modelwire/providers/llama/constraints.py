"""Constrained output of a local model: which grammar a request needs (output_format, a forced
tool call), the refusals of combinations llama.cpp's grammars cannot honour, and the streams that
turn a constrained completion into tool-call deltas."""

from __future__ import annotations

import dataclasses
import re
import secrets
from collections.abc import Sequence

from modelwire.core.errors import FieldViolation
from modelwire.core.types import (
    GrammarFormat,
    JsonObjectFormat,
    JsonSchemaFormat,
    ModelMessage,
    ModelRequest,
    NamedTool,
    Role,
    Tool,
    ToolCallDelta,
    ToolChoiceMode,
)
from modelwire.providers.llama.engine import GrammarError, GrammarSyntaxError, LlamaModel
from modelwire.providers.llama.grammar import (
    SchemaNotSupported,
    ToolSchemaNotSupported,
    json_object_grammar,
    json_schema_grammar,
    tool_arguments_grammar,
    tool_choice_grammar,
)

# llama.cpp parses a grammar in time that grows faster than its length (a 1 MB grammar: seconds,
# a 990 kB enum: 25 s); this bound keeps a parse within tens of milliseconds.
MAX_GRAMMAR_CHARS = 64 * 1024


@dataclasses.dataclass(frozen=True, slots=True)
class Constraint:
    grammar: str
    # The request field a grammar failure is reported on.
    field: str
    # Text closing the last user turn: the forced tool(s) and the reply's shape.
    instruction: str = ""
    # The forced tool; or None with `choose` set: REQUIRED among several, {"name", "arguments"}.
    tool: Tool | None = None
    choose: bool = False

    def call_stream(self) -> ToolCallStream | ChosenCallStream | None:
        call_id = f"call_{secrets.token_hex(12)}"
        if self.tool is not None:
            return ToolCallStream(call_id, self.tool.name)
        return ChosenCallStream(call_id) if self.choose else None


class ToolCallStream:
    """A forced tool's call: every generated piece is arguments; id and name ride on the first."""

    def __init__(self, call_id: str, name: str) -> None:
        self._id = call_id
        self._name = name
        self._started = False

    def _delta(self, arguments: str) -> ToolCallDelta:
        if self._started:
            return ToolCallDelta(index=0, arguments_delta=arguments)
        self._started = True
        return ToolCallDelta(index=0, id=self._id, name=self._name, arguments_delta=arguments)

    def feed(self, text: str) -> tuple[ToolCallDelta, ...]:
        return (self._delta(text),)

    def finish(self, tail: str, complete: bool) -> tuple[ToolCallDelta, ...]:
        return (self._delta(tail),) if tail or not self._started else ()


# The grammar writes {"name": "<tool>", "arguments": <arguments>} with at most one space between
# tokens.
_CHOSEN_HEADER = re.compile(r'\{ ?"name" ?: ?"([A-Za-z0-9_-]+)" ?, ?"arguments" ?: ?')


_CHOSEN_TAIL = re.compile(r"[ }]*$")


class ChosenCallStream:
    """REQUIRED among several tools: the name is known once the header is written; the arguments
    stream after it, holding back closing braces and spaces until it is known whether they close
    the arguments or the wrapper."""

    def __init__(self, call_id: str) -> None:
        self._id = call_id
        self._name = ""
        self._pending = ""
        self._started = False

    def feed(self, text: str) -> tuple[ToolCallDelta, ...]:
        self._pending += text
        if not self._name:
            header = _CHOSEN_HEADER.match(self._pending)
            if header is None:
                return ()
            self._name = header.group(1)
            self._pending = self._pending[header.end() :]
        if not self._started:
            self._pending = self._pending.lstrip(" ")
        held = _CHOSEN_TAIL.search(self._pending)
        cut = held.start() if held is not None else len(self._pending)
        ready, self._pending = self._pending[:cut], self._pending[cut:]
        return (self._delta(ready),) if ready else ()

    def _delta(self, arguments: str) -> ToolCallDelta:
        if self._started:
            return ToolCallDelta(index=0, arguments_delta=arguments)
        self._started = True
        return ToolCallDelta(index=0, id=self._id, name=self._name, arguments_delta=arguments)

    def finish(self, tail: str, complete: bool) -> tuple[ToolCallDelta, ...]:
        self._pending += tail
        if not self._name:
            header = _CHOSEN_HEADER.match(self._pending)
            if header is None:
                return ()  # cut before the tool's name: no call
            self._name = header.group(1)
            self._pending = self._pending[header.end() :]
        rest = self._pending
        if complete:  # the wrapper's closing brace is the last one
            closing = rest.rindex("}")
            rest = (rest[:closing] + rest[closing + 1 :]).rstrip()
        return (self._delta(rest),) if rest or not self._started else ()


def _describe(tool: Tool) -> str:
    return f"{tool.name}" + (f" ({tool.description.strip()})" if tool.description.strip() else "")


def constraint_for(
    request: ModelRequest, model: LlamaModel, model_name: str
) -> tuple[Constraint | None, list[FieldViolation]]:
    """The grammar (and prompt text) a request needs, or the violations that refuse it."""
    violations: list[FieldViolation] = []
    named = f"model {model_name!r}"
    forced = combination_refusals(request, named, violations)
    output_format = request.output_format
    constraint: Constraint | None = None
    try:
        if len(forced) == 1:
            index, tool = forced[0]
            field = f"tools[{index}].parameters_json_schema"
            instruction = (
                f"Call the tool {_describe(tool)}. Reply with its arguments only, as JSON matching "
                f"this JSON Schema: {tool.schema_json}"
            )
            constraint = Constraint(
                tool_arguments_grammar(index, tool), field, instruction, tool=tool
            )
        elif forced:
            lines = "\n".join(
                f"- {_describe(tool)}, arguments matching this JSON Schema: {tool.schema_json}"
                for _, tool in forced
            )
            instruction = (
                f'Call one of these tools:\n{lines}\nReply with JSON only: {{"name": the tool\'s '
                'name, "arguments": its arguments}.'
            )
            constraint = Constraint(
                tool_choice_grammar(forced), "tool_choice", instruction, choose=True
            )
        elif isinstance(output_format, JsonSchemaFormat):
            constraint = Constraint(
                json_schema_grammar(output_format.schema_json),
                "output_format.json_schema.schema_json",
            )
        elif isinstance(output_format, JsonObjectFormat):
            constraint = Constraint(json_object_grammar(), "output_format")
        elif isinstance(output_format, GrammarFormat):
            constraint = Constraint(output_format.gbnf, "output_format.grammar")
    except ToolSchemaNotSupported as refused:
        violations.append(
            FieldViolation(
                f"tools[{refused.index}].parameters_json_schema",
                f"{named} cannot enforce {refused.error.pointer} of this schema in its grammar: "
                f"{refused.error.reason}",
            )
        )
    except SchemaNotSupported as refused:
        violations.append(
            FieldViolation(
                "output_format.json_schema.schema_json",
                f"{named} cannot enforce {refused.pointer} of this schema in its grammar: "
                f"{refused.reason}",
            )
        )
    if constraint is not None and len(constraint.grammar) > MAX_GRAMMAR_CHARS:
        violations.append(
            FieldViolation(
                constraint.field,
                f"{named}: its grammar would be {len(constraint.grammar)} characters, more than "
                f"the {MAX_GRAMMAR_CHARS} llama.cpp parses in reasonable time; simplify it (fewer "
                "enum values, properties or repetitions)",
            )
        )
    elif constraint is not None:
        try:
            model.check_grammar(constraint.grammar)
        except GrammarError as error:
            whose = (
                "the grammar"
                if constraint.field == "output_format.grammar"
                else "the grammar modelwire wrote for it"
            )
            syntax = isinstance(error, GrammarSyntaxError)
            verdict = "does not parse" if syntax else "was refused by llama.cpp"
            described = f"{named}: {whose} {verdict}: {error.reason}"
            violations.append(FieldViolation(constraint.field, described))
    return (None if violations else constraint), violations


def name_refusals(messages: Sequence[ModelMessage], named: str) -> list[FieldViolation]:
    """gemma's turns have no names: `name` is read only as the label of a tool result that answers
    no call by id (gemma_format.py), so anywhere else it is refused rather than dropped."""
    called = {call.id: call.name for message in messages for call in message.tool_calls}
    violations: list[FieldViolation] = []
    for index, message in enumerate(messages):
        if not message.name:
            continue
        if message.role is not Role.TOOL:
            reason = f"{named} has no names on its turns; drop the name or write it into the text"
        elif message.tool_call_id and called.get(message.tool_call_id) != message.name:
            reason = (
                f"{named} labels a tool result with the name of the call it answers, "
                "which differs; drop the name"
            )
        else:
            continue
        violations.append(FieldViolation(f"messages[{index}].name", reason))
    return violations


def combination_refusals(
    request: ModelRequest, named: str, violations: list[FieldViolation]
) -> list[tuple[int, Tool]]:
    """The cheap refusals (no grammar built): a tool choice the model cannot make, and what breaks
    constrained output. Returns the forced tools."""
    forced = _forced_tools(request, named, violations)
    if forced and request.output_format is not None:
        violations.append(
            FieldViolation(
                "output_format",
                f"{named} writes a forced tool call instead of text; drop output_format or the "
                "forced tool",
            )
        )
    if (forced or request.output_format is not None) and request.sampling.stop:
        violations.append(
            FieldViolation(
                "sampling.stop",
                f"{named} would cut its constrained output at a stop string, leaving it invalid; "
                "drop the stop strings",
            )
        )
    return forced


def _forced_tools(
    request: ModelRequest, named: str, violations: list[FieldViolation]
) -> list[tuple[int, Tool]]:
    """The tools a call must be made to (with their index in the request), or [] for text."""
    if not request.tools:
        return []
    choice = request.tool_choice
    if request.parallel_tool_calls:
        violations.append(
            FieldViolation(
                "parallel_tool_calls",
                f"{named} makes one tool call per turn; set it to false or leave it unset",
            )
        )
    if choice is ToolChoiceMode.NONE:
        return []
    if isinstance(choice, NamedTool):
        return [
            (index, tool) for index, tool in enumerate(request.tools) if tool.name == choice.name
        ][:1]
    if choice is ToolChoiceMode.REQUIRED:
        return list(enumerate(request.tools))
    violations.append(
        FieldViolation(
            "tool_choice",
            f"{named} cannot decide whether to call a tool: force one (REQUIRED, or a tool's "
            "name) or set NONE for text",
        )
    )
    return []

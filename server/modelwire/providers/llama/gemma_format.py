"""Gemma's chat turn format, applied by hand because the shipped GGUF carries no chat template.

Gemma has no system role: the system text opens the first user turn. Tool results are shown to
the model as user turns; the assistant speaks as "model". Gemma has no tool format either: an
assistant turn's tool calls and a tool's result are written as plain lines of text (`tool_lines`),
and the instruction describing a forced tool call (llama/client.py) closes the last user turn.

The prompt is a list of pieces, each either a template marker or text. Only markers may become
control tokens: a caller who writes `<end_of_turn>` in a message, a tool argument or a tool result
gets those characters as text, so no message can close its own turn and speak for another role.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from modelwire.core.types import ModelMessage, Role

START_OF_TURN = "<start_of_turn>"
END_OF_TURN = "<end_of_turn>"

_SPEAKER = {Role.USER: "user", Role.TOOL: "user", Role.ASSISTANT: "model"}


@dataclass(frozen=True, slots=True)
class PromptPiece:
    """`template`: the format's own text, the same in every prompt (a tokenizer may keep its
    tokens); a marker is always template."""

    text: str
    marker: bool = False
    template: bool = False


_START = PromptPiece(START_OF_TURN, marker=True, template=True)
_END = PromptPiece(END_OF_TURN, marker=True, template=True)
_LINE_BREAK = PromptPiece("\n", template=True)
_MODEL_SPEAKS = PromptPiece("model\n", template=True)


def _turn(speaker: str, content: str) -> list[PromptPiece]:
    return [_START, PromptPiece(f"{speaker}\n{content}"), _END, _LINE_BREAK]


def _joined(*paragraphs: str) -> str:
    return "\n\n".join(paragraph for paragraph in paragraphs if paragraph)


def _content(message: ModelMessage, names: dict[str, str]) -> str:
    """A turn's text: tool calls and results written out, one call per line."""
    text = message.text
    if message.tool_calls:
        calls = "\n".join(
            f"Tool call {call.id}: {call.name} {call.arguments_json or '{}'}"
            for call in message.tool_calls
        )
        text = _joined(text, calls)
    if message.role is Role.TOOL:
        name = names.get(message.tool_call_id) or message.name
        label = " ".join(part for part in (message.tool_call_id, name) if part)
        text = f"Tool result{' ' + label if label else ''}:\n{text}"
    return text


def format_gemma_chat(messages: Sequence[ModelMessage], instruction: str = "") -> list[PromptPiece]:
    """The prompt after BOS, as pieces; it ends by opening the model's turn. `instruction` (text)
    ends the last turn when that turn is the user's, or comes as a user turn of its own."""
    pending_system = "\n\n".join(m.text for m in messages if m.role is Role.SYSTEM)
    names = {call.id: call.name for message in messages for call in message.tool_calls}
    turns: list[tuple[str, str]] = []
    for message in messages:
        if message.role is Role.SYSTEM:
            continue
        speaker, content = _SPEAKER[message.role], _content(message, names)
        if pending_system:
            if message.role is Role.ASSISTANT:
                turns.append(("user", pending_system))
            else:
                content = f"{pending_system}\n\n{content}"
            pending_system = ""
        turns.append((speaker, content))
    if pending_system:
        turns.append(("user", pending_system))
    if instruction:
        if turns and turns[-1][0] == "user":
            turns[-1] = ("user", _joined(turns[-1][1], instruction))
        else:
            turns.append(("user", instruction))
    pieces: list[PromptPiece] = []
    for speaker, content in turns:
        pieces += _turn(speaker, content)
    return pieces + [_START, _MODEL_SPEAKS]

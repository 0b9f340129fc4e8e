"""Gemma's chat turn format, applied by hand because the shipped GGUF carries no chat template.

Gemma has no system role: the system text opens the first user turn. Tool results are shown to
the model as user turns; the assistant speaks as "model".

The prompt is a list of pieces, each either a template marker or text. Only markers may become
control tokens: a caller who writes `<end_of_turn>` in a message gets those characters as text,
so no message can close its own turn and speak for another role.
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
    text: str
    marker: bool = False


def _turn(speaker: str, content: str) -> list[PromptPiece]:
    return [PromptPiece(START_OF_TURN, marker=True), PromptPiece(f"{speaker}\n{content}"), PromptPiece(END_OF_TURN, marker=True), PromptPiece("\n")]


def format_gemma_chat(messages: Sequence[ModelMessage]) -> list[PromptPiece]:
    """The prompt after BOS, as pieces; it ends by opening the model's turn."""
    pending_system = "\n\n".join(m.content for m in messages if m.role is Role.SYSTEM)
    pieces: list[PromptPiece] = []
    for message in messages:
        if message.role is Role.SYSTEM:
            continue
        content = message.content
        if pending_system:
            if message.role is Role.ASSISTANT:
                pieces += _turn("user", pending_system)
            else:
                content = f"{pending_system}\n\n{content}"
            pending_system = ""
        pieces += _turn(_SPEAKER[message.role], content)
    if pending_system:
        pieces += _turn("user", pending_system)
    return pieces + [PromptPiece(START_OF_TURN, marker=True), PromptPiece("model\n")]

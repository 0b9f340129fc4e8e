"""Gemma's chat turn format, applied by hand because the shipped GGUF carries no chat template.

Gemma has no system role: the system text opens the first user turn. Tool results are shown to
the model as user turns; the assistant speaks as "model".
"""

from __future__ import annotations

from collections.abc import Sequence

from modelwire.core.types import ModelMessage, Role

START_OF_TURN = "<start_of_turn>"
END_OF_TURN = "<end_of_turn>"

_SPEAKER = {Role.USER: "user", Role.TOOL: "user", Role.ASSISTANT: "model"}


def _turn(speaker: str, content: str) -> str:
    return f"{START_OF_TURN}{speaker}\n{content}{END_OF_TURN}\n"


def format_gemma_chat(messages: Sequence[ModelMessage]) -> str:
    """The prompt text after BOS; it ends by opening the model's turn."""
    pending_system = "\n\n".join(m.content for m in messages if m.role is Role.SYSTEM)
    turns: list[str] = []
    for message in messages:
        if message.role is Role.SYSTEM:
            continue
        content = message.content
        if pending_system:
            if message.role is Role.ASSISTANT:
                turns.append(_turn("user", pending_system))
            else:
                content = f"{pending_system}\n\n{content}"
            pending_system = ""
        turns.append(_turn(_SPEAKER[message.role], content))
    if pending_system:
        turns.append(_turn("user", pending_system))
    return "".join(turns) + f"{START_OF_TURN}model\n"

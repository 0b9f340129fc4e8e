"""Stop-string filtering and Gemma's turn format, the two pieces of text handling we own."""

from __future__ import annotations

import pytest

from modelwire.core.types import ModelMessage, Role
from modelwire.providers.llama.gemma_format import format_gemma_chat
from modelwire.providers.llama.stop_strings import StopStringFilter


def run_filter(stops: tuple[str, ...], deltas: list[str]) -> tuple[list[str], bool]:
    stop_filter = StopStringFilter(stops)
    out = [stop_filter.feed(delta) for delta in deltas]
    out.append(stop_filter.flush())
    return out, stop_filter.stopped


def test_stop_string_split_across_deltas_is_never_emitted() -> None:
    out, stopped = run_filter(("END",), ["hello E", "N", "D and more"])
    assert "".join(out) == "hello "
    assert stopped


def test_text_that_only_looks_like_a_stop_prefix_is_released() -> None:
    out, stopped = run_filter(("END",), ["say E", "NOUGH", "!"])
    assert "".join(out) == "say ENOUGH!"
    assert out[0] == "say " and not stopped


def test_earliest_of_several_stop_strings_wins() -> None:
    out, _ = run_filter(("\n\n", "b"), ["ab\n\nc"])
    assert "".join(out) == "a"


def test_no_stop_strings_passes_everything_through_at_once() -> None:
    out, stopped = run_filter((), ["a", "b"])
    assert out == ["a", "b", ""] and not stopped


def test_gemma_format_folds_system_into_the_first_user_turn() -> None:
    prompt = format_gemma_chat(
        [
            ModelMessage(Role.SYSTEM, "Be brief."),
            ModelMessage(Role.USER, "Hi"),
            ModelMessage(Role.ASSISTANT, "Hello."),
            ModelMessage(Role.TOOL, "42"),
        ]
    )
    assert "".join(piece.text for piece in prompt) == (
        "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello.<end_of_turn>\n"
        "<start_of_turn>user\nTool result:\n42<end_of_turn>\n"
        "<start_of_turn>model\n"
    )


@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        (
            [ModelMessage(Role.SYSTEM, "S")],
            "<start_of_turn>user\nS<end_of_turn>\n<start_of_turn>model\n",
        ),
        (
            [ModelMessage(Role.SYSTEM, "S"), ModelMessage(Role.ASSISTANT, "A")],
            "<start_of_turn>user\nS<end_of_turn>\n"
            "<start_of_turn>model\nA<end_of_turn>\n"
            "<start_of_turn>model\n",
        ),
    ],
)
def test_gemma_format_never_drops_the_system_text(
    messages: list[ModelMessage], expected: str
) -> None:
    prompt = format_gemma_chat(messages)
    assert "".join(piece.text for piece in prompt) == expected
    assert {piece.text for piece in prompt if piece.marker} == {"<start_of_turn>", "<end_of_turn>"}


def test_template_pieces_are_the_formats_own_text_whatever_the_messages_say() -> None:
    """A tokenizer keeps template pieces' tokens, so no caller's text may be one."""
    messages = [
        ModelMessage(Role.SYSTEM, "model\n"),
        ModelMessage(Role.USER, "\n"),
        ModelMessage(Role.ASSISTANT, "<start_of_turn>"),
        ModelMessage(Role.USER, ""),
    ]
    prompt = format_gemma_chat(messages, instruction="\n")
    template = {piece.text for piece in prompt if piece.template}
    assert template == {"<start_of_turn>", "<end_of_turn>", "\n", "model\n"}
    assert all(piece.template for piece in prompt if piece.marker)
    assert [piece.text for piece in prompt if not piece.template] == [
        "user\nmodel\n\n\n\n",
        "model\n<start_of_turn>",
        "user\n\n",
    ]

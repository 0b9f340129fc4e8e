"""Offline token counting: exact for OpenAI-family names, an honest estimate otherwise, no
network."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import tiktoken

from modelwire.core.errors import TokenizerUnavailable
from modelwire.core.types import ModelMessage, Role
from modelwire.tokenize import placement, tiktoken_counter
from modelwire.tokenize.tiktoken_counter import count_tokens, get_encoding


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("token counting tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    yield


@pytest.fixture
def fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    get_encoding.cache_clear()
    yield tmp_path  # type: ignore[misc]
    get_encoding.cache_clear()


SENTENCE = "tiktoken is great!"
MIXED_TEXT = "Grüße aus Köln! 東京タワー 🚀 def f(x): return x**2\n" * 50


def independent_count(encoding: str, text: str) -> int:
    """bpe-openai's own Rust tokenizer: an implementation independent of tiktoken."""
    import bpe_openai

    return len(bpe_openai.get_encoding(encoding).encode(text))


def test_gpt4_counts_with_cl100k_exactly(fresh_cache: Path) -> None:
    counted = count_tokens("gpt-4", MIXED_TEXT)
    assert (counted.tokenizer, counted.exact) == ("tiktoken:cl100k_base", True)
    assert counted.count == independent_count("cl100k_base", MIXED_TEXT)
    assert count_tokens("gpt-3.5-turbo-0125", "hello world").count == 2


@pytest.mark.parametrize("model", ["gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-5", "o3-mini", "o1"])
def test_o200k_models_count_exactly_from_bpe_openai_data(fresh_cache: Path, model: str) -> None:
    counted = count_tokens(model, MIXED_TEXT)
    assert (counted.tokenizer, counted.exact) == ("tiktoken:o200k_base", True)
    assert counted.count == independent_count("o200k_base", MIXED_TEXT)


def test_o200k_is_tiktokens_own_definition_and_round_trips(fresh_cache: Path) -> None:
    encoding = get_encoding("o200k_base")
    assert encoding.name == "o200k_base"
    assert encoding.decode(encoding.encode(MIXED_TEXT)) == MIXED_TEXT
    assert encoding.encode("<|endoftext|>", allowed_special="all") == [199999]
    assert [path.name for path in fresh_cache.iterdir()] == [
        tiktoken_counter._cache_path("o200k_base").name
    ]  # type: ignore[union-attr]


def test_unknown_model_falls_back_to_cl100k_and_says_so(fresh_cache: Path) -> None:
    counted = count_tokens("mistral-large", SENTENCE)
    assert (counted.count, counted.tokenizer, counted.exact) == (
        independent_count("cl100k_base", SENTENCE),
        "tiktoken:cl100k_base",
        False,
    )


def test_encoding_absent_offline_is_an_estimate_not_a_download(fresh_cache: Path) -> None:
    counted = count_tokens("text-davinci-003", SENTENCE)  # p50k_base is not shipped
    assert counted.exact is False and counted.tokenizer == "tiktoken:cl100k_base"
    with pytest.raises(TokenizerUnavailable, match="TIKTOKEN_CACHE_DIR"):
        get_encoding("p50k_base")


def test_encodings_in_tiktoken_cache_dir_are_honoured(fresh_cache: Path) -> None:
    # A file under tiktoken's cache key in TIKTOKEN_CACHE_DIR makes the encoding usable offline.
    target = tiktoken_counter._cache_path("r50k_base")
    assert target is not None and target.parent == fresh_cache
    assert tiktoken_counter._cached_offline("r50k_base") is False
    target.write_bytes(b"")
    assert tiktoken_counter._cached_offline("r50k_base") is True


def test_chat_messages_count_includes_framing_and_is_an_estimate(fresh_cache: Path) -> None:
    messages = [ModelMessage(Role.SYSTEM, "You are terse."), ModelMessage(Role.USER, SENTENCE)]
    counted = count_tokens("gpt-4", messages)
    content = sum(
        count_tokens("gpt-4", m.content).count + count_tokens("gpt-4", m.role.value).count
        for m in messages
    )
    assert counted.count == content + 3 * len(messages) + 3
    assert counted.exact is False


def test_disabled_cache_makes_o200k_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")
    get_encoding.cache_clear()
    try:
        with pytest.raises(TokenizerUnavailable, match="TIKTOKEN_CACHE_DIR"):
            count_tokens("gpt-4o", SENTENCE)
    finally:
        get_encoding.cache_clear()


@pytest.mark.parametrize(
    "text",
    [
        "",
        SENTENCE,
        MIXED_TEXT,
        "<|endoftext|> is text here, never the special token",
        "a lone surrogate \ud800 as JSON can carry",
        "trailing spaces and breaks  \n\n\t  ",
    ],
)
def test_a_count_is_the_length_of_tiktokens_ordinary_encoding(text: str) -> None:
    encoding = get_encoding("o200k_base")
    assert tiktoken_counter.count_text(encoding, text) == len(encoding.encode_ordinary(text))


def test_an_encoding_is_first_used_on_the_counting_thread(
    fresh_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    used_on: list[str] = []
    count_text = tiktoken_counter.count_text

    def recording(encoding: tiktoken.Encoding, text: str) -> int:
        used_on.append(threading.current_thread().name)
        return count_text(encoding, text)

    monkeypatch.setattr(tiktoken_counter, "count_text", recording)
    count_tokens("gpt-4o", SENTENCE)
    assert used_on[0].startswith("modelwire-count") and len(used_on) == 2


def test_an_encoding_first_loaded_by_a_count_on_the_counting_thread_loads(
    fresh_cache: Path,
) -> None:
    with placement.counting_executor(ThreadPoolExecutor(1)) as executor:
        counted = executor.submit(count_tokens, "gpt-4o", SENTENCE).result(timeout=60)
    assert counted.count == independent_count("o200k_base", SENTENCE)

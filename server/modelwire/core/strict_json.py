"""JSON text from callers, parsed as JSON is defined: no NaN or Infinity, no number too large
for a double, and nesting bounded at a fixed depth.

Python's `json` accepts NaN, Infinity and 1e400 (as inf); a schema or tool argument holding one
would reach an upstream as a body it cannot parse, or a grammar that writes text no strict JSON
parser reads, so every caller-given JSON text goes through `loads` here first.

Nesting is bounded by `MAX_NESTING`, not by the stack left where the edge parses it: the same
value is parsed, copied and serialised again deeper down (inside aiohttp, in the grammar
converter), where fewer frames remain, so a bound that depends on the stack lets through what
fails later as INTERNAL. 64 levels is far beyond any real schema or tool argument (OpenAI's
strict mode takes 10 levels of objects, about 20 of JSON).
"""

from __future__ import annotations

import json
import math
from typing import Any

MAX_NESTING = 64
# JSON text as the HTTP facades write it: compact, non-ASCII characters as they are.
_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_TOO_DEEP = f"nested more than {MAX_NESTING} levels deep (objects and arrays), the limit"


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is too large for JSON's doubles")
    return value


def _depth_exceeds(value: Any, limit: int) -> bool:
    """Whether objects and arrays nest more than `limit` deep in a parsed value; iterative, so
    it needs no stack whatever the depth. Level by level, with one list append per container
    (a megabyte of `[[],[],…]` is walked in a few hundredths of a second, less than its parse)."""
    level = [value] if type(value) is dict or type(value) is list else []
    depth = 1
    while level:
        if depth > limit:
            return True
        deeper: list[Any] = []
        for node in level:
            for child in node.values() if type(node) is dict else node:
                if type(child) is list or type(child) is dict:
                    deeper.append(child)
        level = deeper
        depth += 1
    return False


def _brackets(text: str | bytes) -> int:
    if isinstance(text, bytes):
        return text.count(b"{") + text.count(b"[")
    return text.count("{") + text.count("[")


def loads(text: str | bytes) -> Any:
    """`json.loads`, refusing what is not JSON or nests past `MAX_NESTING` (ValueError)."""
    try:
        value = json.loads(text, parse_constant=_no_constant, parse_float=_finite)
    except RecursionError:
        raise ValueError(_TOO_DEEP) from None
    # Fewer brackets than the bound cannot nest past it: most texts skip the walk.
    if _brackets(text) > MAX_NESTING and _depth_exceeds(value, MAX_NESTING):
        raise ValueError(_TOO_DEEP)
    return value


def dumps(value: object) -> str:
    """`value` as compact JSON text (one encoder, built once: json.dumps with arguments builds
    one per call)."""
    return _COMPACT.encode(value)

"""JSON text from callers, parsed as JSON is defined: no NaN or Infinity, no number too large
for a double, and nesting bounded by a ValueError rather than a RecursionError.

Python's `json` accepts NaN, Infinity and 1e400 (as inf); a schema or tool argument holding one
would reach an upstream as a body it cannot parse, or a grammar that writes text no strict JSON
parser reads, so every caller-given JSON text goes through `loads` here first.
"""

from __future__ import annotations

import json
import math
from typing import Any


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is too large for JSON's doubles")
    return value


def loads(text: str | bytes) -> Any:
    """`json.loads`, refusing what is not JSON or nests past the interpreter's recursion limit (ValueError)."""
    try:
        return json.loads(text, parse_constant=_no_constant, parse_float=_finite)
    except RecursionError:
        raise ValueError("nested too deeply") from None

"""GBNF grammars for constrained output on the local model: a JSON object, a JSON Schema, a tool
call.

JSON Schema becomes GBNF through llama-cpp-python's port of llama.cpp's converter
(`llama_cpp.llama_grammar.SchemaConverter`), with four of its defects fixed here because each would
let the model write text that does not parse or does not validate:
- its JSON string allows raw control characters (a newline inside a string: not JSON) and escaped
  UTF-16 surrogates (an escaped pair counts as two characters against minLength/maxLength, but is
  one character once parsed);
- its literals (property names, enum and const values) leave backslashes unescaped, and a value
  containing a newline becomes a raw newline inside a JSON string;
- it ignores integer bounds (minimum, maximum, exclusive…): they are added here with llama.cpp's
  own digit-range construction (`_integer_range`, from its newer converter);
- it ignores or mistranslates a long list of other keywords.
A value the schema leaves free (json_object, `{"type": "object"}`) gets at most MAX_FREE_ITEMS
array items and object members, so a small model cannot repeat items until max_new_tokens cuts it.

Everything the converter would ignore or mistranslate is refused instead (never silently dropped):
`check_schema` walks the schema first and names the first keyword it cannot enforce, by its JSON
pointer. What is enforced is listed in docs/configuration.md (the llamacpp provider's section).
An untyped subschema (`{}`) generates a JSON object, which is one of the values it allows.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

from llama_cpp.llama_grammar import (
    INVALID_RULE_CHARS_RE,
    PRIMITIVE_RULES,
    RESERVED_NAMES,
    STRING_FORMAT_RULES,
    BuiltinRule,
    SchemaConverter,
)

from modelwire.core.types import Tool


class SchemaNotSupported(ValueError):
    """A schema uses something the grammar cannot enforce; `pointer` is where (JSON pointer)."""

    def __init__(self, pointer: str, reason: str) -> None:
        self.pointer = pointer or "#"
        self.reason = reason
        super().__init__(f"{self.pointer}: {reason}")


# Schema keywords that constrain nothing.
_ANNOTATIONS = frozenset(
    {
        "title",
        "description",
        "default",
        "examples",
        "$comment",
        "$schema",
        "$id",
        "deprecated",
        "readOnly",
        "writeOnly",
        "$defs",
        "definitions",
    }
)
_TYPES = ("string", "number", "integer", "boolean", "null", "object", "array")
_KEYWORDS_BY_TYPE = {
    "object": frozenset({"properties", "required", "additionalProperties"}),
    "array": frozenset({"items", "minItems", "maxItems", "uniqueItems"}),
    "string": frozenset({"minLength", "maxLength", "pattern", "format"}),
    "integer": frozenset({"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"}),
    "number": frozenset(),
    "boolean": frozenset(),
    "null": frozenset(),
}
# The keywords under which a schema holds subschemas: True when a name or index comes between.
_SCHEMA_PLACES = {
    "$defs": True,
    "definitions": True,
    "properties": True,
    "anyOf": True,
    "items": False,
    "additionalProperties": False,
}
_STRING_FORMATS = ("date", "time", "date-time", "uuid")
# Lengths and counts become nested optional rules, one level each: bounded so the grammar stays
# small.
MAX_REPETITION = 500
# The digit-range construction covers 15 digits, as the converter's integers do.
MAX_INTEGER_BOUND = 10**15
# A JSON string's character: no raw control character, no escaped surrogate.
_CHAR = BuiltinRule(
    r'[^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" ([0-9a-cA-CefEF] [0-9a-fA-F] [0-9a-fA-F] '
    r"[0-9a-fA-F] | [dD] [0-7] [0-9a-fA-F] [0-9a-fA-F]))",
    [],
)
# A value the schema leaves free (json_object, or an object or value a schema does not constrain)
# has at most this many array items and object members: a small model otherwise runs away
# repeating items until max_new_tokens cuts the JSON (seen with gemma-3-270m, greedy).
MAX_FREE_ITEMS = 16
_FREE_ARRAY = BuiltinRule(
    f'"[" space ( value ("," space value){{0,{MAX_FREE_ITEMS - 1}}} )? "]" space', ["value"]
)
_FREE_OBJECT = BuiltinRule(
    '"{" space ( string ":" space value ("," space string ":" space '
    f'value){{0,{MAX_FREE_ITEMS - 1}}} )? "}}" space',
    ["string", "value"],
)
_PATCHED_PRIMITIVES = {"char": _CHAR, "array": _FREE_ARRAY, "object": _FREE_OBJECT}
# What a pattern may contain once its anchors are off: characters that mean themselves inside a
# JSON string (no quote, no backslash), groups, alternatives, quantifiers and positive classes.
_PATTERN_CHARS = re.compile(r"[A-Za-z0-9 _\-:@,;!#%&'=<>~/()|*+?{}]")
_PATTERN_ESCAPES = {r"\d": "[0-9]", r"\.": "[.]", r"\-": "[-]", r"\/": "[/]"}


def _escape_literal(text: str) -> str:
    """A GBNF string literal matching exactly `text`."""
    out = []
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif char == "\n":
            out.append("\\n")
        elif char == "\r":
            out.append("\\r")
        elif char == "\t":
            out.append("\\t")
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\x{ord(char):02X}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _integer_range(
    low: int | None,
    high: int | None,
    out: list[str],
    decimals_left: int = 16,
    top_level: bool = True,
) -> None:
    """GBNF for the integers in [low, high] (either side open), without leading zeros. Ported from
    `_generate_min_max_int` in llama.cpp's examples/json_schema_to_grammar.py (MIT)."""

    def digit_range(from_char: str, to_char: str) -> None:
        out.append(f"[{from_char}]" if from_char == to_char else f"[{from_char}-{to_char}]")

    def more_digits(min_digits: int, max_digits: int) -> None:
        out.append("[0-9]")
        if min_digits == max_digits == 1:
            return
        out.append("{" + str(min_digits))
        if max_digits != min_digits:
            out.append(",")
            if max_digits != math.inf:
                out.append(str(max_digits))
        out.append("}")

    def uniform_range(from_str: str, to_str: str) -> None:
        i = 0
        while i < len(from_str) and from_str[i] == to_str[i]:
            i += 1
        if i > 0:
            out.append(f'"{from_str[:i]}"')
        if i < len(from_str):
            if i > 0:
                out.append(" ")
            sub_len = len(from_str) - i - 1
            if sub_len > 0:
                from_sub, to_sub = from_str[i + 1 :], to_str[i + 1 :]
                sub_zeros, sub_nines = "0" * sub_len, "9" * sub_len
                to_reached = False
                out.append("(")
                if from_sub == sub_zeros:
                    digit_range(from_str[i], chr(ord(to_str[i]) - 1))
                    out.append(" ")
                    more_digits(sub_len, sub_len)
                else:
                    out.append(f"[{from_str[i]}] (")
                    uniform_range(from_sub, sub_nines)
                    out.append(")")
                    if ord(from_str[i]) < ord(to_str[i]) - 1:
                        out.append(" | ")
                        if to_sub == sub_nines:
                            digit_range(chr(ord(from_str[i]) + 1), to_str[i])
                            to_reached = True
                        else:
                            digit_range(chr(ord(from_str[i]) + 1), chr(ord(to_str[i]) - 1))
                        out.append(" ")
                        more_digits(sub_len, sub_len)
                if not to_reached:
                    out.append(" | ")
                    digit_range(to_str[i], to_str[i])
                    out.append(" ")
                    uniform_range(sub_zeros, to_sub)
                out.append(")")
            else:
                out.append(f"[{from_str[i]}-{to_str[i]}]")

    if low is not None and high is not None:
        if low < 0 and high < 0:
            out.append('"-" (')
            _integer_range(-high, -low, out, decimals_left, top_level=True)
            out.append(")")
            return
        if low < 0:
            out.append('"-" (')
            _integer_range(0, -low, out, decimals_left, top_level=True)
            out.append(") | ")
            low = 0
        low_s, high_s = str(low), str(high)
        for digits in range(len(low_s), len(high_s)):
            uniform_range(low_s, "9" * digits)
            low_s = "1" + "0" * digits
            out.append(" | ")
        uniform_range(low_s, high_s)
        return

    less_decimals = max(decimals_left - 1, 1)
    if low is not None:
        if low < 0:
            out.append('"-" (')
            _integer_range(None, -low, out, decimals_left, top_level=False)
            out.append(") | [0] | [1-9] ")
            more_digits(0, decimals_left - 1)
        elif low == 0:
            if top_level:
                out.append("[0] | [1-9] ")
                more_digits(0, less_decimals)
            else:
                more_digits(1, decimals_left)
        elif low <= 9:
            c = str(low)
            range_start = "1" if top_level else "0"
            if c > range_start:
                digit_range(range_start, chr(ord(c) - 1))
                out.append(" ")
                more_digits(1, less_decimals)
                out.append(" | ")
            digit_range(c, "9")
            out.append(" ")
            more_digits(0, less_decimals)
        else:
            low_s = str(low)
            length = len(low_s)
            c = low_s[0]
            if c > "1":
                digit_range("1" if top_level else "0", chr(ord(c) - 1))
                out.append(" ")
                more_digits(length, less_decimals)
                out.append(" | ")
            digit_range(c, c)
            out.append(" (")
            _integer_range(int(low_s[1:]), None, out, less_decimals, top_level=False)
            out.append(")")
            if c < "9":
                out.append(" | ")
                digit_range(chr(ord(c) + 1), "9")
                out.append(" ")
                more_digits(length - 1, less_decimals)
        return

    assert high is not None
    if high >= 0:
        if top_level:
            out.append('"-" [1-9] ')
            more_digits(0, less_decimals)
            out.append(" | ")
        _integer_range(0, high, out, decimals_left, top_level=True)
    else:
        out.append('"-" (')
        _integer_range(-high, None, out, decimals_left, top_level=False)
        out.append(")")


def integer_range_rule(low: int | None, high: int | None) -> str:
    """The GBNF body (no `space`) for the integers in [low, high]; None is unbounded."""
    if low is None and high is None:
        return '"-"? ([0] | [1-9] [0-9]{0,15})'
    out: list[str] = []
    _integer_range(low, high, out)
    return "".join(out)


# Untyped upstream code: subclassed through Any, so strict typing stops at its boundary.
_SchemaConverter: Any = SchemaConverter


class _Converter(_SchemaConverter):  # type: ignore[misc]
    """The converter with its JSON strings, literals and integer bounds fixed (module docstring)."""

    def __init__(self) -> None:
        super().__init__(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
        self._ref_rules: dict[str, str] = {}

    def _resolve_ref(self, ref: str) -> str:
        """A rule per reference, named by its whole path: the converter names it by the path's last
        segment, so `#/$defs/a/properties/x` and `#/$defs/b/properties/x` (or a property named like
        a definition) shared one rule."""
        if ref in self._ref_rules:
            return self._ref_rules[ref]
        name = "ref-" + INVALID_RULE_CHARS_RE.sub("-", ref.split("#")[-1]).strip("-")
        if ref in self._refs_being_resolved:
            return name  # a recursive reference: the rule is being written under this name
        self._refs_being_resolved.add(ref)
        key: str = self.visit(self._refs[ref], name)
        self._refs_being_resolved.remove(ref)
        if key != name:
            key = self._add_rule(name, key)
        self._ref_rules[ref] = key
        return key

    def _format_literal(self, literal: str) -> str:
        return _escape_literal(literal)

    def _add_primitive(self, name: str, rule: BuiltinRule) -> str:
        rule = _PATCHED_PRIMITIVES.get(name, rule)
        key: str = self._add_rule(name, rule.content)
        for dep in rule.deps:
            dep_rule = (
                _PATCHED_PRIMITIVES.get(dep)
                or PRIMITIVE_RULES.get(dep)
                or STRING_FORMAT_RULES.get(dep)
            )
            assert dep_rule is not None, dep
            if dep not in self._rules:
                self._add_primitive(dep, dep_rule)
        return key

    def visit(self, schema: dict[str, Any], name: str) -> str:
        if schema.get("type") == "integer" and _BOUNDS & schema.keys():
            rule_name = name + "-" if name in RESERVED_NAMES else name or "root"
            low, high = _integer_bounds(schema)
            key: str = self._add_rule(rule_name, f"({integer_range_rule(low, high)}) space")
            return key
        visited: str = super().visit(schema, name)
        return visited


_BOUNDS = frozenset({"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"})


def _integer_bounds(schema: dict[str, Any]) -> tuple[int | None, int | None]:
    lows = [math.ceil(schema["minimum"])] if "minimum" in schema else []
    highs = [math.floor(schema["maximum"])] if "maximum" in schema else []
    if "exclusiveMinimum" in schema:
        lows.append(math.floor(schema["exclusiveMinimum"]) + 1)
    if "exclusiveMaximum" in schema:
        highs.append(math.ceil(schema["exclusiveMaximum"]) - 1)
    return (max(lows) if lows else None), (min(highs) if highs else None)


# --- the check: everything the converter would not enforce is refused -----------------------------


def _pointer(path: Sequence[str | int]) -> str:
    return "#" + "".join("/" + str(part).replace("~", "~0").replace("/", "~1") for part in path)


def _is_json_type(value: Any, kind: str) -> bool:
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return {
        "string": isinstance(value, str),
        "boolean": isinstance(value, bool),
        "null": value is None,
        "object": isinstance(value, dict),
        "array": isinstance(value, list),
    }[kind]


def _inferred_type(node: dict[str, Any]) -> str | None:
    """An untyped schema with a type's keywords generates that type (a subset of what it allows)."""
    for kind, keywords in _KEYWORDS_BY_TYPE.items():
        if keywords & node.keys() and kind != "integer":
            return kind
    return None


def _non_negative_count(node: dict[str, Any], key: str, path: list[str | int]) -> int | None:
    if key not in node:
        return None
    value = node[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise SchemaNotSupported(_pointer([*path, key]), "must be a non-negative integer")
    if value > MAX_REPETITION:
        raise SchemaNotSupported(
            _pointer([*path, key]), f"at most {MAX_REPETITION} can be enforced, got {value}"
        )
    return value


def rewrite_pattern(pattern: str, pointer: str) -> str:
    """The pattern in the subset the converter translates faithfully inside a JSON string (grouped,
    so a top-level | stays between the quotes), or a refusal."""
    if len(pattern) < 2 or not (pattern.startswith("^") and pattern.endswith("$")):
        raise SchemaNotSupported(
            pointer, "only a pattern anchored at both ends (^…$) can be enforced"
        )
    out: list[str] = []
    body, i, in_class = pattern[1:-1], 0, False
    while i < len(body):
        char = body[i]
        if char == "\\" and not in_class and body[i : i + 2] in _PATTERN_ESCAPES:
            out.append(_PATTERN_ESCAPES[body[i : i + 2]])
            i += 2
            continue
        if char == "[":
            if in_class or body[i + 1 : i + 2] in ("^", "]"):
                break
            in_class = True
        elif char == "]":
            in_class = False
        elif char == "(" and body[i + 1 : i + 2] == "?":
            break
        elif not _PATTERN_CHARS.fullmatch(char):
            break
        out.append(char)
        i += 1
    if i < len(body) or in_class:
        raise SchemaNotSupported(
            pointer,
            "a pattern may use letters, digits, spaces, _-:@,;!#%&'=<>~/, groups, |, quantifiers, "
            r"positive [classes], \d and \. (no '.', negated classes, other escapes, quotes or "
            "lookarounds)",
        )
    rewritten = "".join(out)
    try:
        re.compile(rewritten)
    except (
        re.error,
        OverflowError,
    ) as error:  # OverflowError: a repeat count beyond the re module's
        raise SchemaNotSupported(pointer, f"not a valid regular expression: {error}") from None
    return "^(" + rewritten + ")$"


class _Checker:
    """Walks a schema, refusing what cannot be enforced; returns a copy the converter handles
    exactly."""

    def __init__(self, root: Any, ref_prefix: str) -> None:
        self._root = root
        self._ref_prefix = ref_prefix

    def schema(self, node: Any, path: list[str | int]) -> dict[str, Any]:
        if not isinstance(node, dict):
            raise SchemaNotSupported(_pointer(path), "a subschema must be a JSON object here")
        keys = node.keys() - _ANNOTATIONS
        out: dict[str, Any] = {}
        for defs in ("$defs", "definitions"):
            if defs in node:
                if not isinstance(node[defs], dict):
                    raise SchemaNotSupported(
                        _pointer([*path, defs]), "must be an object of schemas"
                    )
                out[defs] = {
                    name: self.schema(sub, [*path, defs, name]) for name, sub in node[defs].items()
                }
        if "$ref" in node:
            return out | self._ref(node, keys, path)
        if "anyOf" in node:
            if keys - {"anyOf"}:
                raise SchemaNotSupported(
                    _pointer(path),
                    f"anyOf cannot be combined with {', '.join(sorted(keys - {'anyOf'}))} here",
                )
            branches = node["anyOf"]
            if not isinstance(branches, list) or not branches:
                raise SchemaNotSupported(
                    _pointer([*path, "anyOf"]), "must be a non-empty array of schemas"
                )
            return out | {
                "anyOf": [
                    self.schema(branch, [*path, "anyOf", i]) for i, branch in enumerate(branches)
                ]
            }
        if "oneOf" in node:
            raise SchemaNotSupported(
                _pointer([*path, "oneOf"]),
                "oneOf cannot be enforced (a value may match several alternatives); use anyOf",
            )
        kind = node.get("type")
        if isinstance(kind, list):
            if (
                keys - {"type"}
                or not kind
                or any(k not in _TYPES for k in kind)
                or len(set(kind)) != len(kind)
            ):
                raise SchemaNotSupported(
                    _pointer([*path, "type"]),
                    "a list of types is enforced only alone and of distinct known types; use anyOf",
                )
            return out | {"type": list(kind)}
        if kind is not None and kind not in _TYPES:
            raise SchemaNotSupported(_pointer([*path, "type"]), f"unknown type {kind!r}")
        if "enum" in node or "const" in node:
            return out | self._literals(node, keys, kind, path)
        if kind is None:
            kind = _inferred_type(node)
            if kind is None:
                extra = keys - {"type"}
                if extra:
                    raise SchemaNotSupported(
                        _pointer(path), f"give a type for {', '.join(sorted(extra))}"
                    )
                return out | {
                    "type": "object"
                }  # an untyped schema: any value, generated as an object
        allowed = _KEYWORDS_BY_TYPE[kind] | {"type"}
        unknown = sorted(keys - allowed)
        if unknown:
            raise SchemaNotSupported(
                _pointer([*path, unknown[0]]),
                f"keyword {unknown[0]!r} cannot be enforced for type {kind!r}",
            )
        typed: dict[str, Any] = getattr(self, f"_{kind}")(node, path)
        return out | typed

    def _ref(self, node: dict[str, Any], keys: set[str], path: list[str | int]) -> dict[str, Any]:
        ref = node["$ref"]
        if keys - {"$ref"}:
            raise SchemaNotSupported(_pointer(path), "$ref cannot be combined with other keywords")
        if not isinstance(ref, str) or not ref.startswith("#/"):
            raise SchemaNotSupported(
                _pointer([*path, "$ref"]), "only a local reference (#/…) can be enforced"
            )
        target: Any = self._root
        parts = [part.replace("~1", "/").replace("~0", "~") for part in ref[2:].split("/")]
        # Only a schema's place: $defs/<name>, properties/<name>, anyOf/<i>, items… from a schema.
        expect_schema = True
        for part in parts:
            if expect_schema and part not in _SCHEMA_PLACES:
                raise SchemaNotSupported(
                    _pointer([*path, "$ref"]), f"{ref} does not point at a subschema"
                )
            if isinstance(target, dict) and part in target:
                target = target[part]
            elif isinstance(target, list) and part.isdigit() and int(part) < len(target):
                target = target[int(part)]
            else:
                raise SchemaNotSupported(
                    _pointer([*path, "$ref"]), f"{ref} does not point into the schema"
                )
            expect_schema = not (expect_schema and _SCHEMA_PLACES[part])
        if not expect_schema or not isinstance(target, dict):
            raise SchemaNotSupported(
                _pointer([*path, "$ref"]), f"{ref} does not point at a subschema"
            )
        return {"$ref": self._ref_prefix + ref[1:]}

    def _literals(
        self, node: dict[str, Any], keys: set[str], kind: Any, path: list[str | int]
    ) -> dict[str, Any]:
        extra = keys - {"enum", "const", "type"}
        if extra or ("enum" in node and "const" in node):
            raise SchemaNotSupported(
                _pointer(path),
                "enum/const cannot be combined with "
                f"{', '.join(sorted(extra or {'enum and const'}))}",
            )
        values = [node["const"]] if "const" in node else node["enum"]
        if not isinstance(values, list) or not values:
            raise SchemaNotSupported(_pointer([*path, "enum"]), "must be a non-empty array")
        if kind is not None and not all(_is_json_type(value, kind) for value in values):
            raise SchemaNotSupported(
                _pointer(path), f"every enum/const value must be of type {kind!r}"
            )
        return {"const": node["const"]} if "const" in node else {"enum": list(values)}

    def _object(self, node: dict[str, Any], path: list[str | int]) -> dict[str, Any]:
        properties = node.get("properties", {})
        if not isinstance(properties, dict):
            raise SchemaNotSupported(
                _pointer([*path, "properties"]), "must be an object of schemas"
            )
        required = node.get("required", [])
        if not isinstance(required, list) or not all(isinstance(name, str) for name in required):
            raise SchemaNotSupported(
                _pointer([*path, "required"]), "must be an array of property names"
            )
        missing = [name for name in required if name not in properties]
        if missing:
            raise SchemaNotSupported(
                _pointer([*path, "required"]),
                f"names {missing[0]!r}, which properties does not define",
            )
        out: dict[str, Any] = {"type": "object"}
        additional = node.get("additionalProperties", False if properties else True)
        if additional is not False:
            if properties:
                raise SchemaNotSupported(
                    _pointer([*path, "additionalProperties"]),
                    "extra properties next to declared ones cannot be enforced (an extra key "
                    "could repeat a declared one); set it to false",
                )
            if additional is not True:
                out["additionalProperties"] = self.schema(
                    additional, [*path, "additionalProperties"]
                )
                return out
            return out  # any object
        out["properties"] = {
            name: self.schema(sub, [*path, "properties", name]) for name, sub in properties.items()
        }
        out["required"] = list(required)
        out["additionalProperties"] = False
        return out

    def _array(self, node: dict[str, Any], path: list[str | int]) -> dict[str, Any]:
        if node.get("uniqueItems", False) is not False:
            raise SchemaNotSupported(
                _pointer([*path, "uniqueItems"]), "unique items cannot be enforced"
            )
        low = _non_negative_count(node, "minItems", path)
        high = _non_negative_count(node, "maxItems", path)
        if low is not None and high is not None and low > high:
            raise SchemaNotSupported(
                _pointer([*path, "minItems"]), "minItems is more than maxItems"
            )
        items = self.schema(node.get("items", {}), [*path, "items"])
        out: dict[str, Any] = {"type": "array", "items": items}
        if low:
            out["minItems"] = low
        if high is not None:
            out["maxItems"] = high
        return out

    def _string(self, node: dict[str, Any], path: list[str | int]) -> dict[str, Any]:
        shaped = [key for key in ("pattern", "format") if key in node]
        lengths = [key for key in ("minLength", "maxLength") if key in node]
        if len(shaped) > 1 or (shaped and lengths):
            raise SchemaNotSupported(
                _pointer(path), f"{' and '.join([*shaped, *lengths])} cannot be enforced together"
            )
        if "format" in node:
            if node["format"] not in _STRING_FORMATS:
                raise SchemaNotSupported(
                    _pointer([*path, "format"]),
                    f"format {node['format']!r} cannot be enforced (only "
                    f"{', '.join(_STRING_FORMATS)})",
                )
            return {"type": "string", "format": node["format"]}
        if "pattern" in node:
            if not isinstance(node["pattern"], str):
                raise SchemaNotSupported(_pointer([*path, "pattern"]), "must be a string")
            return {
                "type": "string",
                "pattern": rewrite_pattern(node["pattern"], _pointer([*path, "pattern"])),
            }
        low = _non_negative_count(node, "minLength", path)
        high = _non_negative_count(node, "maxLength", path)
        if low is not None and high is not None and low > high:
            raise SchemaNotSupported(
                _pointer([*path, "minLength"]), "minLength is more than maxLength"
            )
        out: dict[str, Any] = {"type": "string"}
        if low or high is not None:
            out["minLength"] = low or 0
            if high is not None:
                out["maxLength"] = high
        return out

    def _integer(self, node: dict[str, Any], path: list[str | int]) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "integer"}
        for key in sorted(_BOUNDS & node.keys()):
            value = node[key]
            if (
                not isinstance(value, (int, float))
                or isinstance(value, bool)
                or not math.isfinite(value)
            ):
                raise SchemaNotSupported(_pointer([*path, key]), "must be a number")
            if abs(value) >= MAX_INTEGER_BOUND:
                raise SchemaNotSupported(
                    _pointer([*path, key]), f"bounds up to {MAX_INTEGER_BOUND:.0e} can be enforced"
                )
            out[key] = value
        low, high = _integer_bounds(out)
        if low is not None and high is not None and low > high:
            raise SchemaNotSupported(_pointer(path), "no integer is within the bounds")
        return out

    def _number(self, node: dict[str, Any], path: list[str | int]) -> dict[str, Any]:
        return {"type": "number"}

    def _boolean(self, node: dict[str, Any], path: list[str | int]) -> dict[str, Any]:
        return {"type": "boolean"}

    def _null(self, node: dict[str, Any], path: list[str | int]) -> dict[str, Any]:
        return {"type": "null"}


def check_schema(schema: Any, ref_prefix: str = "#") -> dict[str, Any]:
    """The schema as the converter must see it, or SchemaNotSupported naming what cannot be
    enforced. `ref_prefix` re-roots local references when the schema is embedded in a larger one."""
    try:
        return _Checker(schema, ref_prefix).schema(schema, [])
    except RecursionError:
        raise SchemaNotSupported("#", "nested too deeply") from None


def _convert(schema: dict[str, Any]) -> str:
    converter = _Converter()
    try:
        resolved = converter.resolve_refs(schema, "")
        converter.visit(resolved, "")
    except RecursionError:
        raise SchemaNotSupported("#", "nested too deeply") from None
    except (
        AssertionError,
        KeyError,
        ValueError,
        TypeError,
    ) as error:  # the converter's own refusals
        raise SchemaNotSupported("#", f"cannot be turned into a grammar: {error}") from None
    grammar: str = converter.format_grammar()
    return grammar


@functools.lru_cache(maxsize=256)
def json_schema_grammar(schema_json: str) -> str:
    """GBNF whose every sentence is JSON valid against the schema (SchemaNotSupported otherwise).
    Cached: the same schema repeated across calls is converted once."""
    return _convert(check_schema(json.loads(schema_json)))


@functools.lru_cache(maxsize=1)
def json_object_grammar() -> str:
    return _convert({"type": "object"})


class ToolSchemaNotSupported(ValueError):
    """A tool's parameters schema cannot be enforced; `index` is the tool's place in the request."""

    def __init__(self, index: int, error: SchemaNotSupported) -> None:
        self.index = index
        self.error = error
        super().__init__(f"tools[{index}]: {error}")


def tool_choice_grammar(tools: Iterable[tuple[int, Tool]]) -> str:
    """One call of any of `tools` (index in the request, tool) as {"name": …, "arguments": …}."""
    branches: dict[str, Any] = {}
    for number, (index, tool) in enumerate(tools):
        try:
            arguments = check_schema(
                json.loads(tool.schema_json),
                ref_prefix=f"#/$defs/call{number}/properties/arguments",
            )
        except SchemaNotSupported as error:
            raise ToolSchemaNotSupported(index, error) from None
        branches[f"call{number}"] = {
            "type": "object",
            "properties": {"name": {"const": tool.name}, "arguments": arguments},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
    schema = {"anyOf": [{"$ref": f"#/$defs/{name}"} for name in branches], "$defs": branches}
    return _cached_tool_grammar(json.dumps(schema))


@functools.lru_cache(maxsize=64)
def _cached_tool_grammar(schema_json: str) -> str:
    return _convert(json.loads(schema_json))


def tool_arguments_grammar(index: int, tool: Tool) -> str:
    try:
        return json_schema_grammar(tool.schema_json)
    except SchemaNotSupported as error:
        raise ToolSchemaNotSupported(index, error) from None

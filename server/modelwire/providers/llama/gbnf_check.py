"""A GBNF grammar read in Python by llama.cpp's own parsing rules, before llama.cpp sees it.

llama.cpp's parser (`llama_grammar_parser::parse`, src/llama-grammar.cpp) reports a syntax error
with a raw `fprintf(stderr, …)` of the error and the whole grammar, not through the log callback
that llama/engine.py routes into the project's logger. The worker's stderr is its log stream, so a
caller's grammar would land there verbatim, as lines that are not JSON. Redirecting fd 2 around the
parse cannot fix that safely: the descriptor is the whole process's, and every other thread's log
records (the event loop's, gRPC core's) written during the parse would be captured with it. So the
grammar is parsed here first, with the same rules, and llama.cpp gets only a grammar this parser
accepts; a syntax error is described by line and column, never by quoting the grammar.

This is a port of the parser's acceptance, not of the rules it builds: a rule is kept only as the
set of rules it references, which is all the closing "every used rule is defined" check reads.
It refuses two things llama.cpp accepts: a repetition whose maximum is below its minimum
(`"a"{5,2}`), which llama.cpp expands into 2^64 rules (memory until the process dies), and
groups nested more than MAX_GROUP_NESTING deep, which this recursive parser (like llama.cpp's)
could not follow within the interpreter's stack (a RecursionError, INTERNAL, at about 300). What
llama.cpp checks after parsing (a `root` rule, left recursion) it reports through its log callback.
"""

from __future__ import annotations

import re
from collections.abc import Callable

# llama.cpp's MAX_REPETITION_THRESHOLD.
MAX_REPETITION = 2000
# Parenthesised groups inside each other: far beyond a written grammar (the grammars modelwire
# writes from JSON Schemas nest two), well within the stack each level takes here.
MAX_GROUP_NESTING = 64
_UINT32_MAX = 2**32 - 1
_UINT64_MAX = 2**64 - 1
_SPACE = re.compile(r"(?:[ \t]|#[^\r\n]*)*")
_SPACE_OR_NEWLINE = re.compile(r"(?:[ \t\r\n]|#[^\r\n]*)*")
_NAME = re.compile(r"[a-zA-Z0-9-]+")
_DIGITS = re.compile(r"[0-9]+")
_PLAIN_LITERAL = re.compile(r'[^"\\]+')
_HEX = re.compile(r"[0-9a-fA-F]*")
_SIMPLE_ESCAPES = frozenset('trn\\"[]-')
_HEX_ESCAPES = {"x": 2, "u": 4, "U": 8}


class GbnfSyntaxError(ValueError):
    """The grammar does not parse; the message names a line and column, not the grammar's text."""


def check_gbnf(grammar: str, is_one_token: Callable[[str], bool]) -> None:
    """Raises GbnfSyntaxError where llama.cpp's parser would throw (and print the grammar).
    `is_one_token` says whether `<…>` text is a single token of the model's vocabulary."""
    _Parser(grammar, is_one_token).parse()


class _Parser:
    def __init__(self, src: str, is_one_token: Callable[[str], bool]) -> None:
        self.src = src
        self.is_one_token = is_one_token
        self.symbol_ids: dict[str, int] = {}
        # Rule id -> the rule ids it references; None where llama.cpp's vector has an empty rule.
        self.rules: list[set[int] | None] = []
        self.first_use: dict[int, int] = {}
        self.groups_open = 0

    def at(self, pos: int) -> str:
        """The character at `pos`, or "" past the end (C's terminating NUL)."""
        return self.src[pos] if pos < len(self.src) else ""

    def fail(self, pos: int, what: str) -> GbnfSyntaxError:
        line = self.src.count("\n", 0, pos) + 1
        column = pos - self.src.rfind("\n", 0, pos)
        return GbnfSyntaxError(f"line {line}, column {column}: {what}")

    def space(self, pos: int, newline_ok: bool) -> int:
        match = (_SPACE_OR_NEWLINE if newline_ok else _SPACE).match(self.src, pos)
        assert match is not None  # both patterns match the empty string
        return match.end()

    def name(self, pos: int) -> int:
        match = _NAME.match(self.src, pos)
        if match is None:
            raise self.fail(pos, "expecting a rule name")
        return match.end()

    def integer(self, pos: int, limit: int) -> tuple[int, int]:
        match = _DIGITS.match(self.src, pos)
        if match is None:
            raise self.fail(pos, "expecting an integer")
        value = int(match.group())
        if value > limit:
            raise self.fail(pos, f"the integer is larger than {limit}")
        return value, match.end()

    def symbol(self, name: str) -> int:
        return self.symbol_ids.setdefault(name, len(self.symbol_ids))

    def generated_symbol(self, base: str) -> int:
        next_id = len(self.symbol_ids)
        self.symbol_ids[f"{base}_{next_id}"] = next_id
        return next_id

    def add_rule(self, rule_id: int, refs: set[int]) -> None:
        if len(self.rules) <= rule_id:
            self.rules.extend([None] * (rule_id + 1 - len(self.rules)))
        self.rules[rule_id] = refs

    def parse(self) -> None:
        if "\0" in self.src:
            raise self.fail(self.src.index("\0"), "a NUL character (llama.cpp stops reading there)")
        pos = self.space(0, True)
        while pos < len(self.src):
            pos = self.rule(pos)
        self.check_defined()

    def rule(self, pos: int) -> int:
        name_end = self.name(pos)
        rule_name = self.src[pos:name_end]
        rule_id = self.symbol(rule_name)
        pos = self.space(name_end, False)
        if self.src[pos : pos + 3] != "::=":
            raise self.fail(pos, "expecting ::=")
        pos = self.alternates(self.space(pos + 3, True), rule_name, rule_id, nested=False)
        if self.at(pos) == "\r":
            pos += 2 if self.at(pos + 1) == "\n" else 1
        elif self.at(pos) == "\n":
            pos += 1
        elif pos < len(self.src):
            raise self.fail(pos, "expecting a newline or the end of the grammar")
        return self.space(pos, True)

    def alternates(self, pos: int, rule_name: str, rule_id: int, nested: bool) -> int:
        refs: set[int] = set()
        pos = _Sequence(self, rule_name, refs, nested).parse(pos)
        while self.at(pos) == "|":
            pos = _Sequence(self, rule_name, refs, nested).parse(self.space(pos + 1, True))
        self.add_rule(rule_id, refs)
        return pos

    def char(self, pos: int) -> int:
        """The position after one (possibly escaped) character."""
        if self.at(pos) != "\\":
            if pos >= len(self.src):
                raise self.fail(pos, "unexpected end of the grammar")
            return pos + 1
        escape = self.at(pos + 1)
        if escape in _SIMPLE_ESCAPES:
            return pos + 2
        if escape in _HEX_ESCAPES:
            size = _HEX_ESCAPES[escape]
            match = _HEX.match(self.src, pos + 2, pos + 2 + size)
            assert match is not None
            if match.end() - match.start() != size:
                raise self.fail(pos, f"expecting {size} hexadecimal digits after \\{escape}")
            return match.end()
        raise self.fail(pos, "an unknown escape")

    def token(self, pos: int) -> int:
        """The position after `<[id]>` or `<text>` (text that is one token of the vocabulary)."""
        if self.at(pos) != "<":
            raise self.fail(pos, "expecting <")
        if self.at(pos + 1) == "[":
            _, pos = self.integer(pos + 2, _UINT32_MAX)
            if self.at(pos) != "]":
                raise self.fail(pos, "expecting ]")
            if self.at(pos + 1) != ">":
                raise self.fail(pos + 1, "expecting >")
            return pos + 2
        end = self.src.find(">", pos + 1)
        if end < 0:
            raise self.fail(pos, "expecting > to close the token")
        if not self.is_one_token(self.src[pos : end + 1]):
            raise self.fail(pos, "this token text is not one token of the model's vocabulary")
        return end + 1

    def check_defined(self) -> None:
        """llama.cpp's closing check: no empty rule, no reference to a rule never defined."""
        missing = {rule_id for rule_id, refs in enumerate(self.rules) if refs is None}
        for refs in self.rules:
            for ref in refs or ():
                if ref >= len(self.rules) or self.rules[ref] is None:
                    missing.add(ref)
        if not missing:
            return
        used = [self.first_use[rule_id] for rule_id in missing if rule_id in self.first_use]
        if used:
            raise self.fail(min(used), "this rule is used but never defined")
        raise GbnfSyntaxError("a rule is used but never defined")


class _Sequence:
    """One alternative of a rule: llama.cpp's `parse_sequence`, keeping of the last symbol (the
    one a repetition applies to) only its length in elements and the rules it references."""

    def __init__(self, parser: _Parser, rule_name: str, refs: set[int], nested: bool) -> None:
        self.p = parser
        self.rule_name = rule_name
        self.refs = refs
        self.nested = nested
        self.last_len = 0
        self.last_refs: set[int] = set()
        self.prev_rules = 1

    def new_symbol(self, length: int, refs: set[int], prev_rules: int = 1) -> None:
        self.refs |= self.last_refs
        self.last_len, self.last_refs, self.prev_rules = length, refs, prev_rules

    def parse(self, pos: int) -> int:
        p, src = self.p, self.p.src
        while pos < len(src):
            c = src[pos]
            if c == '"':
                pos = self.literal(pos + 1)
            elif c == "[":
                pos = self.char_class(pos + 1)
            elif c in "<!":
                end = p.token(pos + 1 if c == "!" else pos)
                self.new_symbol(1, set())
                pos = p.space(end, self.nested)
            elif _NAME.match(c):
                end = p.name(pos)
                ref = p.symbol(src[pos:end])
                p.first_use.setdefault(ref, pos)
                self.new_symbol(1, {ref})
                pos = p.space(end, self.nested)
            elif c == "(":
                pos = self.group(pos)
            elif c == ".":
                self.new_symbol(1, set())
                pos = p.space(pos + 1, self.nested)
            elif c in "*+?":
                at = pos
                pos = p.space(pos + 1, self.nested)
                self.repeat(at, 1 if c == "+" else 0, 1 if c == "?" else None)
            elif c == "{":
                pos = self.braces(pos)
            else:
                break
        self.refs |= self.last_refs
        return pos

    def literal(self, pos: int) -> int:
        p = self.p
        length = 0
        while p.at(pos) != '"':
            plain = _PLAIN_LITERAL.match(p.src, pos)
            if plain is not None:
                length += plain.end() - pos
                pos = plain.end()
                continue
            if pos >= len(p.src):
                raise p.fail(pos, "unexpected end of the grammar in a literal")
            pos = p.char(pos)
            length += 1
        self.new_symbol(length, set())
        return p.space(pos + 1, self.nested)

    def char_class(self, pos: int) -> int:
        p = self.p
        if p.at(pos) == "^":
            pos += 1
        length = 0
        while p.at(pos) != "]":
            if pos >= len(p.src):
                raise p.fail(pos, "unexpected end of the grammar in a character class")
            pos = p.char(pos)
            length += 1
            if p.at(pos) == "-" and p.at(pos + 1) != "]":
                if pos + 1 >= len(p.src):
                    raise p.fail(pos, "unexpected end of the grammar in a character class")
                pos = p.char(pos + 1)
                length += 1
        self.new_symbol(length, set())
        return p.space(pos + 1, self.nested)

    def group(self, pos: int) -> int:
        p = self.p
        if p.groups_open == MAX_GROUP_NESTING:
            raise p.fail(pos, f"groups nested more than {MAX_GROUP_NESTING} deep")
        before = len(p.symbol_ids)
        sub_id = p.generated_symbol(self.rule_name)
        p.groups_open += 1
        end = p.alternates(p.space(pos + 1, True), self.rule_name, sub_id, nested=True)
        p.groups_open -= 1
        self.new_symbol(1, {sub_id}, max(1, len(p.symbol_ids) - before))
        if p.at(end) != ")":
            raise p.fail(end, "expecting )")
        return p.space(end + 1, self.nested)

    def braces(self, pos: int) -> int:
        p = self.p
        at = pos
        pos = p.space(pos + 1, self.nested)
        low, pos = p.integer(pos, _UINT64_MAX)
        pos = p.space(pos, self.nested)
        high: int | None = None
        if p.at(pos) == "}":
            high = low
        elif p.at(pos) == ",":
            pos = p.space(pos + 1, self.nested)
            if _DIGITS.match(p.at(pos)):
                high, pos = p.integer(pos, _UINT64_MAX)
                pos = p.space(pos, self.nested)
            if p.at(pos) != "}":
                raise p.fail(pos, "expecting }")
        else:
            raise p.fail(pos, "expecting , or }")
        pos = p.space(pos + 1, self.nested)
        if low > MAX_REPETITION:
            raise p.fail(at, f"more than {MAX_REPETITION} repetitions")
        if high is not None and high < low:
            raise p.fail(at, "the repetition's maximum is below its minimum")
        self.repeat(at, low, None if high is not None and high > MAX_REPETITION else high)
        return pos

    def repeat(self, at: int, low: int, high: int | None) -> None:
        """llama.cpp's `handle_repetitions`: the last symbol `low` times, then `high - low`
        optional copies (one recursive rule when `high` is None), each a generated rule."""
        p = self.p
        if self.last_len == 0:
            raise p.fail(at, "expecting an item before this repetition")
        total = high if high is not None and high > 0 else max(low, 1)
        if self.prev_rules * total > MAX_REPETITION:
            raise p.fail(at, f"the repetitions nest to more than {MAX_REPETITION} rules")
        repeated = set(self.last_refs)
        if low == 0:
            self.last_len, self.last_refs = 0, set()
        else:
            self.last_len *= low
        optional = 1 if high is None else high - low
        last_rule = 0
        for index in range(optional):
            rule_id = p.generated_symbol(self.rule_name)
            refs = set(repeated)
            if high is None:
                refs.add(rule_id)
            elif index > 0:
                refs.add(last_rule)
            p.add_rule(rule_id, refs)
            last_rule = rule_id
        if optional > 0:
            self.last_len += 1
            self.last_refs.add(last_rule)
        self.prev_rules *= total

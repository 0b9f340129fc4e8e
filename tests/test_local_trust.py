"""The local model, tried as a hostile caller and as a new user would (issue 22, items 3, 7, 14).

A grammar with a syntax error never reaches llama.cpp's parser, which would print it to the
worker's stderr (its log stream): modelwire reads GBNF by llama.cpp's rules first, and a
differential test keeps that reading equal to the linked llama.cpp's. A message's `name`, which
gemma's turns cannot carry, is refused by field rather than dropped. A call that sets no
max_new_tokens is bounded by the model's `default_max_new_tokens`, and the CLI ends its output
with a newline and says what to change when the deadline passes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import llama_cpp
import pytest

from cli_process import PIPE, first_line, start_cli
from conformance import assert_refused, field_violations, user
from conftest import free_port
from modelwire.app.server import Worker
from modelwire.providers.llama.client import DEFAULT_MAX_NEW_TOKENS, LlamaCppClient
from modelwire.providers.llama.engine import GrammarSyntaxError, LlamaModel
from modelwire.providers.llama.gbnf_check import GbnfSyntaxError, check_gbnf
from modelwire.providers.llama.grammar import json_object_grammar, json_schema_grammar
from modelwire.v1 import worker_pb2 as pb
from modelwire.v1 import worker_pb2_grpc as pb_grpc

MODEL = "gemma-3-270m"
SECRET = "PATIENT-JANE-DOE-078-05-1120"
DEFAULT_BOUND = 12
GRAMMAR = "output_format.grammar"
SMALL_PROPERTIES = {"n": {"type": "integer", "minimum": 3}, "s": {"type": "string", "maxLength": 4}}


@pytest.fixture
async def stub(embedded_worker: Worker) -> AsyncIterator[pb_grpc.ModelWorkerStub]:
    async with grpc.aio.insecure_channel(embedded_worker.address) as channel:
        yield pb_grpc.ModelWorkerStub(channel)


def provider(worker: Worker) -> LlamaCppClient:
    client = worker.models[0].client
    assert isinstance(client, LlamaCppClient)
    return client


def request(
    messages: list[pb.ModelMessage], max_new_tokens: int | None = 8, grammar: str | None = None
) -> pb.ModelRequest:
    sampling = pb.SamplingParams(temperature=0.0)
    if max_new_tokens is not None:
        sampling.max_new_tokens = max_new_tokens
    made = pb.ModelRequest(model=MODEL, messages=messages, sampling=sampling)
    if grammar is not None:
        made.output_format.grammar = grammar
    return made


# --- a worker in a process of its own, its stderr kept -------------------------------------------


@dataclass
class Served:
    address: str
    stderr: bytearray


@contextlib.asynccontextmanager
async def serving(tmp_path: Path, models_toml: str) -> AsyncIterator[Served]:
    """`modelwire serve` with these [[models]], as an operator runs it; on exit it is stopped with
    SIGTERM and `stderr` holds every byte it wrote there."""
    port = free_port()
    config = tmp_path / "modelwire.toml"
    config.write_text(f"[server]\nport = {port}\ngrace_period_s = 1\n{models_toml}")
    process = await start_cli("serve", "--config", str(config), stderr=PIPE)
    assert process.stderr is not None
    served = Served(f"127.0.0.1:{port}", bytearray())

    async def keep_stderr(stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(65536):
            served.stderr += chunk

    reader = asyncio.create_task(keep_stderr(process.stderr))
    try:
        line = await first_line(process, 180)
        assert "modelwire serving" in line, (line, bytes(served.stderr[-2000:]))
        yield served
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 60)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
            await reader


LOCAL_MODEL = f"""
[[models]]
name = "{MODEL}"
provider = "llamacpp"
context_length = 2048
max_concurrency = 1
default_max_new_tokens = {DEFAULT_BOUND}
"""


# --- item 3: a grammar's text never reaches the log ----------------------------------------------

BAD_GRAMMARS = [
    f'root ::= "{SECRET}" | ( oops',  # the group is never closed
    f'root ::= "{SECRET}" \\q',  # an unknown escape
    f"root ::= answer\n# {SECRET}",  # a rule used but never defined
    f"root ::= [{SECRET}",  # the character class is never closed
    f'root ::= "a"\n{SECRET} = "b"',  # not a rule
]


async def test_a_grammar_with_a_syntax_error_is_refused_and_never_printed_to_the_log(
    tmp_path: Path,
) -> None:
    """llama.cpp's parser prints a grammar it cannot parse, whole, with fprintf to stderr: the
    worker's log stream, which must stay one JSON object per line and free of request text."""
    descriptions = []
    question = [user("Yes or no?")]
    async with serving(tmp_path, LOCAL_MODEL) as served:
        async with grpc.aio.insecure_channel(served.address) as channel:
            worker = pb_grpc.ModelWorkerStub(channel)
            for gbnf in BAD_GRAMMARS:
                refusal = worker.Generate(request(question, grammar=gbnf))
                await assert_refused(refusal, GRAMMAR, MODEL)
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await worker.Generate(request(question, grammar=gbnf))
                descriptions.append(dict(field_violations(refused.value))[GRAMMAR])
            answer = await worker.Generate(request(question, grammar='root ::= "yes" | "no"'))
            assert answer.text in ("yes", "no")
    assert served.stderr, "the worker logged nothing at all"
    assert SECRET.encode() not in served.stderr
    for line in bytes(served.stderr).splitlines():
        if line.strip():
            assert isinstance(json.loads(line), dict), line
    for description in descriptions:
        assert "the grammar does not parse: line " in description, description
        assert SECRET not in description


def llama_cpp_parses(model: LlamaModel, gbnf: str, capfd: pytest.CaptureFixture[str]) -> bool:
    """Whether llama.cpp's own parser takes `gbnf`: it prints "error parsing grammar" when not
    (a missing root or left recursion is refused later, through its log callback, not here)."""
    capfd.readouterr()
    vocab = llama_cpp.llama_model_get_vocab(model.handle)
    sampler = llama_cpp.llama_sampler_init_grammar(vocab, gbnf.encode(), b"root")
    if sampler:
        llama_cpp.llama_sampler_free(sampler)
    return "error parsing grammar" not in capfd.readouterr().err


HAND_PICKED = [
    'root ::= "yes" | "no"',
    'root ::= [a-z]+ ("," [a-z]+)*',
    'root ::= "a"{2} "b"{0,3} "c"{1,} ("d" "e"){2,2000}',
    'root ::= "a"{2001}',
    'root ::= ("a"{0,50}){0,50}',
    'root ::= ("a"{0,30}){0,50}',
    'root ::= "a"*?',
    "root ::= *",
    'root ::= ""*',
    "root ::= []",
    "root ::= [^]",
    'root ::= "\\x41\\u00e9\\U0001F600\\t\\r\\n\\\\\\"\\[\\]\\-"',
    'root ::= "\\x4"',
    'root ::= "\\uZZZZ"',
    "root ::= [a-]",
    "root ::= [\\]-\\-]",
    "root ::= [a-",
    "root ::= .",
    "root ::= <[1]> !<[2]>",
    "root ::= <[99999999999]>",
    "root ::= <[1]",
    "root ::= <end_of_turn>",
    "root ::= <not a token at all>",
    "root ::= <eos",
    "root ::= x{0}",
    "root ::= x",
    'root ::= "a"\nb ::= undefined\nb ::= "c"',
    'root ::= "a" # a comment\n\n  # another\nx ::= "b"\r\ny ::= "c"\r',
    'root ::= ( "a" |\n  "b" )',
    'root ::= "a" |\n "b"',
    'root ::= "a"\n| "b"',
    'root::="a"',
    'root ::= "a" {1, 2}',
    'root ::= "a"{,2}',
    'root ::= "a"{2',
    'root ::= "a"{2,3',
    'root ::= "a"{99999999999999999999999}',
    'root ::= "é" [à-ü]',
    'r\u00e9 ::= "a"',
    'root ::= "a") "b"',
    'root ::= ("a"',
    'root ::= "open',
    "",
    "   \n# only a comment\n",
    'root ::= "a"\nroot_2 ::= "b" ("c")',
    'root ::= root_4 a b ("x")\na ::= "a"\nb ::= "b"',
]


def mutants(base: str, count: int, rng: random.Random) -> Iterator[str]:
    """`base` with a character deleted, inserted or replaced, `count` times over."""
    alphabet = '"()[]{}|*+?.<>!\\-#:=,^0123456789 \nab'
    for _ in range(count):
        text = base
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(text) + 1)
            kind = rng.randrange(3)
            if kind == 0 and at < len(text):
                text = text[:at] + text[at + 1 :]
            elif kind == 1:
                text = text[:at] + rng.choice(alphabet) + text[at:]
            elif at < len(text):
                text = text[:at] + rng.choice(alphabet) + text[at + 1 :]
        yield text


def test_the_python_reading_of_gbnf_accepts_exactly_what_llama_cpp_parses(
    embedded_worker: Worker, capfd: pytest.CaptureFixture[str]
) -> None:
    """The check stands in front of llama.cpp's parser: it must refuse every grammar that parser
    would print, and no grammar it takes. Hand-picked corners, then seeded mutations of grammars
    a caller or modelwire writes."""
    model = provider(embedded_worker).model
    rng = random.Random(22)
    bases = [
        'root ::= "yes" | "no"',
        'root ::= item ("," ws item){0,3}\n'
        'item ::= [a-zA-Z_] [a-zA-Z0-9_]* | "\\"" [^"\\\\]* "\\""\n'
        "ws ::= [ \\t\\n]?",
        'root ::= "{" ws ( "\\"k\\"" ws ":" ws value )? "}"\n'
        'value ::= [0-9]+ | "true" | <[7]> | .\n'
        'ws ::= ([ \\t] | "\\n")*',
        json_object_grammar(),
        json_schema_grammar(json.dumps({"type": "object", "properties": SMALL_PROPERTIES})),
    ]
    corpus = HAND_PICKED + [text for base in bases for text in mutants(base, 80, rng)]
    disagreements = []
    parsed = 0
    for gbnf in corpus:
        try:
            check_gbnf(gbnf, lambda text: len(model.tokenize(text, special=True)) == 1)
            ours = True
        except GbnfSyntaxError as error:
            if "maximum is below its minimum" in str(error):
                continue  # llama.cpp would expand it without end: it is never handed one
            ours = False
        parsed += ours
        if ours != llama_cpp_parses(model, gbnf, capfd):
            disagreements.append((gbnf, ours))
    assert not disagreements, disagreements
    assert 0.2 < parsed / len(corpus) < 0.9, "the corpus holds both kinds"


async def test_a_repetition_whose_maximum_is_below_its_minimum_is_refused(
    stub: pb_grpc.ModelWorkerStub,
) -> None:
    """llama.cpp expands `"a"{5,2}` into 2^64 - 3 optional rules: memory until the worker dies
    (4 GB in 21 s, then an abort, when it was tried)."""
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.Generate(request([user("a?")], grammar='root ::= "a"{5,2}'), timeout=30)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert dict(field_violations(refused.value)) == {
        GRAMMAR: f"model {MODEL!r}: the grammar does not parse: line 1, column 13: "
        "the repetition's maximum is below its minimum"
    }


def test_the_engine_never_hands_llama_cpp_a_grammar_that_does_not_parse(
    embedded_worker: Worker, capfd: pytest.CaptureFixture[str]
) -> None:
    """The engine's own entry point: a grammar that does not parse never reaches llama.cpp."""
    model = provider(embedded_worker).model
    capfd.readouterr()
    with pytest.raises(GrammarSyntaxError) as refused:
        model.check_grammar(f'root ::= "{SECRET}" | ( oops')
    captured = capfd.readouterr()
    assert SECRET not in captured.err + captured.out
    assert "line 1, column" in str(refused.value) and SECRET not in str(refused.value)


# --- item 7: a message's name is refused, not dropped --------------------------------------------


def named(role: int, text: str, name: str, **fields: object) -> pb.ModelMessage:
    return pb.ModelMessage(role=role, content=text, name=name, **fields)  # type: ignore[arg-type]


CALL = pb.ToolCall(id="call_1", name="get_time", arguments_json="{}")


def count(messages: list[pb.ModelMessage]) -> pb.CountTokenRequest:
    return pb.CountTokenRequest(model=MODEL, messages=messages)


@pytest.mark.parametrize("role", [pb.ROLE_SYSTEM, pb.ROLE_USER])
async def test_a_name_on_a_turn_is_refused_by_generate_and_count_token_alike(
    stub: pb_grpc.ModelWorkerStub, role: int
) -> None:
    """gemma's turns have no names: the same prompt with and without one gave the same tokens."""
    messages = [named(role, "Who am I?", "alice")]
    if role == pb.ROLE_SYSTEM:
        messages.append(user("Say it."))
    await assert_refused(stub.Generate(request(messages)), "messages[0].name", MODEL)
    await assert_refused(stub.GenerateStream(request(messages)).read(), "messages[0].name", MODEL)
    await assert_refused(stub.CountToken(count(messages)), "messages[0].name", MODEL)


async def test_a_tool_result_s_name_is_read_where_it_labels_the_result(
    stub: pb_grpc.ModelWorkerStub,
) -> None:
    """A tool result labelled by its call's id reads the call's name; its own name may repeat it
    but not contradict it. One without a call id is labelled by its name."""
    asked = user("What time is it?")
    called = pb.ModelMessage(role=pb.ROLE_ASSISTANT, tool_calls=[CALL])
    same = named(pb.ROLE_TOOL, "12:00", "get_time", tool_call_id="call_1")
    other = named(pb.ROLE_TOOL, "12:00", "get_date", tool_call_id="call_1")
    unlinked = named(pb.ROLE_TOOL, "12:00", "get_time")
    for messages in ([asked, called, same], [asked, unlinked]):
        answered = await stub.Generate(request(messages, max_new_tokens=2))
        assert answered.usage.completion_tokens >= 1
        assert (await stub.CountToken(count(messages))).count > 0
    contradicted = [asked, called, other]
    await assert_refused(stub.Generate(request(contradicted)), "messages[2].name", MODEL)
    await assert_refused(stub.CountToken(count(contradicted)), "messages[2].name", MODEL)


# --- item 14: bounded output by default, a CLI that says what to change --------------------------


async def test_a_call_without_max_new_tokens_ends_at_the_model_s_default_bound(
    embedded_worker: Worker, stub: pb_grpc.ModelWorkerStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unbounded, gemma-3-270m repeated itself for ~2,000 tokens (a minute) on the README's first
    command. The stock bound is DEFAULT_MAX_NEW_TOKENS; a smaller one here keeps the test short."""
    client = provider(embedded_worker)
    assert client.default_max_new_tokens == DEFAULT_MAX_NEW_TOKENS == 256
    monkeypatch.setattr(client, "default_max_new_tokens", DEFAULT_BOUND)
    # Counting to a thousand is longer than the bound whatever the model makes of it.
    counting = [user("Count from 1 to 1000, one number per line.")]
    unbounded = request(counting, max_new_tokens=None)
    cut = (pb.FINISH_REASON_LENGTH, DEFAULT_BOUND)
    output = await stub.Generate(unbounded, timeout=120)
    assert (output.finish_reason, output.usage.completion_tokens) == cut
    chunks = [chunk async for chunk in stub.GenerateStream(unbounded, timeout=120)]
    assert (chunks[-1].finish_reason, chunks[-1].usage.completion_tokens) == cut
    more = request(counting, max_new_tokens=DEFAULT_BOUND + 3)
    asked_more = await stub.Generate(more, timeout=120)
    assert asked_more.usage.completion_tokens == DEFAULT_BOUND + 3, "a caller's own bound wins"


async def cli(address: str, *args: str) -> tuple[int, bytes, bytes]:
    process = await start_cli("generate", "--address", address, *args, stderr=PIPE)
    stdout, stderr = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, stdout, stderr


SLOW_ECHO = """
[[models]]
name = "slow"
provider = "echo"
chunks = 3
chunk_text = "hello"
chunk_interval_s = 60
"""


async def test_the_cli_ends_a_bounded_stream_with_a_newline_and_says_what_to_change_at_a_deadline(
    tmp_path: Path,
) -> None:
    """`modelwire generate "Write a haiku about the sea."` as the README had it (no bound) against
    a worker configured with `default_max_new_tokens`; then a stream that outlives --timeout."""
    async with serving(tmp_path, LOCAL_MODEL + SLOW_ECHO) as served:
        haiku = "Write a haiku about the sea."
        code, stdout, stderr = await cli(served.address, "--temperature", "0", haiku)
        assert code == 0, stderr
        assert stdout.endswith(b"\n") and stdout.strip(), stdout
        cut = b"cut at its token bound (finish_reason LENGTH); --max-new-tokens sets it"
        assert cut in stderr, stderr

        code, stdout, stderr = await cli(served.address, "--model", "slow", "--timeout", "3", "Hi")
    assert code == 1
    assert stdout == b"hello\n", "the text so far, its line ended before the error"
    message = stderr.decode()
    assert message.startswith("modelwire: DEADLINE_EXCEEDED"), message
    hint = "--timeout 3 s: raise --timeout, or bound the output with --max-new-tokens"
    assert hint in message, message

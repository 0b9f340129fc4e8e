"""Contract v1.1 through the Python client and the `modelwire` CLI (issue 12): tools, tool choice,
output formats, reasoning options, images and Embed, against live workers.

The echo model chats and streams and can do nothing else, so every new field sent to it must come
back refused by name: that proves the client put each field on the wire and surfaces the
violation. The embedded gemma (llama.cpp grammars) honours forced tool calls, JSON Schema and Embed.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from conftest import running_worker
from fake_upstream import load_toml_config
from modelwire.app.cli import main
from modelwire.app.server import Worker
from modelwire.client import (
    ModelwireCallError,
    ModelWorkerClient,
    ModelWorkerSyncClient,
    OutputCollector,
    assistant_turn,
    async_client,
    build_request,
    grammar_format,
    image,
    json_object_format,
    json_schema_format,
    message,
    tool,
    tool_result,
)
from modelwire.client.requests import embed_request
from modelwire.v1 import worker_pb2 as pb

ECHO = "echo"
GEMMA = "gemma-3-270m"
REFUSED = "does not accept it"

WEATHER_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "minLength": 1},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
PERSON_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}
# 1x1 transparent PNG.
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c4890000000d4944415478da63f8cf"
    "c0f01f0005000201ffa2bdf5b10000000049454e44ae426082"
)
WEATHER_PROMPT = "What is the weather in Paris, in celsius?"

CONFIG = """
[server]
grace_period_s = 1.0

[[models]]
name = "echo"
provider = "echo"
chunks = 3
chunk_text = "hello "

[[models]]
name = "echo-mute"
provider = "echo"
capabilities = []

[[models]]
name = "echo-empty"
provider = "echo"
chunks = 0
"""


@pytest.fixture(scope="module")
async def echo_worker(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Worker]:
    async with running_worker(load_toml_config(tmp_path_factory.mktemp("echo"), CONFIG)) as worker:
        yield worker


@pytest.fixture
async def echo(echo_worker: Worker) -> AsyncIterator[ModelWorkerClient]:
    async with ModelWorkerClient(echo_worker.address, timeout=10) as client:
        yield client


@pytest.fixture
async def gemma(embedded_worker: Worker) -> AsyncIterator[ModelWorkerClient]:
    async with ModelWorkerClient(embedded_worker.address, timeout=120) as client:
        yield client


def refused_fields(error: ModelwireCallError, model: str) -> set[str]:
    """The fields of an INVALID_ARGUMENT refusal whose violations name `model` as unable to honour
    them."""
    assert error.code.name == "INVALID_ARGUMENT", error
    assert error.violations, "a refusal carries its google.rpc.BadRequest field violations"
    return {
        field
        for field, description in error.violations
        if REFUSED in description and repr(model) in description
    }


def png_file(tmp_path: Path, name: str = "dot.png") -> Path:
    path = tmp_path / name
    path.write_bytes(PNG)
    return path


def weather_arguments(arguments_json: str) -> dict[str, object]:
    arguments = json.loads(arguments_json)
    jsonschema.validate(arguments, WEATHER_SCHEMA)
    return dict(arguments)


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


# --- requests: what the client puts on the wire ---------------------------------------------------


def test_build_request_sets_each_new_field_and_leaves_unset_ones_unset(tmp_path: Path) -> None:
    weather = tool("get_weather", WEATHER_SCHEMA, description="The weather.", strict=True)
    request = build_request(
        GEMMA,
        [
            message(
                "user",
                "What is this?",
                image(png_file(tmp_path)),
                image("https://example.com/cat.jpg"),
            )
        ],
        tools=[weather, tool("ping")],
        tool_choice="get_weather",
        parallel_tool_calls=False,
        output_format=json_schema_format(
            "person", '{"type": "object", "b": 1, "a": 2.0}', strict=True
        ),
        reasoning_effort="high",
        reasoning_budget_tokens=2048,
    )
    assert [t.name for t in request.tools] == ["get_weather", "ping"]
    assert (
        json.loads(request.tools[0].parameters_json_schema) == WEATHER_SCHEMA
        and request.tools[0].strict
    )
    assert (
        request.tools[0].description == "The weather."
        and request.tools[1].parameters_json_schema == ""
    )
    assert (
        request.tool_choice.WhichOneof("choice") == "tool_name"
        and request.tool_choice.tool_name == "get_weather"
    )
    assert request.HasField("parallel_tool_calls") and request.parallel_tool_calls is False
    # JSON text travels as written: key order and 2.0 survive.
    assert request.output_format.json_schema.schema_json == '{"type": "object", "b": 1, "a": 2.0}'
    assert (
        request.output_format.json_schema.name == "person"
        and request.output_format.json_schema.strict
    )
    assert (
        request.reasoning.effort == pb.REASONING_EFFORT_HIGH
        and request.reasoning.budget_tokens == 2048
    )
    [user] = request.messages
    assert user.content == "" and [part.WhichOneof("part") for part in user.parts] == [
        "text",
        "image",
        "image",
    ]
    assert user.parts[1].image.data == PNG and user.parts[1].image.mime_type == "image/png"
    assert user.parts[2].image.url == "https://example.com/cat.jpg"

    plain = build_request(GEMMA, "hi")
    for field in ("tool_choice", "parallel_tool_calls", "output_format", "reasoning"):
        assert not plain.HasField(field), field
    assert not plain.tools

    modes = {
        name: build_request(GEMMA, "hi", tool_choice=name).tool_choice.mode
        for name in ("auto", "none", "required")
    }
    assert modes == {
        "auto": pb.TOOL_CHOICE_MODE_AUTO,
        "none": pb.TOOL_CHOICE_MODE_NONE,
        "required": pb.TOOL_CHOICE_MODE_REQUIRED,
    }
    # A tool named like a mode is chosen with the message itself.
    named = build_request(GEMMA, "hi", tool_choice=pb.ToolChoice(tool_name="none")).tool_choice
    assert named.WhichOneof("choice") == "tool_name"
    assert (
        build_request(GEMMA, "hi", output_format=json_object_format()).output_format.json_object
        is True
    )
    assert (
        build_request(
            GEMMA, "hi", output_format=grammar_format('root ::= "a"')
        ).output_format.grammar
        == 'root ::= "a"'
    )
    # A budget alone is still a reasoning request (effort unspecified).
    budget_only = build_request(GEMMA, "hi", reasoning_budget_tokens=64)
    assert (
        budget_only.HasField("reasoning")
        and budget_only.reasoning.effort == pb.REASONING_EFFORT_UNSPECIFIED
    )
    with pytest.raises(ValueError, match="reasoning_effort"):
        build_request(GEMMA, "hi", reasoning_effort="extreme")  # type: ignore[typeddict-item]


def test_images_messages_and_embed_requests(tmp_path: Path) -> None:
    assert image(png_file(tmp_path, "A.JPEG")).mime_type == "image/jpeg"
    assert image(str(png_file(tmp_path, "b.webp"))).mime_type == "image/webp"
    assert image(PNG, "image/png").data == PNG
    assert image("data:image/png;base64,AAAA").url.startswith("data:image/png")
    with pytest.raises(ValueError, match="mime_type"):
        image(PNG)
    with pytest.raises(ValueError, match="extension"):
        image(png_file(tmp_path, "dot.bmp"))
    with pytest.raises(FileNotFoundError):
        image(tmp_path / "missing.png")

    assert message("user", "hi").content == "hi" and not message("user", "hi").parts
    assert [p.text for p in message("user", "a", "b").parts] == ["a", "b"]
    cached = message("system", "You are terse.", cache_breakpoint=True)
    assert cached.role == pb.ROLE_SYSTEM and cached.cache_breakpoint
    answer = tool_result("call_1", '{"temperature": 21}')
    assert (answer.role, answer.tool_call_id, answer.content) == (
        pb.ROLE_TOOL,
        "call_1",
        '{"temperature": 21}',
    )

    assert list(embed_request("m", "one text").inputs) == ["one text"]
    assert list(embed_request("m", ["a", "b"], 64).inputs) == ["a", "b"]
    assert embed_request("m", ["a"], 64).dimensions == 64 and not embed_request(
        "m", ["a"]
    ).HasField("dimensions")


def test_collector_joins_interleaved_tool_call_deltas_and_the_assistant_turn_round_trips() -> None:
    chunks = [
        pb.ModelOutput(reasoning="Let me ", text=""),
        pb.ModelOutput(reasoning="check.", reasoning_signature=b"sig-", text="Checking"),
        # Index order, not arrival order, orders the calls.
        pb.ModelOutput(
            tool_call_deltas=[
                pb.ToolCallDelta(index=1, id="call_b", name="get_time", arguments_delta='{"city"'),
                pb.ToolCallDelta(
                    index=0, id="call_a", name="get_weather", arguments_delta='{"city": "Pa'
                ),
            ]
        ),
        pb.ModelOutput(
            reasoning_signature=b"nature",
            tool_call_deltas=[
                pb.ToolCallDelta(index=1, arguments_delta=': "Oslo"}'),
                pb.ToolCallDelta(index=0, arguments_delta='ris", "unit": "celsius"}'),
            ],
        ),
        pb.ModelOutput(
            finish_reason=pb.FINISH_REASON_TOOL_CALLS,
            model="m",
            usage=pb.Usage(prompt_tokens=5, completion_tokens=9, total_tokens=14),
        ),
    ]
    collector = OutputCollector()
    for chunk in chunks:
        collector.add(chunk)
    output = collector.output()
    assert output.text == "Checking" and output.reasoning == "Let me check."
    assert output.reasoning_signature == b"sig-nature"
    assert [(c.id, c.name) for c in output.tool_calls] == [
        ("call_a", "get_weather"),
        ("call_b", "get_time"),
    ]
    assert weather_arguments(output.tool_calls[0].arguments_json) == {
        "city": "Paris",
        "unit": "celsius",
    }
    assert json.loads(output.tool_calls[1].arguments_json) == {"city": "Oslo"}
    assert (
        output.finish_reason == pb.FINISH_REASON_TOOL_CALLS
        and output.model == "m"
        and output.usage.total_tokens == 14
    )
    assert not output.HasField("timing")

    turn = assistant_turn(output)
    assert turn.role == pb.ROLE_ASSISTANT and turn.content == "Checking"
    assert list(turn.tool_calls) == list(output.tool_calls)
    assert turn.reasoning == "Let me check." and turn.reasoning_signature == b"sig-nature"
    assert not assistant_turn(pb.ModelOutput(text="hi")).HasField("reasoning")


# --- refusals: every new field reaches the worker and comes back named ----------------------------


async def test_every_new_request_field_is_refused_by_name_for_a_model_that_cannot_honour_it(
    echo: ModelWorkerClient,
) -> None:
    with pytest.raises(ModelwireCallError) as raised:
        await echo.generate(
            ECHO,
            "Weather in Paris?",
            tools=[tool("get_weather", WEATHER_SCHEMA)],
            tool_choice="required",
            parallel_tool_calls=True,
            output_format=json_object_format(),
            reasoning_effort="low",
        )
    assert refused_fields(raised.value, ECHO) == {
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "output_format",
        "reasoning",
    }
    assert raised.value.field_violations["tools"].startswith(f"model {ECHO!r} does not accept it")

    with pytest.raises(ModelwireCallError) as raised:
        await echo.generate(
            ECHO, "Yes or no?", output_format=grammar_format('root ::= "yes" | "no"')
        )
    assert refused_fields(raised.value, ECHO) == {"output_format.grammar"}


async def test_message_fields_are_refused_by_name_and_streams_refuse_like_unary_calls(
    echo: ModelWorkerClient,
) -> None:
    messages = [
        message("system", "Be brief.", cache_breakpoint=True),
        message("user", "What is in this image?", image(PNG, "image/png")),
        message(
            "assistant",
            tool_calls=[
                pb.ToolCall(
                    id="call_1",
                    name="get_weather",
                    arguments_json='{"city": "Paris", "unit": "celsius"}',
                )
            ],
            reasoning="It wants the weather.",
            reasoning_signature=b"sig",
        ),
        tool_result("call_1", '{"temperature": 21}'),
    ]
    expected = {
        "messages[0].cache_breakpoint",
        "messages[1].parts[1].image",
        "messages[2].tool_calls",
        "messages[2].reasoning",
        "messages[2].reasoning_signature",
        "messages[3].tool_call_id",
    }
    with pytest.raises(ModelwireCallError) as raised:
        await echo.generate(ECHO, messages)
    assert refused_fields(raised.value, ECHO) == expected
    with pytest.raises(ModelwireCallError) as streamed:
        async for _ in echo.stream(ECHO, messages):
            raise AssertionError("a refused stream sends nothing")
    assert refused_fields(streamed.value, ECHO) == expected


async def test_embed_and_the_sync_client_surface_the_refusal(
    echo_worker: Worker, echo: ModelWorkerClient
) -> None:
    with pytest.raises(ModelwireCallError) as raised:
        await echo.embed(ECHO, ["hello"])
    assert refused_fields(raised.value, ECHO) == {"model"}
    assert "CAPABILITY_EMBEDDINGS" in raised.value.field_violations["model"]

    def sync_calls() -> tuple[ModelwireCallError, ModelwireCallError, str]:
        with ModelWorkerSyncClient(echo_worker.address, timeout=10) as client:
            errors = []
            for call in (
                lambda: client.embed(ECHO, "hello", dimensions=8),
                lambda: list(client.stream(ECHO, "hi", tools=[tool("ping")])),
            ):
                try:
                    call()
                except ModelwireCallError as error:
                    errors.append(error)
            return errors[0], errors[1], client.generate(ECHO, "hi").text

    embed_error, stream_error, text = await asyncio.to_thread(sync_calls)
    assert refused_fields(embed_error, ECHO) == {"model"}
    assert refused_fields(stream_error, ECHO) == {"tools"}
    assert text == "hello " * 3


async def test_every_violation_of_a_field_is_kept(echo: ModelWorkerClient) -> None:
    """A model with no capability at all refuses a stream twice on `model` (no chat, no
    streaming)."""
    with pytest.raises(ModelwireCallError) as raised:
        async for _ in echo.stream("echo-mute", "hi"):
            pass
    assert [field for field, _ in raised.value.violations] == ["model", "model"]
    described = raised.value.field_violations["model"]
    assert (
        "CAPABILITY_CHAT" in described and "CAPABILITY_STREAMING" in described and "; " in described
    )


async def test_count_tokens_takes_parts_and_tool_calls(
    echo: ModelWorkerClient, gemma: ModelWorkerClient
) -> None:
    """The parts and tool calls reach the worker: an image is refused by a model without vision, as
    Generate would refuse it, and a tool conversation is counted whole by one with tools."""
    with pytest.raises(ModelwireCallError) as refused:
        await echo.count_tokens(ECHO, [message("user", "What is this?", image(PNG, "image/png"))])
    assert refused_fields(refused.value, ECHO) == {"messages[0].parts[1].image"}
    conversation = [
        message("user", WEATHER_PROMPT),
        message(
            "assistant",
            tool_calls=[
                pb.ToolCall(
                    id="call_1",
                    name="get_weather",
                    arguments_json='{"city": "Paris", "unit": "celsius"}',
                )
            ],
        ),
        tool_result("call_1", '{"temperature": 21}'),
    ]
    counted = await gemma.count_tokens(GEMMA, conversation)
    assert counted.count > (await gemma.count_tokens(GEMMA, conversation[:1])).count + 20


# --- the CLI --------------------------------------------------------------------------------------


async def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """`modelwire ARGV` in a thread (it runs its own event loop; the workers run on this one)."""

    def call() -> int:
        try:
            return main(list(argv))
        except SystemExit as exit:
            return int(exit.code or 0)

    code = await asyncio.to_thread(call)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


async def test_cli_generate_sends_each_new_flag_and_prints_the_refusals(
    echo_worker: Worker,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    schema = tmp_path / "weather.json"
    schema_text = json.dumps(WEATHER_SCHEMA, indent=1)
    schema.write_text(schema_text, encoding="utf-8")
    sent: list[pb.ModelRequest] = []

    def spy(*args: Any, **kwargs: Any) -> pb.ModelRequest:
        sent.append(build_request(*args, **kwargs))
        return sent[-1]

    monkeypatch.setattr(async_client, "build_request", spy)
    address = ("--address", echo_worker.address, "--model", ECHO)
    code, out, err = await run_cli(
        capsys,
        "generate",
        *address,
        "--tool",
        f"get_weather=@{schema}",
        "--tool-description",
        "get_weather=The weather.",
        "--tool",
        "ping",
        "--tool-choice",
        "get_weather",
        "--no-parallel-tool-calls",
        "--json-schema",
        f"@{schema}",
        "--strict",
        "--image",
        str(png_file(tmp_path)),
        "--reasoning-effort",
        "low",
        "--reasoning-budget",
        "512",
        WEATHER_PROMPT,
    )
    assert code == 1 and out == ""
    [request] = sent
    assert [(t.name, t.description, t.parameters_json_schema, t.strict) for t in request.tools] == [
        ("get_weather", "The weather.", schema_text, True),
        ("ping", "", "", True),
    ]
    assert request.tool_choice.tool_name == "get_weather" and request.parallel_tool_calls is False
    assert request.output_format.json_schema == pb.JsonSchema(
        name="output", schema_json=schema_text, strict=True
    )
    assert (request.reasoning.effort, request.reasoning.budget_tokens) == (
        pb.REASONING_EFFORT_LOW,
        512,
    )
    [user] = request.messages
    assert user.parts[0].text == WEATHER_PROMPT and user.parts[1].image == pb.Image(
        data=PNG, mime_type="image/png"
    )
    lines = err.splitlines()
    assert lines[0] == "modelwire: INVALID_ARGUMENT"
    fields = {
        line.strip().split(":")[0] for line in lines[1:] if REFUSED in line and repr(ECHO) in line
    }
    assert fields == {
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "output_format",
        "reasoning",
        "messages[0].parts[1].image",
    }

    for flags, field in (
        (("--grammar", 'root ::= "yes"'), "output_format.grammar"),
        (("--json-object",), "output_format"),
    ):
        code, out, err = await run_cli(capsys, "generate", *address, *flags, "Yes?")
        assert code == 1 and f"  {field}: model {ECHO!r} {REFUSED}" in err, err

    # Without the new flags, generate streams as before; an empty answer is still a line.
    code, out, err = await run_cli(capsys, "generate", *address, "hi")
    assert (code, out, err) == (0, "hello hello hello \n", "")
    code, out, err = await run_cli(
        capsys, "generate", "--address", echo_worker.address, "--model", "echo-empty", "hi"
    )
    assert (code, out, err) == (0, "\n", "")


async def test_cli_refuses_bad_flags_before_calling(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # No worker listens on port 9: a flag error must stop the command before any call.
    address = ("--address", "127.0.0.1:9")
    cases = [
        (("--json-schema", "[1, 2]"), "must be a JSON object"),
        (("--json-schema", "{nope"), "not JSON"),
        (("--json-schema", f"@{tmp_path / 'missing.json'}"), "cannot read"),
        (("--tool", "=@x.json"), "expected NAME=SCHEMA_JSON"),
        (("--tool", "f={bad"), "not JSON"),
        (("--image", str(png_file(tmp_path, "dot.bmp"))), "extension"),
        (("--json-object", "--grammar", "root ::= x"), "not allowed with"),
        (("--tool-description", "nameless"), "expected NAME=TEXT"),
    ]
    for flags, expected in cases:
        code, out, err = await run_cli(capsys, "generate", *address, *flags, "hi")
        assert code == 2 and expected in err, (flags, err)
    code, out, err = await run_cli(
        capsys, "generate", *address, "--tool", "f", "--tool-description", "g=text", "hi"
    )
    assert code == 2 and "--tool-description names no --tool: g" in err


async def test_cli_embed_and_models_on_a_model_without_embeddings(
    echo_worker: Worker, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = await run_cli(
        capsys, "embed", "--address", echo_worker.address, "--model", ECHO, "hello"
    )
    assert code == 1 and out == ""
    assert err.splitlines() == [
        "modelwire: INVALID_ARGUMENT",
        f"  model: model {ECHO!r} does not accept it: it has no CAPABILITY_EMBEDDINGS (ListModels "
        "lists what each model accepts)",
    ]
    code, out, err = await run_cli(capsys, "models", "--address", echo_worker.address)
    assert code == 0 and [line.split("\t")[-1] for line in out.splitlines()] == [
        "capabilities=chat,streaming",
        "capabilities=",
        "capabilities=chat,streaming",
    ]
    assert out.startswith(f"{ECHO}\techo\tcontext=131072\tmax_output=4096\t")


# --- the embedded gemma: what llama.cpp grammars make it honour -----------------------------------


async def test_gemma_makes_a_forced_tool_call_unary_and_streamed(gemma: ModelWorkerClient) -> None:
    weather = tool("get_weather", WEATHER_SCHEMA, description="The current weather in a city.")
    for choice in ("get_weather", "required"):
        output = await gemma.generate(
            GEMMA,
            WEATHER_PROMPT,
            tools=[weather],
            tool_choice=choice,
            temperature=0.0,
            max_new_tokens=64,
        )
        assert output.finish_reason == pb.FINISH_REASON_TOOL_CALLS, output
        [call] = output.tool_calls
        assert call.id and call.name == "get_weather"
        weather_arguments(call.arguments_json)

    collector = OutputCollector()
    async for chunk in gemma.stream(
        GEMMA,
        WEATHER_PROMPT,
        tools=[weather],
        tool_choice="get_weather",
        temperature=0.0,
        max_new_tokens=64,
    ):
        assert not chunk.tool_calls, "a stream carries deltas"
        collector.add(chunk)
    streamed = collector.output()
    assert streamed.finish_reason == pb.FINISH_REASON_TOOL_CALLS
    [call] = streamed.tool_calls
    assert call.id and call.name == "get_weather"
    weather_arguments(call.arguments_json)

    # The call and its answer go back as the next turn; tool_choice none lets the model answer in
    # text.
    answer = await gemma.generate(
        GEMMA,
        [
            message("user", WEATHER_PROMPT),
            assistant_turn(streamed),
            tool_result(call.id, '{"temperature": 21, "sky": "clear"}'),
        ],
        tools=[weather],
        tool_choice="none",
        temperature=0.0,
        max_new_tokens=24,
    )
    assert answer.text.strip() and not answer.tool_calls


async def test_gemma_output_follows_the_json_schema_and_the_grammar(
    gemma: ModelWorkerClient,
) -> None:
    output = await gemma.generate(
        GEMMA,
        "Describe a fictional person as JSON with a name and an age.",
        output_format=json_schema_format("person", PERSON_SCHEMA),
        temperature=0.0,
        max_new_tokens=96,
    )
    jsonschema.validate(json.loads(output.text), PERSON_SCHEMA)
    anything = await gemma.generate(
        GEMMA,
        "A JSON object describing a cat, please.",
        output_format=json_object_format(),
        temperature=0.0,
        max_new_tokens=200,
    )
    assert anything.finish_reason == pb.FINISH_REASON_STOP, anything
    assert isinstance(json.loads(anything.text), dict)
    answer = await gemma.generate(
        GEMMA,
        "Is the sky blue?",
        output_format=grammar_format('root ::= "yes" | "no"'),
        seed=7,
        max_new_tokens=8,
    )
    assert answer.text in ("yes", "no")


async def test_gemma_embeds(gemma: ModelWorkerClient) -> None:
    texts = ["The cat sat on the mat.", "Stock prices fell sharply on Monday."]
    first = await gemma.embed(GEMMA, texts)
    again = await gemma.embed(GEMMA, texts)
    assert first.model == GEMMA and len(first.embeddings) == 2 and first.usage.prompt_tokens > 0
    dimension = len(first.embeddings[0].values)
    assert dimension > 0 and len(first.embeddings[1].values) == dimension
    for one, two in zip(first.embeddings, again.embeddings, strict=True):
        assert math.isclose(cosine(list(one.values), list(two.values)), 1.0, abs_tol=1e-5)
    assert cosine(list(first.embeddings[0].values), list(first.embeddings[1].values)) < 0.999
    single = await gemma.embed(GEMMA, texts[0])
    assert len(single.embeddings) == 1


async def test_cli_forced_tool_call_json_schema_and_embed_on_gemma(
    embedded_worker: Worker, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    address = ("--address", embedded_worker.address)
    schema = tmp_path / "person.json"
    schema.write_text(json.dumps(PERSON_SCHEMA), encoding="utf-8")
    code, out, err = await run_cli(
        capsys,
        "generate",
        *address,
        "--temperature",
        "0",
        "--max-new-tokens",
        "64",
        "--tool",
        f"get_weather={json.dumps(WEATHER_SCHEMA)}",
        "--tool-choice",
        "get_weather",
        WEATHER_PROMPT,
    )
    assert code == 0, err
    [line] = out.splitlines()
    call = json.loads(line)
    assert call["id"] and call["name"] == "get_weather"
    jsonschema.validate(call["arguments"], WEATHER_SCHEMA)

    code, out, err = await run_cli(
        capsys,
        "generate",
        *address,
        "--temperature",
        "0",
        "--max-new-tokens",
        "96",
        "--json-schema",
        f"@{schema}",
        "--schema-name",
        "person",
        "Describe a fictional person as JSON with a name and an age.",
    )
    assert code == 0, err
    jsonschema.validate(json.loads(out), PERSON_SCHEMA)

    code, out, err = await run_cli(
        capsys, "embed", *address, "The cat sat on the mat.", "Stock prices fell."
    )
    assert code == 0, err
    vectors = [json.loads(line) for line in out.splitlines()]
    assert len(vectors) == 2 and len(vectors[0]) == len(vectors[1]) > 0
    assert all(isinstance(value, float) for value in vectors[0])
    code, out, err = await run_cli(
        capsys, "embed", *address, "--summary", "The cat sat on the mat."
    )
    assert code == 0, err
    summary = json.loads(out)
    assert (
        summary["dimensions"] == len(vectors[0])
        and len(summary["head"]) == 4
        and summary["norm"] > 0
    )

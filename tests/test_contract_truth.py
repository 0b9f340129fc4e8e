"""Contract truth (issue 22, items 5, 6, 8 and 9): what each provider does is what the contract
and docs/api.md say, checked through a real worker against the scripted fake upstream.

A refusal is the answer's text finishing CONTENT_FILTER on every provider; "no arguments" is a
closed object; TOOL_CALLS only with calls; parallel calls streamed at one index stay apart; no
`name` on OpenAI tool messages; CountToken refuses what Generate refuses; RequestContext reaches
the access line; `assistant_turn(output)` of a reasoning model goes back to an OpenAI-compatible
one; and caller JSON nested past a fixed bound is refused by field before anything is sent.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest

from anthropic_wire import message as claude_message
from anthropic_wire import send_stream, text_block
from anthropic_wire import streamed as claude_streamed
from conformance import assert_refused, collect, field_violations, user
from conftest import running_worker
from fake_upstream import FakeUpstream, load_toml_config
from modelwire.app.server import Worker
from modelwire.client import assistant_turn, tool, tool_result
from modelwire.core.strict_json import MAX_NESTING
from modelwire.observe.logs import ACCESS_LOGGER
from modelwire.v1 import worker_pb2 as pb
from modelwire.v1 import worker_pb2_grpc as pb_grpc
from openai_wire import (
    arguments_delta,
    chunk,
    completion,
    either,
    first_call_delta,
    replied,
    streamed,
    text_chunks,
    usage,
    usage_chunk,
    wire_call,
)

CONFIG = """
[server]
grace_period_s = 1.0

[[models]]
name = "gpt"
provider = "openai"
api_base = "{url}/v1"
upstream_model = "gpt-4o-mini"
context_length = 128000
max_output_tokens = 1000
max_retries = 0
capabilities = ["chat", "streaming", "tools", "json_schema", "reasoning"]

[[models]]
name = "deepseek"
provider = "openai"
api_base = "{url}/v1"
upstream_model = "deepseek-reasoner"
context_length = 128000
max_retries = 0
capabilities = ["chat", "streaming", "tools", "reasoning"]
reasoning_field = "reasoning_content"

[[models]]
name = "claude"
provider = "anthropic"
api_base = "{url}"
upstream_model = "claude-sonnet-4-5"
context_length = 200000
max_output_tokens = 8192
max_retries = 0
"""

REFUSAL = "I'm sorry, I cannot help with that."
NO_ARGUMENTS = {"type": "object", "properties": {}, "additionalProperties": False}
WEATHER_SCHEMA = json.dumps(
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
)
Stub = pb_grpc.ModelWorkerStub


@pytest.fixture(scope="module")
async def worker(
    fake: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Worker]:
    directory = tmp_path_factory.mktemp("contract-truth")
    config = load_toml_config(directory, CONFIG.format(url=fake.url))
    async with running_worker(config) as worker:
        yield worker


@pytest.fixture(scope="module")
async def channel(worker: Worker) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(worker.address) as channel:
        yield channel


@pytest.fixture
def stub(channel: grpc.aio.Channel, fake: FakeUpstream) -> Iterator[Stub]:
    fake.reset_records()
    yield Stub(channel)
    fake.reset_records()


def ask(*messages: pb.ModelMessage, model: str = "gpt", **fields: Any) -> pb.ModelRequest:
    return pb.ModelRequest(model=model, messages=list(messages) or [user("Hi")], **fields)


def sent(fake: FakeUpstream) -> dict[str, Any]:
    received: dict[str, Any] = fake.exchanges[-1].json()
    return received


def streamed_text(messages: list[pb.ModelOutput]) -> str:
    return "".join(message.text for message in messages)


# --- item 5: a refusal is the answer's text, finishing CONTENT_FILTER, on every provider ----------


async def test_an_openai_refusal_is_its_text_with_content_filter(
    stub: Stub, fake: FakeUpstream
) -> None:
    refusal_chunks = [
        chunk({"role": "assistant", "content": None, "refusal": None}),
        chunk({"refusal": "I'm sorry, "}),
        chunk({"refusal": "I cannot help with that."}),
        chunk({}, "stop"),
    ]
    fake.script(
        replied(completion({"content": None, "refusal": REFUSAL}, "stop", usage(12, 9))),
        streamed(refusal_chunks, usage_chunk(12, 9)),
    )
    schema = pb.OutputFormat(json_schema=pb.JsonSchema(name="answer", schema_json=WEATHER_SCHEMA))

    unary = await stub.Generate(ask(output_format=schema))
    stream = await collect(stub.GenerateStream(ask(output_format=schema)))

    assert (unary.text, unary.finish_reason) == (REFUSAL, pb.FINISH_REASON_CONTENT_FILTER)
    assert streamed_text(stream) == REFUSAL
    assert stream[-1].finish_reason == pb.FINISH_REASON_CONTENT_FILTER
    assert all(message.finish_reason == pb.FINISH_REASON_UNSPECIFIED for message in stream[:-1])


async def test_an_anthropic_refusal_is_its_text_with_content_filter(
    stub: Stub, fake: FakeUpstream
) -> None:
    """The same mapping as openai's: the turn's text, finishing CONTENT_FILTER."""
    content = [text_block(REFUSAL)]

    async def stream(exchange: Any, respond: Any) -> None:
        await send_stream(respond, claude_streamed(content, "refusal"))

    fake.script(replied(claude_message(content, "refusal")), stream)

    unary = await stub.Generate(ask(model="claude"))
    messages = await collect(stub.GenerateStream(ask(model="claude")))

    assert (unary.text, unary.finish_reason) == (REFUSAL, pb.FINISH_REASON_CONTENT_FILTER)
    assert streamed_text(messages) == REFUSAL
    assert messages[-1].finish_reason == pb.FINISH_REASON_CONTENT_FILTER


# --- item 6: "no arguments" is a closed object ---------------------------------------------------


async def test_a_tool_without_parameters_reaches_openai_as_a_closed_object(
    stub: Stub, fake: FakeUpstream
) -> None:
    await stub.Generate(ask(tools=[tool("get_time", strict=True)]))

    function = {"name": "get_time", "parameters": NO_ARGUMENTS, "strict": True}
    assert sent(fake)["tools"] == [{"type": "function", "function": function}]


async def test_a_tool_without_parameters_reaches_anthropic_as_a_closed_object(
    stub: Stub, fake: FakeUpstream
) -> None:
    await stub.Generate(ask(model="claude", tools=[tool("get_time")]))

    assert sent(fake)["tools"] == [{"name": "get_time", "input_schema": NO_ARGUMENTS}]


# --- item 8a: TOOL_CALLS only when calls came ----------------------------------------------------


async def test_finish_tool_calls_without_a_call_is_stop(stub: Stub, fake: FakeUpstream) -> None:
    fake.script(
        replied(completion({"content": "hi"}, "tool_calls", usage(5, 1))),
        streamed(text_chunks(["hi"], finish_reason="tool_calls"), usage_chunk(5, 1)),
    )

    unary = await stub.Generate(ask(tools=[tool("get_time")]))
    stream = await collect(stub.GenerateStream(ask(tools=[tool("get_time")])))

    assert (unary.text, list(unary.tool_calls)) == ("hi", [])
    assert unary.finish_reason == pb.FINISH_REASON_STOP
    assert streamed_text(stream) == "hi" and not any(message.tool_call_deltas for message in stream)
    assert stream[-1].finish_reason == pb.FINISH_REASON_STOP


# --- item 8b: parallel calls streamed at one index stay apart -------------------------------------


async def test_parallel_calls_sharing_index_0_are_separate_calls(
    stub: Stub, fake: FakeUpstream
) -> None:
    """Gemini's OpenAI endpoint: each call whole, all at index 0, each with its own id."""

    def whole(call_id: str, arguments: str) -> dict[str, Any]:
        function = {"name": "get_weather", "arguments": arguments}
        call = {"index": 0, "id": call_id, "type": "function", "function": function}
        return chunk({"tool_calls": [call]})

    paris, rome = whole("call_a", '{"city": "Paris"}'), whole("call_b", '{"city": "Rome"}')
    fake.script(streamed([paris, rome, chunk({}, "tool_calls")]))

    messages = await collect(stub.GenerateStream(ask(tools=[tool("get_weather", WEATHER_SCHEMA)])))

    deltas = [
        (d.index, d.id, d.name, d.arguments_delta) for m in messages for d in m.tool_call_deltas
    ]
    assert deltas == [
        (0, "call_a", "get_weather", '{"city": "Paris"}'),
        (1, "call_b", "get_weather", '{"city": "Rome"}'),
    ]
    assert messages[-1].finish_reason == pb.FINISH_REASON_TOOL_CALLS


async def test_a_new_id_on_a_known_index_then_its_arguments(stub: Stub, fake: FakeUpstream) -> None:
    """Pieces without an id after a new call follow that call; an index the upstream opens later
    keeps clear of the calls renumbered before it."""
    fake.script(
        streamed(
            [
                chunk(first_call_delta(0, "call_a", "get_weather", role=True)),
                chunk(arguments_delta(0, '{"city": "Paris"}')),
                chunk(first_call_delta(0, "call_b", "get_weather")),
                chunk(arguments_delta(0, '{"city": ')),
                chunk(arguments_delta(0, '"Rome"}')),
                chunk(first_call_delta(1, "call_c", "get_weather")),
                chunk(arguments_delta(1, '{"city": "Oslo"}')),
                chunk({}, "tool_calls"),
            ]
        )
    )

    messages = await collect(stub.GenerateStream(ask(tools=[tool("get_weather", WEATHER_SCHEMA)])))

    calls: dict[int, list[str]] = {}
    for message in messages:
        for delta in message.tool_call_deltas:
            calls.setdefault(delta.index, []).append(delta.id + delta.arguments_delta)
    assert {index: "".join(parts) for index, parts in calls.items()} == {
        0: 'call_a{"city": "Paris"}',
        1: 'call_b{"city": "Rome"}',
        2: 'call_c{"city": "Oslo"}',
    }


# --- item 8c: no name on OpenAI tool messages ----------------------------------------------------


def tool_turn(result_name: str) -> list[pb.ModelMessage]:
    call = pb.ToolCall(id="call_1", name="get_weather", arguments_json='{"city": "Paris"}')
    result = tool_result("call_1", '{"t": 21}')
    result.name = result_name
    turn = pb.ModelMessage(role=pb.ROLE_ASSISTANT, tool_calls=[call])
    return [user("Weather in Paris?"), turn, result]


async def test_a_tool_message_goes_to_openai_without_a_name(stub: Stub, fake: FakeUpstream) -> None:
    await stub.Generate(ask(*tool_turn("get_weather"), tools=[tool("get_weather", WEATHER_SCHEMA)]))

    result = {"role": "tool", "content": '{"t": 21}', "tool_call_id": "call_1"}
    assert sent(fake)["messages"][2] == result


async def test_a_tool_message_named_otherwise_than_its_call_is_refused(
    stub: Stub, fake: FakeUpstream
) -> None:
    request = ask(*tool_turn("get_time"), tools=[tool("get_weather", WEATHER_SCHEMA)])

    await assert_refused(stub.Generate(request), "messages[2].name", "gpt")
    count = pb.CountTokenRequest(model="gpt", messages=request.messages)
    await assert_refused(stub.CountToken(count), "messages[2].name", "gpt")
    assert fake.exchanges == []


# --- item 8d: CountToken refuses what Generate refuses --------------------------------------------


@pytest.mark.parametrize(
    ("model", "messages", "field"),
    [
        (
            "gpt",
            [user("Hi"), pb.ModelMessage(role=pb.ROLE_TOOL, content="21")],
            "messages[1].tool_call_id",
        ),
        (
            "claude",
            [pb.ModelMessage(role=pb.ROLE_USER, content="Hi", name="ann")],
            "messages[0].name",
        ),
    ],
    ids=["openai-tool-without-id", "anthropic-name"],
)
async def test_count_token_refuses_what_generate_refuses(
    stub: Stub, fake: FakeUpstream, model: str, messages: list[pb.ModelMessage], field: str
) -> None:
    await assert_refused(stub.Generate(ask(*messages, model=model)), field, model)
    count = pb.CountTokenRequest(model=model, messages=messages)
    await assert_refused(stub.CountToken(count), field, model)
    assert fake.exchanges == []


# --- item 8e: RequestContext in the access line --------------------------------------------------


async def test_request_context_reaches_the_access_line_bounded(
    stub: Stub, fake: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    metadata = {f"k{number:02d}": f"v{number}" for number in range(20)}
    metadata["k00"] = "line\nbreak\x1b[31m" + "x" * 300
    context = pb.RequestContext(request_id="rid-1", user="u-42", metadata=metadata)
    with caplog.at_level(logging.INFO, logger=ACCESS_LOGGER):
        await stub.Generate(ask(user("SECRET PROMPT TEXT"), context=context))

    (line,) = [record for record in caplog.records if record.name == ACCESS_LOGGER]
    logged = line.__dict__["context"]
    assert logged["request_id"] == "rid-1" and logged["user"] == "u-42"
    assert list(logged["metadata"]) == [f"k{number:02d}" for number in range(16)]
    assert logged["metadata_omitted"] == 4
    first = logged["metadata"]["k00"]
    assert first.startswith("line?break?[31m") and len(first) == 128 and first.isprintable()
    assert "SECRET" not in json.dumps(logged)
    assert sent(fake)["user"] == "u-42" and "metadata" not in sent(fake)


# --- item 8f: assistant_turn(output) of a reasoning model goes back to an OpenAI-compatible one ---


@pytest.mark.parametrize(
    ("model", "reasoning_back"),
    [("gpt", {}), ("deepseek", {"reasoning_content": "Paris: look it up."})],
    ids=["chat-completions", "reasoning_field"],
)
async def test_assistant_turn_of_a_reasoning_answer_goes_back(
    stub: Stub, fake: FakeUpstream, model: str, reasoning_back: dict[str, str]
) -> None:
    """The flow api.md documents: without `reasoning_field` the reasoning is left out (Chat
    Completions defines no field for it), with it the reasoning goes back in that field."""
    call = wire_call("call_1", "get_weather", '{"city": "Paris"}')
    answer = {"content": None, "reasoning_content": "Paris: look it up.", "tool_calls": [call]}
    fake.script(replied(completion(answer, "tool_calls")))
    weather = tool("get_weather", WEATHER_SCHEMA)
    question = user("Weather in Paris?")
    output = await stub.Generate(ask(question, model=model, tools=[weather]))
    assert output.reasoning == "Paris: look it up."

    result = tool_result("call_1", '{"t": 21}')
    await stub.Generate(ask(question, assistant_turn(output), result, model=model, tools=[weather]))

    turn = {"role": "assistant", "content": None, "tool_calls": [call], **reasoning_back}
    assert sent(fake)["messages"][1] == turn


# --- item 9: caller JSON nested past a fixed bound is refused at the edge -------------------------


def nested(depth: int) -> str:
    """A JSON object whose objects nest `depth` levels deep."""
    return '{"a": ' * (depth - 1) + "{}" + "}" * (depth - 1)


def nested_requests(depth: int) -> list[tuple[pb.ModelRequest, str]]:
    deep = nested(depth)
    call = pb.ToolCall(id="call_1", name="f", arguments_json=deep)
    f = tool("f")
    return [
        (
            ask(tools=[pb.Tool(name="f", parameters_json_schema=deep)]),
            "tools[0].parameters_json_schema",
        ),
        (
            ask(
                output_format=pb.OutputFormat(json_schema=pb.JsonSchema(name="o", schema_json=deep))
            ),
            "output_format.json_schema.schema_json",
        ),
        (
            ask(user("Hi"), pb.ModelMessage(role=pb.ROLE_ASSISTANT, tool_calls=[call]), tools=[f]),
            "messages[1].tool_calls[0].arguments_json",
        ),
    ]


@pytest.mark.parametrize("depth", [MAX_NESTING + 1, 100, 970])
@pytest.mark.parametrize("model", ["gpt", "claude"])
async def test_json_nested_past_the_bound_is_refused_by_field(
    stub: Stub, fake: FakeUpstream, depth: int, model: str
) -> None:
    for request, field in nested_requests(depth):
        request.model = model
        for call in (stub.Generate(request), collect(stub.GenerateStream(request))):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call
            assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
            violations = field_violations(refused.value)
            descriptions = [description for name, description in violations if name == field]
            assert descriptions and f"more than {MAX_NESTING} levels" in descriptions[0], violations
    assert fake.exchanges == []


async def test_json_nested_to_the_bound_is_sent(stub: Stub, fake: FakeUpstream) -> None:
    fake.default = either(completion({"content": "ok"}), text_chunks(["ok"]))
    for request, _ in nested_requests(MAX_NESTING):
        assert (await stub.Generate(request)).text == "ok"
    assert len(fake.exchanges) == 3
    (call,) = sent(fake)["messages"][1]["tool_calls"]
    assert call["function"]["arguments"] == nested(MAX_NESTING)

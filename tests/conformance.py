"""The contract's conformance cases, the same for every provider (issue 12).

Each case talks to a running worker over gRPC, as any caller would, and asserts on what the
contract promises: a tool call's name and arguments (parsed and validated against the tool's
schema), deltas that concatenate into those arguments, structured output that validates against
its schema, usage, embeddings, and a precise refusal (INVALID_ARGUMENT, a BadRequest violation
naming the field and the model) for whatever the model cannot honour.

A provider's test module supplies a `Target`: the stub and model to call, which cases the model
honours (the others must be refused), and a `prepare` hook that scripts a fake upstream's answer
for a case (real upstreams and the local model need none). Wire details (the bytes an upstream
received) are each provider's own tests; `Target.upstream_body` lets a case look at them.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import jsonschema
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from modelwire.v1 import worker_pb2 as pb
from modelwire.v1 import worker_pb2_grpc as pb_grpc


class Case(enum.Enum):
    TOOLS_UNARY = "tools_unary"
    TOOLS_STREAM = "tools_stream"
    TOOLS_TWO_TURN = "tools_two_turn"
    JSON_SCHEMA = "json_schema"
    JSON_OBJECT = "json_object"
    GRAMMAR = "grammar"
    IMAGE = "image"
    REASONING = "reasoning"
    PROMPT_CACHE = "prompt_cache"
    EMBED = "embed"


# Which request field each case needs the model to honour; a target that does not honour a case
# must refuse that field.
REFUSED_FIELD = {
    Case.TOOLS_UNARY: "tools",
    Case.TOOLS_STREAM: "tools",
    Case.TOOLS_TWO_TURN: "messages[1].tool_calls",
    Case.JSON_SCHEMA: "output_format",
    Case.JSON_OBJECT: "output_format",
    Case.GRAMMAR: "output_format.grammar",
    Case.IMAGE: "messages[0].parts[1].image",
    Case.REASONING: "reasoning",
    Case.PROMPT_CACHE: "messages[0].cache_breakpoint",
    Case.EMBED: "model",
}

WEATHER_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "minLength": 1},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
WEATHER_TOOL = pb.Tool(
    name="get_weather",
    description="The current weather in a city.",
    parameters_json_schema=json.dumps(WEATHER_SCHEMA),
)
TIME_TOOL = pb.Tool(
    name="get_time",
    description="The current time in a city.",
    parameters_json_schema='{"type": "object", "properties": {"city": {"type": "string"}}, '
    '"required": ["city"]}',
)
PERSON_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "languages": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
    },
    "required": ["name", "age", "languages"],
    "additionalProperties": False,
}
# 1x1 transparent PNG.
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c4890000000d4944415478da63f8cf"
    "c0f01f0005000201ffa2bdf5b10000000049454e44ae426082"
)
EMBED_TEXTS = ("The cat sat on the mat.", "Stock prices fell sharply on Monday.")


@dataclass
class Target:
    """One provider behind a running worker, as the conformance cases see it."""

    name: str
    stub: pb_grpc.ModelWorkerStub
    model: str
    honours: frozenset[Case]
    # Scripts a fake upstream's answer to the next request of `case`; real upstreams need none.
    prepare: Callable[[Case], Awaitable[None]] | None = None
    # The JSON body the upstream received last (fake upstreams), for cases that look at it.
    upstream_body: Callable[[], dict[str, Any]] | None = None
    # The model for Embed, when it is another model of the same worker.
    embed_model: str = ""
    max_new_tokens: int = 96
    extra: dict[str, Any] = field(default_factory=dict)

    async def ready(self, case: Case) -> None:
        if self.prepare is not None:
            await self.prepare(case)


def user(text: str) -> pb.ModelMessage:
    return pb.ModelMessage(role=pb.ROLE_USER, content=text)


def weather_request(target: Target, stream_hint: str = "") -> pb.ModelRequest:
    return pb.ModelRequest(
        model=target.model,
        messages=[user(f"What is the weather in Paris, in celsius?{stream_hint}")],
        tools=[WEATHER_TOOL],
        tool_choice=pb.ToolChoice(tool_name="get_weather"),
        sampling=pb.SamplingParams(temperature=0.0, max_new_tokens=target.max_new_tokens),
    )


def field_violations(error: grpc.aio.AioRpcError) -> list[tuple[str, str]]:
    """The BadRequest field violations of an error's status details."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, f"{error.code().name} without status details: {error.details()}"
    found: list[tuple[str, str]] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            found += [
                (violation.field, violation.description) for violation in bad.field_violations
            ]
    return found


async def assert_refused(call: Awaitable[Any], field_name: str, model: str) -> None:
    """INVALID_ARGUMENT, with a violation of exactly `field_name` whose description names
    `model`."""
    try:
        await call
    except grpc.aio.AioRpcError as error:
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details())
        violations = field_violations(error)
        matching = [description for name, description in violations if name == field_name]
        assert matching, f"no violation of {field_name!r} in {violations}"
        assert any(
            repr(model) in description or model in description for description in matching
        ), matching
        return
    raise AssertionError(f"{field_name} was accepted by {model}, which cannot honour it")


async def collect(stream: Any) -> list[pb.ModelOutput]:
    return [message async for message in stream]


def fold_stream(view: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """A stream's view (("reasoning", text), ("text", text), ("call", index, id, name, piece) in
    order) as coalescing may deliver it (core/coalesce.py): adjacent texts and reasonings joined,
    each run of tool-call pieces joined per index in the order the indices came. Equal for a
    stream however its deltas were merged."""
    folded: list[tuple[Any, ...]] = []
    calls: dict[int, list[Any]] = {}

    def end_calls() -> None:
        folded.extend(("call", index, *fields) for index, fields in calls.items())
        calls.clear()

    for item in view:
        if item[0] == "call":
            _, index, call_id, name, piece = item
            known = calls.setdefault(index, ["", "", ""])
            known[0], known[1] = known[0] or call_id, known[1] or name
            known[2] += piece
            continue
        end_calls()
        if folded and folded[-1][0] == item[0]:
            folded[-1] = (item[0], folded[-1][1] + item[1])
        else:
            folded.append(item)
    end_calls()
    return folded


def stream_view(messages: list[pb.ModelOutput]) -> list[tuple[Any, ...]]:
    """Each message's reasoning, text and tool-call pieces, in the order a message holds them."""
    view: list[tuple[Any, ...]] = []
    for output in messages:
        if output.HasField("reasoning") and output.reasoning:
            view.append(("reasoning", output.reasoning))
        if output.text:
            view.append(("text", output.text))
        view += (
            ("call", d.index, d.id, d.name, d.arguments_delta) for d in output.tool_call_deltas
        )
    return view


def assert_weather_call(call_name: str, arguments_json: str) -> dict[str, Any]:
    assert call_name == "get_weather"
    arguments = json.loads(arguments_json)
    jsonschema.validate(arguments, WEATHER_SCHEMA)
    return dict(arguments)


# --- the cases -----------------------------------------------------------------------------------


async def tools_unary(target: Target) -> None:
    await target.ready(Case.TOOLS_UNARY)
    output = await target.stub.Generate(weather_request(target))
    assert output.finish_reason == pb.FINISH_REASON_TOOL_CALLS, output
    assert len(output.tool_calls) == 1, output.tool_calls
    call = output.tool_calls[0]
    assert call.id, "a tool call carries the id its answer must quote"
    assert_weather_call(call.name, call.arguments_json)
    assert not output.tool_call_deltas
    assert output.usage.completion_tokens > 0


async def tools_stream(target: Target) -> None:
    await target.ready(Case.TOOLS_STREAM)
    messages = await collect(target.stub.GenerateStream(weather_request(target)))
    deltas = [delta for message in messages for delta in message.tool_call_deltas]
    assert deltas, messages
    assert all(not message.tool_calls for message in messages), (
        "a stream carries deltas, not whole calls"
    )
    by_index: dict[int, list[pb.ToolCallDelta]] = {}
    for delta in deltas:
        by_index.setdefault(delta.index, []).append(delta)
    assert sorted(by_index) == [0], by_index.keys()
    first, *rest = by_index[0]
    assert first.id and first.name == "get_weather", first
    assert all(not delta.id and not delta.name for delta in rest), (
        "id and name come only on a call's first delta"
    )
    assert_weather_call(first.name, "".join(delta.arguments_delta for delta in by_index[0]))
    last = messages[-1]
    assert last.finish_reason == pb.FINISH_REASON_TOOL_CALLS
    assert last.HasField("usage") and last.usage.completion_tokens > 0
    assert all(message.finish_reason == pb.FINISH_REASON_UNSPECIFIED for message in messages[:-1])


def two_turn_messages() -> list[pb.ModelMessage]:
    return [
        user("What is the weather in Paris, in celsius?"),
        pb.ModelMessage(
            role=pb.ROLE_ASSISTANT,
            tool_calls=[
                pb.ToolCall(
                    id="call_1",
                    name="get_weather",
                    arguments_json='{"city": "Paris", "unit": "celsius"}',
                )
            ],
        ),
        pb.ModelMessage(
            role=pb.ROLE_TOOL, tool_call_id="call_1", content='{"temperature": 21, "sky": "clear"}'
        ),
    ]


async def tools_two_turn(target: Target) -> None:
    """The answer to a tool result is text; tool_choice NONE lets every provider take the turn."""
    await target.ready(Case.TOOLS_TWO_TURN)
    output = await target.stub.Generate(
        pb.ModelRequest(
            model=target.model,
            messages=two_turn_messages(),
            tools=[WEATHER_TOOL],
            tool_choice=pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_NONE),
            sampling=pb.SamplingParams(temperature=0.0, max_new_tokens=target.max_new_tokens),
        )
    )
    assert output.text.strip(), output
    assert not output.tool_calls
    assert output.finish_reason in (pb.FINISH_REASON_STOP, pb.FINISH_REASON_LENGTH)


def person_request(target: Target, output_format: pb.OutputFormat) -> pb.ModelRequest:
    return pb.ModelRequest(
        model=target.model,
        messages=[
            user("Describe a fictional person as JSON: name, age and up to three languages.")
        ],
        output_format=output_format,
        sampling=pb.SamplingParams(temperature=0.0, max_new_tokens=target.max_new_tokens * 2),
    )


async def json_schema(target: Target) -> None:
    await target.ready(Case.JSON_SCHEMA)
    # Not strict: strict decoders (OpenAI, Anthropic) refuse some keywords the schema uses (minimum,
    # maxItems).
    schema = pb.JsonSchema(name="person", schema_json=json.dumps(PERSON_SCHEMA))
    for stream in (False, True):
        request = person_request(target, pb.OutputFormat(json_schema=schema))
        if stream:
            await target.ready(Case.JSON_SCHEMA)
            text = "".join(
                message.text for message in await collect(target.stub.GenerateStream(request))
            )
        else:
            text = (await target.stub.Generate(request)).text
        jsonschema.validate(json.loads(text), PERSON_SCHEMA)


async def json_object(target: Target) -> None:
    await target.ready(Case.JSON_OBJECT)
    output = await target.stub.Generate(person_request(target, pb.OutputFormat(json_object=True)))
    assert isinstance(json.loads(output.text), dict), output.text


GRAMMAR = 'root ::= "yes" | "no"'


async def grammar(target: Target) -> None:
    await target.ready(Case.GRAMMAR)
    output = await target.stub.Generate(
        pb.ModelRequest(
            model=target.model,
            messages=[user("Is the sky blue? Answer yes or no.")],
            output_format=pb.OutputFormat(grammar=GRAMMAR),
            sampling=pb.SamplingParams(temperature=0.8, seed=7, max_new_tokens=8),
        )
    )
    assert output.text in ("yes", "no"), output.text


def image_request(target: Target) -> pb.ModelRequest:
    return pb.ModelRequest(
        model=target.model,
        messages=[
            pb.ModelMessage(
                role=pb.ROLE_USER,
                parts=[
                    pb.ContentPart(text="What is in these images?"),
                    pb.ContentPart(image=pb.Image(data=PNG, mime_type="image/png")),
                    pb.ContentPart(image=pb.Image(url="https://example.com/cat.jpg")),
                ],
            )
        ],
        sampling=pb.SamplingParams(max_new_tokens=target.max_new_tokens),
    )


async def image(target: Target) -> None:
    await target.ready(Case.IMAGE)
    output = await target.stub.Generate(image_request(target))
    assert output.text


async def embed(target: Target) -> None:
    """Dimension, determinism, and a text's cosine with itself of 1."""
    await target.ready(Case.EMBED)
    model = target.embed_model or target.model
    first = await target.stub.Embed(pb.EmbedRequest(model=model, inputs=list(EMBED_TEXTS)))
    await target.ready(Case.EMBED)
    again = await target.stub.Embed(pb.EmbedRequest(model=model, inputs=list(EMBED_TEXTS)))
    assert first.model == model
    assert len(first.embeddings) == len(EMBED_TEXTS)
    dimension = len(first.embeddings[0].values)
    assert dimension > 0 and all(len(e.values) == dimension for e in first.embeddings)
    for one, two in zip(first.embeddings, again.embeddings, strict=True):
        assert math.isclose(cosine(one.values, two.values), 1.0, abs_tol=1e-5)
        assert math.isclose(cosine(one.values, one.values), 1.0, abs_tol=1e-6)
    assert cosine(first.embeddings[0].values, first.embeddings[1].values) < 0.999
    assert first.usage.prompt_tokens > 0


def cosine(a: Any, b: Any) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def refusal_request(target: Target, case: Case) -> Awaitable[Any]:
    """The call of `case` in the shape that names REFUSED_FIELD[case]."""
    stub, model = target.stub, target.model
    if case in (Case.TOOLS_UNARY, Case.TOOLS_STREAM):
        request = pb.ModelRequest(
            model=model, messages=[user("Weather in Paris?")], tools=[WEATHER_TOOL]
        )
        return (
            stub.Generate(request)
            if case is Case.TOOLS_UNARY
            else collect(stub.GenerateStream(request))
        )
    if case is Case.TOOLS_TWO_TURN:
        return stub.Generate(pb.ModelRequest(model=model, messages=two_turn_messages()))
    if case in (Case.JSON_SCHEMA, Case.JSON_OBJECT):
        output_format = (
            pb.OutputFormat(
                json_schema=pb.JsonSchema(name="person", schema_json=json.dumps(PERSON_SCHEMA))
            )
            if case is Case.JSON_SCHEMA
            else pb.OutputFormat(json_object=True)
        )
        return stub.Generate(person_request(target, output_format))
    if case is Case.GRAMMAR:
        return stub.Generate(
            pb.ModelRequest(
                model=model,
                messages=[user("Yes or no?")],
                output_format=pb.OutputFormat(grammar=GRAMMAR),
            )
        )
    if case is Case.IMAGE:
        return stub.Generate(image_request(target))
    if case is Case.REASONING:
        return stub.Generate(
            pb.ModelRequest(
                model=model,
                messages=[user("Think, then answer: 2 + 2?")],
                reasoning=pb.ReasoningOptions(effort=pb.REASONING_EFFORT_LOW, budget_tokens=1024),
            )
        )
    if case is Case.PROMPT_CACHE:
        return stub.Generate(
            pb.ModelRequest(
                model=model,
                messages=[pb.ModelMessage(role=pb.ROLE_USER, content="Hi", cache_breakpoint=True)],
            )
        )
    assert case is Case.EMBED
    return stub.Embed(pb.EmbedRequest(model=model, inputs=["hello"]))


async def refused(target: Target, case: Case) -> None:
    await assert_refused(refusal_request(target, case), REFUSED_FIELD[case], target.model)


# Cases that every honouring target runs the same way; REASONING and PROMPT_CACHE have no
# provider-independent success (what they produce is the upstream's), so their success is each
# provider's own test, and only their refusal is shared.
CASES: dict[Case, Callable[[Target], Awaitable[None]]] = {
    Case.TOOLS_UNARY: tools_unary,
    Case.TOOLS_STREAM: tools_stream,
    Case.TOOLS_TWO_TURN: tools_two_turn,
    Case.JSON_SCHEMA: json_schema,
    Case.JSON_OBJECT: json_object,
    Case.GRAMMAR: grammar,
    Case.IMAGE: image,
    Case.EMBED: embed,
}


def cases_for(honours: frozenset[Case]) -> list[Case]:
    """What a provider's module parametrizes over: every shared case it honours, and the refusal
    of every case it does not."""
    return [case for case in Case if case not in honours or case in CASES]


async def run_case(target: Target, case: Case) -> None:
    """The case if the target honours it, else its refusal."""
    if case in target.honours:
        await CASES[case](target)
    else:
        await refused(target, case)

"""Reading responses: a stream's deltas folded into the output Generate would have returned."""

from __future__ import annotations

from modelwire.v1 import worker_pb2 as pb


class OutputCollector:
    """Feed it every GenerateStream message (`add`); `output()` is then the whole answer: text and
    reasoning joined, tool-call deltas joined by index into complete `tool_calls` (id and name from
    a call's first delta, arguments concatenated), the signature joined, and the last message's
    finish_reason, usage, timing and model.

        collector = OutputCollector()
        async for chunk in client.stream(model, prompt, tools=[...]):
            print(chunk.text, end="")
            collector.add(chunk)
        calls = collector.output().tool_calls
    """

    def __init__(self) -> None:
        self._text: list[str] = []
        self._reasoning: list[str] | None = None
        self._signature: list[bytes] = []
        self._calls: dict[int, tuple[pb.ToolCall, list[str]]] = {}
        self._whole_calls: list[pb.ToolCall] = []
        self._last = pb.ModelOutput()

    def add(self, chunk: pb.ModelOutput) -> None:
        self._text.append(chunk.text)
        if chunk.HasField("reasoning"):
            if self._reasoning is None:
                self._reasoning = []
            self._reasoning.append(chunk.reasoning)
        if chunk.reasoning_signature:
            self._signature.append(chunk.reasoning_signature)
        for delta in chunk.tool_call_deltas:
            call, arguments = self._calls.setdefault(delta.index, (pb.ToolCall(), []))
            call.id = call.id or delta.id
            call.name = call.name or delta.name
            arguments.append(delta.arguments_delta)
        # A stream carries deltas; whole calls are kept too, should a server send them.
        self._whole_calls.extend(chunk.tool_calls)
        self._last = chunk

    def output(self) -> pb.ModelOutput:
        last = self._last
        output = pb.ModelOutput(
            text="".join(self._text),
            finish_reason=last.finish_reason,
            model=last.model,
            tool_calls=self._whole_calls
            + [
                pb.ToolCall(id=call.id, name=call.name, arguments_json="".join(arguments))
                for call, arguments in (self._calls[index] for index in sorted(self._calls))
            ],
            reasoning_signature=b"".join(self._signature),
        )
        if self._reasoning is not None:
            output.reasoning = "".join(self._reasoning)
        if last.HasField("usage"):
            output.usage.CopyFrom(last.usage)
        if last.HasField("timing"):
            output.timing.CopyFrom(last.timing)
        return output

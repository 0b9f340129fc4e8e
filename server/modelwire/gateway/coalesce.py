"""The gateway's side of coalesced deltas (core/coalesce.py): a worker's messages that are waiting
when the caller's side is ready for the next go to the caller as one.

The gateway passes messages on as bytes; only a backlog is decoded, merged by the same rules as
the worker's and encoded again. A message this gateway's contract cannot read back exactly (a newer
worker's field or finish reason) is never merged: the batch passes as it came.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NoReturn

import grpc

from modelwire.core.coalesce import coalesce_outputs
from modelwire.core.types import ModelOutput
from modelwire.rpc.wire import Metadata
from modelwire.v1 import worker_pb2 as pb
from modelwire.worker.convert import output_from_pb, output_to_pb


def merge_messages(raw: list[bytes]) -> Sequence[bytes]:
    """Serialized ModelOutput messages of one stream, as few as `coalesce_outputs` allows."""
    outputs: list[ModelOutput] = []
    model = ""
    for data in raw:
        message = pb.ModelOutput.FromString(data)
        model = model or message.model
        output = output_from_pb(message)
        if output_to_pb(output, message.model).SerializeToString() != data:
            return raw
        outputs.append(output)
    return [output_to_pb(output, model).SerializeToString() for output in coalesce_outputs(outputs)]


class HeldAbort(Exception):
    """A worker's failure read ahead of the caller, carried behind the messages read before it."""

    def __init__(self, code: grpc.StatusCode, details: str, trailing_metadata: Metadata) -> None:
        super().__init__(details)
        self.code, self.details, self.trailing_metadata = code, details, trailing_metadata


class AbortAfterMessages:
    """The caller's call as forwarding sees it, except that an abort is raised as HeldAbort: a
    read-ahead task's abort would send the status at once, before messages still waiting."""

    def __init__(self, context: grpc.aio.ServicerContext) -> None:
        self._context = context

    def time_remaining(self) -> float | None:
        remaining: float | None = self._context.time_remaining()
        return remaining

    def invocation_metadata(self) -> Sequence[tuple[str, str | bytes]] | None:
        metadata: Sequence[tuple[str, str | bytes]] | None = self._context.invocation_metadata()
        return metadata

    async def send_initial_metadata(self, initial_metadata: Metadata) -> None:
        await self._context.send_initial_metadata(initial_metadata)

    def set_trailing_metadata(self, trailing_metadata: Metadata) -> None:
        self._context.set_trailing_metadata(trailing_metadata)

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: Metadata = ()
    ) -> NoReturn:
        raise HeldAbort(code, details, trailing_metadata)

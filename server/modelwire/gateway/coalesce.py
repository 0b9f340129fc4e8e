"""The gateway's side of coalesced deltas (core/coalesce.py): a worker's messages that are waiting
when the caller's side is ready for the next go to the caller as one.

The gateway passes messages on as bytes; only a backlog is decoded, merged by the same rules as
the worker's and encoded again. A message this gateway's contract cannot read back exactly (a newer
worker's field or finish reason) is never merged: the batch passes as it came.
"""

from __future__ import annotations

from collections.abc import Sequence

from modelwire.core.coalesce import coalesce_outputs
from modelwire.core.types import ModelOutput
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

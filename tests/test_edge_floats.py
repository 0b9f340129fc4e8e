"""The contract's sampling values are 32-bit floats, read once at the edge (worker/convert.py):
what a provider sends is the decimal the caller wrote, and what validation and the local model see
is exactly the float32 that was sent, never a neighbour."""

from __future__ import annotations

import struct

import pytest

from modelwire.core.errors import InvalidRequest
from modelwire.core.settings import RequestLimits
from modelwire.v1 import worker_pb2 as pb
from modelwire.worker.convert import request_from_pb
from modelwire.worker.validation import validate_request


def _float32(value: float) -> float:
    unpacked: float = struct.unpack("<f", struct.pack("<f", value))[0]
    return unpacked


def _read(**sampling: float) -> pb.ModelRequest:
    return pb.ModelRequest(
        model="m",
        messages=[pb.ModelMessage(role=pb.ROLE_USER, content="hi")],
        sampling=pb.SamplingParams(**sampling),
    )


@pytest.mark.parametrize("written", [0.9, 0.7, 0.95, 1e-7, 0.0, 1.5, 0.123456789, 76.703445])
def test_a_value_is_the_shortest_decimal_of_the_float32_sent(written: float) -> None:
    read = request_from_pb(_read(temperature=written), RequestLimits()).sampling.temperature
    assert read is not None
    assert _float32(read) == _float32(written)  # the same float32: nothing moved
    assert len(repr(read)) <= len(repr(_float32(written)))
    if len(repr(written)) <= 9:  # what a caller writes comes back as written
        assert read == written


@pytest.mark.parametrize(
    ("field", "sent"),
    [
        ("temperature", 2.0000002),
        ("temperature", 2.0000005),
        ("top_p", 1.0000001),
        ("presence_penalty", -2.0000002),
        ("frequency_penalty", 2.0000002),
    ],
)
def test_a_float32_just_past_a_bound_is_refused_as_sent(field: str, sent: float) -> None:
    """Rounding to seven digits read 2.0000002 as 2 and let it through."""
    request = request_from_pb(_read(**{field: sent}), RequestLimits())
    with pytest.raises(InvalidRequest) as refused:
        validate_request(request, RequestLimits())
    assert [violation.field for violation in refused.value.violations] == [f"sampling.{field}"]

"""The paced-streams benchmark's own logic (bench/paced.py, bench/instant_upstream.py --pace,
bench/pacedload, the verdict table of bench/report.py): what it computes, never how fast anything
is."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import instant_upstream  # noqa: E402
import paced  # noqa: E402
import report  # noqa: E402


def _row(streams: int, p99: float | None) -> dict[str, Any]:
    return {"streams": streams, "added_gap_ms": None if p99 is None else {"p99": p99}}


def test_first_over_is_the_smallest_count_above_the_threshold() -> None:
    rows = [_row(2000, 40.0), _row(500, 2.0), _row(1000, 12.0)]
    assert paced.first_over(rows, 10.0) == 1000
    assert paced.first_over([_row(500, 2.0), _row(1000, 9.9)], 10.0) is None
    # A row that delivered no gap at all did not hold the threshold.
    assert paced.first_over([_row(500, 2.0), _row(1000, None)], 10.0) == 1000


async def _exchange(port: int, requests: bytes) -> bytes:
    """Sends `requests` in one write and reads until the server has answered them all (the last
    answer ends a chunked stream)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(requests)
    data = b""
    while not data.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n"):
        chunk = await asyncio.wait_for(reader.read(65536), 10)
        assert chunk, data
        data += chunk
    writer.close()
    return data


def _post(body: dict[str, Any]) -> bytes:
    raw = json.dumps(body).encode()
    return b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (len(raw), raw)


async def test_paced_upstream_stamps_each_token_and_answers_in_order() -> None:
    answers = instant_upstream.Answers(100, "hello ")
    # 10,000 tokens/s: the test waits 1 ms in all; it checks what is sent, not when.
    pacer = instant_upstream.Paced(10_000, 100)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: instant_upstream.InstantProtocol(answers, pacer), "127.0.0.1", 0
    )
    port = server.sockets[0].getsockname()[1]
    unary = {"model": "m", "messages": [], "stream": False}
    stream = {**unary, "stream": True, "max_tokens": 5, "stream_options": {"include_usage": True}}
    try:
        # A paced stream, then a unary call pipelined behind it, then a stream again.
        data = await _exchange(port, _post(stream) + _post(unary) + _post(stream))
    finally:
        server.close()
    first, rest = data.split(b"0\r\n\r\n", 1)
    unary_answer = answers.get("m", False, False)
    assert rest.startswith(unary_answer), "the unary answer waits for the stream before it"
    for answer in (first, rest[len(unary_answer) :]):
        events = [
            json.loads(line[6:])
            for line in answer.decode().split("\n")
            if line.startswith("data: {")
        ]
        texts = [e["choices"][0]["delta"].get("content") for e in events if e["choices"]]
        stamps = [int(text[1:-1]) for text in texts if text]
        assert [instant_upstream.stamp_text(stamp) for stamp in stamps] == [t for t in texts if t]
        assert len(stamps) == 5 and stamps == sorted(stamps)
        assert events[-1]["usage"]["completion_tokens"] == 5
        assert b"data: [DONE]" in answer


def test_paced_frames_are_the_instant_stream_cut_around_the_stamp() -> None:
    """One renderer for both modes: a paced stream whose stamps were all 7 is byte for byte the
    instant stream of "t7 " deltas."""
    frames = instant_upstream.Paced(20, 3).frames("m", 3, True)
    token = frames.before + b"7" + frames.after
    paced_bytes = frames.head + (b"%x\r\n%s\r\n" % (len(token), token)) * 3 + frames.tail
    assert paced_bytes == instant_upstream.Answers(3, "t7 ").get("m", True, True)


def test_pacedload_gap_and_stamp_logic() -> None:
    """bench/pacedload's Go tests: gaps from stamps, coalesced messages, the window, percentiles."""
    go = shutil.which("go")
    if go is None:
        pytest.fail("Go is not installed: bench/pacedload is Go (README, 'Test')")
    done = subprocess.run(
        [go, "test", "./..."], cwd=BENCH / "pacedload", capture_output=True, text=True, timeout=280
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _paced_row(target: str, streams: int, cpu_us: float, p99: float) -> dict[str, Any]:
    return {
        "target": target,
        "streams": streams,
        "cpu_us_per_token": cpu_us,
        "added_gap_ms": {"p50": 0.1, "p99": p99},
        "errors": 0,
    }


def test_verdicts_judge_the_paced_rows_as_ratios() -> None:
    run_report = {
        "rows": [],
        "paced": {
            "rows": [
                _paced_row("modelwire", 1000, 30.0, 6.0),
                _paced_row("litellm", 1000, 400.0, 90.0),
                _paced_row("modelwire", 500, 1.0, 1.0),
            ]
        },
    }
    found = {v["path"]: v for v in report.verdicts(run_report)}
    cpu = next(v for path, v in found.items() if "CPU per delivered token" in path)
    assert cpu["met"] is True and cpu["measured"] == "1/13.3"
    p99 = next(v for path, v in found.items() if "p99 at 1,000" in path)
    assert p99["met"] is False and p99["measured"] == "6.00 ms"
    others = [v for v in found.values() if v not in (cpu, p99)]
    assert others and all(v["met"] is None for v in others)


async def test_the_paced_floors_relay_stamped_tokens_and_the_usage() -> None:
    """bench/paced.py's two floors answer as pacedload reads them: as many stamped deltas as the
    request's max_new_tokens, in order, then the usage; sse_floor.py by relaying the paced
    upstream's events one message each."""
    import grpc

    import echo_floor
    import sse_floor
    from modelwire.v1 import worker_pb2 as pb
    from modelwire.v1 import worker_pb2_grpc as pb_grpc

    loop = asyncio.get_running_loop()
    upstream = await loop.create_server(
        lambda: instant_upstream.InstantProtocol(
            instant_upstream.Answers(100, "hello "), instant_upstream.Paced(10_000, 100)
        ),
        "127.0.0.1",
        0,
    )
    upstream_url = f"http://127.0.0.1:{upstream.sockets[0].getsockname()[1]}"
    stamped = echo_floor.FloorServicer("m", 100, "hello ", interval_s=0.0, stamp=True)
    relay = sse_floor.RelayServicer(upstream_url)
    request = pb.ModelRequest(
        model="m",
        messages=[pb.ModelMessage(role=pb.ROLE_USER, content="hi")],
        sampling=pb.SamplingParams(max_new_tokens=5),
    )
    try:
        for servicer in (stamped, relay):
            server = grpc.aio.server()
            pb_grpc.add_ModelWorkerServicer_to_server(servicer, server)
            port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                messages = [
                    message
                    async for message in pb_grpc.ModelWorkerStub(channel).GenerateStream(request)
                ]
            await server.stop(None)
            texts = [message.text for message in messages[:-1]]
            stamps = [int(text[1:-1]) for text in texts]
            assert texts == [instant_upstream.stamp_text(stamp) for stamp in stamps]
            assert len(stamps) == 5 and stamps == sorted(stamps), type(servicer).__name__
            assert messages[-1].usage.completion_tokens == 5
            assert messages[-1].finish_reason == pb.FINISH_REASON_STOP
    finally:
        upstream.close()
        if relay._session is not None:
            await relay._session.close()

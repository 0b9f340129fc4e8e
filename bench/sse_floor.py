"""The paced streams' floor for a gateway: a bare grpc.aio server whose `GenerateStream` relays an
OpenAI-compatible upstream's server-sent events with aiohttp, one gRPC message per event, with
none of modelwire's layers (no admission, retries, conversion, coalescing, metrics, logging,
limits, context check).

What it costs per token is what grpc.aio and aiohttp themselves cost to carry a paced token from
an HTTP stream to a gRPC one, the least a Python gateway built on them can cost; bench/paced.py
puts it in front of the paced upstream beside `modelwire` and LiteLLM. `Generate` is relayed too
(the harness's readiness check calls it); the other methods are not served.

    python bench/sse_floor.py --port 8903 --upstream http://127.0.0.1:8900

Prints "sse floor on HOST:PORT" when it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import grpc

from floor_listen import listen
from modelwire.v1 import worker_pb2 as pb
from modelwire.v1 import worker_pb2_grpc as pb_grpc

_ROLES = {pb.ROLE_SYSTEM: "system", pb.ROLE_USER: "user", pb.ROLE_ASSISTANT: "assistant"}


class RelayServicer(pb_grpc.ModelWorkerServicer):  # type: ignore[misc]
    def __init__(self, upstream: str) -> None:
        self._url = upstream.rstrip("/") + "/v1/chat/completions"
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:  # made on the server's loop, with no limit on connections
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        return self._session

    async def Generate(
        self, request: pb.ModelRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelOutput:
        async with self._http().post(self._url, json=_body(request, stream=False)) as response:
            answer = json.loads(await response.read())
        return pb.ModelOutput(
            text=answer["choices"][0]["message"]["content"],
            finish_reason=pb.FINISH_REASON_STOP,
            usage=_usage(answer["usage"]),
            model=request.model,
        )

    async def GenerateStream(
        self, request: pb.ModelRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ModelOutput]:
        body = _body(request, stream=True)
        finish = pb.FINISH_REASON_UNSPECIFIED
        async with self._http().post(self._url, json=body) as response:
            async for line in response.content:
                if not line.startswith(b"data: "):
                    continue
                data = line[6:].strip()
                if data == b"[DONE]":
                    break
                event = json.loads(data)
                for choice in event.get("choices") or ():
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        yield pb.ModelOutput(text=text, model=request.model)
                    if choice.get("finish_reason"):
                        finish = pb.FINISH_REASON_STOP
                usage = event.get("usage")
                if usage:
                    yield pb.ModelOutput(
                        finish_reason=finish, usage=_usage(usage), model=request.model
                    )


def _body(request: pb.ModelRequest, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": request.model,
        "messages": [
            {"role": _ROLES.get(message.role, "user"), "content": message.content}
            for message in request.messages
        ],
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    if request.sampling.HasField("max_new_tokens"):
        body["max_tokens"] = request.sampling.max_new_tokens
    return body


def _usage(usage: dict[str, int]) -> pb.Usage:
    return pb.Usage(
        prompt_tokens=usage["prompt_tokens"],
        completion_tokens=usage["completion_tokens"],
        total_tokens=usage["total_tokens"],
    )


async def serve(host: str, port: int, upstream: str) -> None:
    server = grpc.aio.server()
    pb_grpc.add_ModelWorkerServicer_to_server(RelayServicer(upstream), server)
    await listen(server, host, port, "sse floor")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8903)
    parser.add_argument("--upstream", required=True, help="http://HOST:PORT")
    args = parser.parse_args()
    try:
        asyncio.run(serve(args.host, args.port, args.upstream))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()

"""Async client over grpc.aio."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import Unpack

import grpc

from modelwire.client.credentials import call_metadata
from modelwire.client.errors import from_rpc_error
from modelwire.client.requests import (
    Messages,
    RequestOptions,
    build_request,
    count_request,
    embed_request,
)
from modelwire.v1 import worker_pb2 as pb
from modelwire.v1 import worker_pb2_grpc as pb_grpc


class ModelWorkerClient:
    """`timeout` is each call's deadline in seconds unless the call passes its own."""

    def __init__(
        self,
        address: str,
        *,
        timeout: float | None = 120.0,
        credentials: grpc.ChannelCredentials | None = None,
        token: str | None = None,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> None:
        """`credentials`: TLS (see `tls_credentials`); `token`: a bearer token sent on every call;
        `metadata`: more pairs sent on every call, such as ("x-request-id", …)."""
        self._metadata = call_metadata(token, metadata)
        self._channel = (
            grpc.aio.secure_channel(address, credentials)
            if credentials
            else grpc.aio.insecure_channel(address)
        )
        self._stub = pb_grpc.ModelWorkerStub(self._channel)
        self._timeout = timeout
        self._secure = credentials is not None

    async def __aenter__(self) -> ModelWorkerClient:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def generate(
        self,
        model: str,
        messages: Messages,
        *,
        timeout: float | None = None,
        **options: Unpack[RequestOptions],
    ) -> pb.ModelOutput:
        """`options`: sampling (temperature, top_p, max_new_tokens, stop, seed), request_id, tools,
        tool_choice, parallel_tool_calls, output_format, reasoning_effort, reasoning_budget_tokens
        (`RequestOptions`). The tools the model called are `tool_calls`."""
        try:
            output: pb.ModelOutput = await self._stub.Generate(
                build_request(model, messages, **options),
                timeout=timeout or self._timeout,
                metadata=self._metadata,
            )
            return output
        except grpc.RpcError as error:
            raise from_rpc_error(error, self._secure) from None

    async def stream(
        self,
        model: str,
        messages: Messages,
        *,
        timeout: float | None = None,
        **options: Unpack[RequestOptions],
    ) -> AsyncIterator[pb.ModelOutput]:
        """Yields deltas; leaving the loop early cancels the call and the worker stops
        generating."""
        call = self._stub.GenerateStream(
            build_request(model, messages, **options),
            timeout=timeout or self._timeout,
            metadata=self._metadata,
        )
        try:
            async for chunk in call:
                yield chunk
        except grpc.RpcError as error:
            raise from_rpc_error(error, self._secure) from None
        finally:
            call.cancel()

    async def count_tokens(
        self, model: str, messages: Messages, *, timeout: float | None = None
    ) -> pb.CountTokenResponse:
        try:
            response: pb.CountTokenResponse = await self._stub.CountToken(
                count_request(model, messages),
                timeout=timeout or self._timeout,
                metadata=self._metadata,
            )
            return response
        except grpc.RpcError as error:
            raise from_rpc_error(error, self._secure) from None

    async def embed(
        self,
        model: str,
        inputs: str | Sequence[str],
        dimensions: int | None = None,
        *,
        timeout: float | None = None,
    ) -> pb.EmbedResponse:
        """One embedding per input, in order, from a model with CAPABILITY_EMBEDDINGS; a single
        string is one input."""
        try:
            response: pb.EmbedResponse = await self._stub.Embed(
                embed_request(model, inputs, dimensions),
                timeout=timeout or self._timeout,
                metadata=self._metadata,
            )
            return response
        except grpc.RpcError as error:
            raise from_rpc_error(error, self._secure) from None

    async def list_models(self, *, timeout: float | None = None) -> list[pb.ModelMetadata]:
        try:
            response = await self._stub.ListModels(
                pb.ListModelsRequest(), timeout=timeout or self._timeout, metadata=self._metadata
            )
        except grpc.RpcError as error:
            raise from_rpc_error(error, self._secure) from None
        return list(response.models)

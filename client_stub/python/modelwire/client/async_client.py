"""Async client over grpc.aio."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from types import TracebackType
from typing import Any, Literal, Unpack, overload

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
from modelwire.client.responses import RateLimits
from modelwire.v1 import usage_pb2, usage_pb2_grpc
from modelwire.v1 import worker_pb2 as pb
from modelwire.v1 import worker_pb2_grpc as pb_grpc

# Any, as pyproject's mypy overrides make the worker's and the controller's generated gRPC modules
# (this one, not listed there, is untyped code: a call to it would fail strict mypy).
_UsageAdminStub: Any = usage_pb2_grpc.UsageAdminStub


class OutputStream(AsyncIterator[pb.ModelOutput]):
    """A GenerateStream call (`ModelWorkerClient.stream`): `async for` yields its deltas, and
    `await rate_limits()` its rate-limit headers, before the first delta, during or after the loop.
    The call starts at the first of these; leaving the loop early, or `aclose()`, cancels it and
    the worker stops generating. An error is raised by the loop, as `ModelwireCallError`."""

    def __init__(self, start: Callable[[], Any], secure: bool) -> None:
        self._start = start
        self._secure = secure
        self._call: Any = None
        self._chunks: AsyncGenerator[pb.ModelOutput, None] | None = None

    def _started(self) -> Any:
        if self._call is None:
            self._call = self._start()
        return self._call

    def __aiter__(self) -> OutputStream:
        return self

    async def __anext__(self) -> pb.ModelOutput:
        if self._chunks is None:
            self._chunks = _chunks(self._started(), self._secure)
        return await anext(self._chunks)

    async def rate_limits(self) -> RateLimits:
        """The call's rate-limit headers, once the worker has sent its response headers (at the
        latest with the first delta); all None when it sent none, also when the call failed first
        (the loop raises the error)."""
        return RateLimits.from_metadata(await self._started().initial_metadata())

    async def aclose(self) -> None:
        """Cancels the call, if it is still running."""
        if self._chunks is not None:
            await self._chunks.aclose()
        if self._call is not None:
            self._call.cancel()


async def _chunks(call: Any, secure: bool) -> AsyncGenerator[pb.ModelOutput, None]:
    # A function of its own, not a method: a generator holding its OutputStream would make a cycle,
    # and a stream left early would be cancelled only by the cycle collector, not when dropped.
    try:
        async for chunk in call:
            yield chunk
    except grpc.RpcError as error:
        raise from_rpc_error(error, secure) from None
    finally:
        call.cancel()


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
        self._usage_stub = _UsageAdminStub(self._channel)
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

    @overload
    async def generate(
        self,
        model: str,
        messages: Messages,
        *,
        timeout: float | None = None,
        with_rate_limits: Literal[False] = False,
        **options: Unpack[RequestOptions],
    ) -> pb.ModelOutput: ...

    @overload
    async def generate(
        self,
        model: str,
        messages: Messages,
        *,
        timeout: float | None = None,
        with_rate_limits: Literal[True],
        **options: Unpack[RequestOptions],
    ) -> tuple[pb.ModelOutput, RateLimits]: ...

    @overload
    async def generate(
        self,
        model: str,
        messages: Messages,
        *,
        timeout: float | None = None,
        with_rate_limits: bool,
        **options: Unpack[RequestOptions],
    ) -> pb.ModelOutput | tuple[pb.ModelOutput, RateLimits]: ...

    async def generate(
        self,
        model: str,
        messages: Messages,
        *,
        timeout: float | None = None,
        with_rate_limits: bool = False,
        **options: Unpack[RequestOptions],
    ) -> pb.ModelOutput | tuple[pb.ModelOutput, RateLimits]:
        """`options`: sampling (temperature, top_p, max_new_tokens, stop, seed), request_id, tools,
        tool_choice, parallel_tool_calls, output_format, reasoning_effort, reasoning_budget_tokens
        (`RequestOptions`). The tools the model called are `tool_calls`. `with_rate_limits`:
        return (output, the call's `RateLimits`) instead of the output alone."""
        try:
            call = self._stub.Generate(
                build_request(model, messages, **options),
                timeout=timeout or self._timeout,
                metadata=self._metadata,
            )
            output: pb.ModelOutput = await call
        except grpc.RpcError as error:
            raise from_rpc_error(error, self._secure) from None
        if with_rate_limits:
            return output, RateLimits.from_metadata(await call.initial_metadata())
        return output

    def stream(
        self,
        model: str,
        messages: Messages,
        *,
        timeout: float | None = None,
        **options: Unpack[RequestOptions],
    ) -> OutputStream:
        """Yields deltas (`async for`); leaving the loop early cancels the call and the worker
        stops generating. `await stream.rate_limits()` is the call's `RateLimits`."""
        return OutputStream(
            lambda: self._stub.GenerateStream(
                build_request(model, messages, **options),
                timeout=timeout or self._timeout,
                metadata=self._metadata,
            ),
            self._secure,
        )

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

    async def usage(
        self, tenant: str | None = None, *, timeout: float | None = None
    ) -> usage_pb2.GetUsageResponse:
        """UsageAdmin.GetUsage: what `tenant` (None: every tenant the worker's configuration names)
        has used against the worker's [quota] rules; needs a token with `read_usage`."""
        try:
            response: usage_pb2.GetUsageResponse = await self._usage_stub.GetUsage(
                usage_pb2.GetUsageRequest(tenant=tenant or ""),
                timeout=timeout or self._timeout,
                metadata=self._metadata,
            )
            return response
        except grpc.RpcError as error:
            raise from_rpc_error(error, self._secure) from None

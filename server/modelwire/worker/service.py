"""The generation path in domain terms: find the model, check the request, admit it, time it.

The servicer calls this and only translates; nothing here knows grpc or protobuf.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import replace
from types import TracebackType
from typing import TypeVar

from modelwire.core.balance import LeastLoaded, PickPolicy
from modelwire.core.errors import (
    ContextLengthExceeded,
    FieldViolation,
    InvalidRequest,
    ModelNotFound,
    ModelwireError,
    UpstreamUnavailable,
)
from modelwire.core.redaction import remember_request_text
from modelwire.core.settings import Prices, RequestLimits
from modelwire.core.types import (
    Embeddings,
    EmbedRequest,
    FinishReason,
    GrammarFormat,
    JsonSchemaFormat,
    ModelMessage,
    ModelMetadata,
    ModelOutput,
    ModelRequest,
    Started,
    Timing,
    TokenCount,
    ToolCall,
    ToolCallDelta,
    Usage,
    merge_tool_call_deltas,
)
from modelwire.observe.call_record import note_answered_by
from modelwire.observe.tracing import upstream_span
from modelwire.quota.limiter import Limiter
from modelwire.tokenize.placement import counts_inline
from modelwire.worker.capabilities import (
    unsupported_embedding,
    unsupported_fields,
    unsupported_message_fields,
)
from modelwire.worker.deployments import ServedModel, Target, build_targets
from modelwire.worker.failover import AttemptClock, Failover, first_content, timed_out
from modelwire.worker.metering import CHARS_PER_TOKEN, CallMeter
from modelwire.worker.validation import (
    broken_tool_call,
    validate_count_input,
    validate_embed_request,
    validate_request,
)

# A request that names its model (ModelRequest, EmbedRequest).
_Named = TypeVar("_Named", ModelRequest, EmbedRequest)


class WorkerService:
    def __init__(
        self,
        models: Sequence[ServedModel],
        limits: RequestLimits,
        limiter: Limiter | None = None,
        default_output_reservation: int = 1024,
        targets: Mapping[str, Target] | None = None,
        policy: PickPolicy | None = None,
    ) -> None:
        """`limiter`: the tenants' limits and the models' prices (None: no [quota] rules and no
        prices). `default_output_reservation`: the output a call that sets no max_new_tokens
        reserves against its token limits. `targets`: the names callers use (None: each model,
        no routes); `policy`: how one of a model's deployments is picked."""
        self.targets = dict(targets) if targets is not None else build_targets(models, (), None)
        self.limits = limits
        self.limiter = limiter
        self.default_output_reservation = default_output_reservation
        self._policy = policy or LeastLoaded()
        # Told (model, deployment, outcome) of each attempt of a call with a choice (metrics).
        self.on_attempt: Callable[[str, str, str], None] | None = None

    def list_models(self) -> list[ModelMetadata]:
        """Each model (its deployments as one) and each route, with the configured prices."""
        return [
            target.metadata
            if target.route
            else replace(target.metadata, prices=self._prices(target.name))
            for target in self.targets.values()
        ]

    def _prices(self, model: str) -> Prices | None:
        return self.limiter.prices(model) if self.limiter is not None else None

    def target(self, model: str) -> Target:
        try:
            return self.targets[model]
        except KeyError:
            raise ModelNotFound(model, sorted(self.targets)) from None

    async def count_token(self, model: str, prompt: str | Sequence[ModelMessage]) -> TokenCount:
        """A short prompt is counted at once; a long one is work on the pool and waits for a slot.
        Messages are refused as Generate refuses them: capabilities, then the provider's rules.
        Counting reaches no paid API and uses no quota. A route's count is its first member's
        that accepts the messages (the model tried first)."""
        validate_count_input(model, prompt, self.limits)
        remember_request_text([prompt] if isinstance(prompt, str) else _message_texts(prompt))
        target = self.target(model)

        def refusals(served: ServedModel) -> list[FieldViolation]:
            if isinstance(prompt, str):
                return []
            return unsupported_message_fields(prompt, served.metadata) or served.client.unsupported(
                ModelRequest(model=served.model, messages=tuple(prompt))
            )

        refused: list[FieldViolation] = []
        for served in target.deployments:
            violations = refusals(served)
            if not violations:
                break
            refused = refused or violations
        else:
            raise InvalidRequest(refused)
        if counts_inline(prompt):
            return await served.client.count_token(served.model, prompt)
        async with served.admission.slot():
            return await served.client.count_token(served.model, prompt)

    async def embed(
        self, request: EmbedRequest, started: Started | None = None, tenant: str | None = None
    ) -> Embeddings:
        """An embedding's inputs are not counted before the call: it reserves a token per
        CHARS_PER_TOKEN characters of them, and is settled to the provider's usage. A route or a
        model's deployments fail over as a unary generation does."""
        validate_embed_request(request, self.limits)
        remember_request_text(request.inputs)
        target = self.target(request.model)

        def refusals(served: ServedModel) -> list[FieldViolation]:
            return unsupported_embedding(
                request, served.metadata
            ) or served.client.unsupported_embedding(_for(request, served))

        failover = Failover(target, self._policy, started, refusals, self.on_attempt)
        for served in failover.candidates():
            attempt = _for(request, served)
            try:
                async with served.admission.slot():
                    estimate = math.ceil(
                        sum(len(text) for text in request.inputs) / CHARS_PER_TOKEN
                    )
                    meter = await self._meter(
                        served, tenant, failover.started, estimate, estimate, 0, 0, False
                    )
                    with meter:
                        with upstream_span(served.metadata.provider, served.model):
                            async with asyncio.timeout(target.attempt_timeout_s):
                                embeddings = await served.client.embed(attempt)
                        meter.reported(embeddings.usage)
            except BaseException as error:
                failover.failed(served, timed_out(error, target.attempt_timeout_s))
                continue
            failover.answered(served)
            note_answered_by(served.model)
            return embeddings
        raise failover.exhausted()

    async def _meter(
        self,
        served: ServedModel,
        tenant: str | None,
        started: Started | None,
        prompt_tokens: int,
        most_prompt_tokens: int,
        reserved_output: int,
        output_bound: int,
        streaming: bool,
    ) -> CallMeter:
        """Reserves the call against its tenant's quota and its deployment's own limits
        (QuotaExceeded if it has no room): the most its prompt may be (`most_prompt_tokens`: an
        estimate's high end) and `reserved_output`; tells the edge the work begins. The meter it
        returns charges the call once however it ends (metering.py: by `prompt_tokens` and
        `output_bound`, the most output the provider is asked for, when the provider reports no
        usage); the caller holds it in a `with` block around the provider's work."""
        model = served.model
        limiter = self.limiter
        reservation = None
        if limiter is not None and limiter.rules:  # no rules: nothing to reserve
            reservation = await limiter.reserve(
                tenant,
                model,
                most_prompt_tokens + reserved_output,
                Usage(prompt_tokens=most_prompt_tokens, completion_tokens=reserved_output),
                served.deployment,
            )
        meter = CallMeter(
            model,
            reservation,
            limiter.tariff(model) if limiter is not None else None,
            prompt_tokens,
            output_bound,
            streaming,
            served.client.signals_dispatch,
        )
        if started is not None:
            try:
                await started(reservation.headers() if reservation is not None else ())
            except BaseException as error:
                meter.close(error)
                raise
        meter.start()
        return meter

    def _refusals(
        self, request: ModelRequest, streaming: bool
    ) -> Callable[[ServedModel], list[FieldViolation]]:
        """The request's fields a deployment cannot honour: its capabilities, then its
        provider's own rules."""

        def refusals(served: ServedModel) -> list[FieldViolation]:
            return unsupported_fields(
                request, served.metadata, streaming
            ) or served.client.unsupported(_for(request, served))

        return refusals

    def _failover(
        self, request: ModelRequest, started: Started | None, streaming: bool
    ) -> Failover:
        """The request checked, and its way through its target's candidates."""
        validate_request(request, self.limits)
        remember_request_text(_request_texts(request))
        target = self.target(request.model)
        return Failover(
            target, self._policy, started, self._refusals(request, streaming), self.on_attempt
        )

    async def generate(
        self, request: ModelRequest, started: Started | None = None, tenant: str | None = None
    ) -> ModelOutput:
        """Unary goes through the provider's own `generate`: an HTTP provider then makes one
        non-streaming upstream call and reports the upstream's usage; the base class derives it
        from the stream for the others. An attempt that fails moves on to the next candidate
        (worker/failover.py) until one answers whole."""
        failover = self._failover(request, started, False)
        timeout_s = failover.target.attempt_timeout_s
        for served in failover.candidates():
            try:
                async with _Admitted(self, served, request, failover.started, False, tenant) as (
                    attempt,
                    meter,
                ):
                    began = time.perf_counter()
                    if timeout_s is None:  # a model with one deployment: nothing to move on to
                        output = await served.client.generate(attempt)
                    else:
                        async with asyncio.timeout(timeout_s):
                            output = await served.client.generate(attempt)
                    meter.saw(output)
                    if output.tool_calls:
                        _check_tool_calls(output.tool_calls, output.finish_reason)
            except BaseException as error:
                failover.failed(served, timed_out(error, timeout_s))
                continue
            failover.answered(served)
            note_answered_by(served.model)
            return replace(
                output,
                finish_reason=output.finish_reason or FinishReason.STOP,
                timing=_timing(began, None, output.usage),
            )
        raise failover.exhausted()

    async def generate_stream(
        self, request: ModelRequest, started: Started | None = None, tenant: str | None = None
    ) -> AsyncGenerator[ModelOutput, None]:
        """Commits to an attempt at its first content: before it, a failed attempt moves on to
        the next candidate; after it, the caller gets the error, never a second answer."""
        failover = self._failover(request, started, True)
        for served in failover.candidates():
            clock = AttemptClock(failover.target.attempt_timeout_s)
            chunks = self._attempt_stream(served, request, failover.started, tenant, clock)
            try:
                held = await first_content(chunks, clock)
            except BaseException as error:
                await chunks.aclose()
                failover.failed(served, error)
                continue
            note_answered_by(served.model)
            delivered = 0
            async with aclosing(chunks):
                try:
                    for chunk in held:
                        delivered += 1
                        yield chunk
                    async for chunk in chunks:
                        delivered += 1
                        yield chunk
                except ModelwireError as error:
                    raise failover.broke_after_content(served, error, delivered) from None
                except BaseException as error:  # the caller left: nothing learnt of the upstream
                    failover.failed(served, error)
                    raise
            failover.answered(served)
            return
        raise failover.exhausted()

    async def _attempt_stream(
        self,
        served: ServedModel,
        request: ModelRequest,
        started: Started,
        tenant: str | None,
        clock: AttemptClock,
    ) -> AsyncGenerator[ModelOutput, None]:
        """One deployment's stream, checked and metered; ends with finish_reason. `clock` starts
        when its provider is called (a wait for a slot is not the upstream's slowness)."""
        async with _Admitted(self, served, request, started, True, tenant) as (attempt, meter):
            clock.start()
            began = time.perf_counter()
            first_token_at: float | None = None
            finished = False
            deltas: list[ToolCallDelta] = []
            async with aclosing(served.client.generate_stream(attempt)) as chunks:
                async for chunk in chunks:
                    if first_token_at is None and (
                        chunk.text or chunk.reasoning or chunk.tool_call_deltas
                    ):
                        first_token_at = time.perf_counter()
                    meter.saw(chunk)
                    if chunk.tool_call_deltas:
                        deltas += chunk.tool_call_deltas
                    if chunk.finish_reason is not None:
                        if deltas:
                            _check_tool_calls(merge_tool_call_deltas(deltas), chunk.finish_reason)
                        finished = True
                        chunk = replace(chunk, timing=_timing(began, first_token_at, chunk.usage))
                    # Deltas pass as they are (a copy per delta is measurable); the edge names the
                    # model.
                    yield chunk
            if not finished:
                # A provider that ended without a final chunk still owes the caller finish_reason.
                yield ModelOutput(
                    finish_reason=FinishReason.STOP,
                    usage=Usage(estimated=True),
                    timing=_timing(began, first_token_at, None),
                )

    async def _fit_context(
        self, served: ServedModel, request: ModelRequest
    ) -> tuple[ModelRequest, TokenCount, int]:
        """Refuses a prompt the model cannot hold and bounds max_new_tokens to the room left;
        returns the request so bounded, the prompt's count, and the most tokens it may be (an
        estimate's high end: what the quota reserves).

        An estimated count (another model's tokenizer standing in) may be off either way by up to
        the model's `estimate_margin`: the prompt is refused only when it is too long even if the
        estimate is that much high, and the room left assumes the estimate is that much low. When
        that leaves no room, max_new_tokens assumes the estimate is high and the upstream judges the
        fit (its refusal is FAILED_PRECONDITION too)."""
        context_length = served.metadata.context_length
        prompt = await served.client.count_token(request.model, request.messages)
        low, high = prompt.bounds(served.estimate_margin)
        if low >= context_length:
            margin = None if prompt.exact else served.estimate_margin
            raise ContextLengthExceeded(request.model, prompt.count, context_length, margin)
        room = context_length - high if high < context_length else context_length - low
        room = min(room, served.metadata.max_output_tokens)
        asked = request.sampling.max_new_tokens
        wanted = asked or served.client.default_max_new_tokens
        bounded = room if wanted is None else min(wanted, room)
        if bounded != asked:
            request = replace(request, sampling=replace(request.sampling, max_new_tokens=bounded))
        return request, prompt, high


class _Admitted:
    """Everything an attempt passes before its provider: a slot, context fit, the quotas, a
    span; `async with` gives the request as the provider gets it and the call's meter. The fit
    counts the prompt, which for a long prompt is real work: it runs inside the slot.

    A class rather than an @asynccontextmanager, which costs every call more (callgrind) and
    holds a generator of its own for as long as a stream is open."""

    __slots__ = (
        "_service",
        "_served",
        "_request",
        "_started",
        "_streaming",
        "_tenant",
        "_slot",
        "_meter",
        "_span",
    )

    def __init__(
        self,
        service: WorkerService,
        served: ServedModel,
        request: ModelRequest,
        started: Started | None,
        streaming: bool,
        tenant: str | None,
    ) -> None:
        self._service = service
        self._served = served
        self._request = request
        self._started = started
        self._streaming = streaming
        self._tenant = tenant

    async def __aenter__(self) -> tuple[ModelRequest, CallMeter]:
        service, served = self._service, self._served
        slot = self._slot = served.admission.slot()
        await slot.__aenter__()
        try:
            request = _for(self._request, served)
            asked = request.sampling.max_new_tokens
            request, prompt, most = await service._fit_context(served, request)
            bound = request.sampling.max_new_tokens or 0
            output = bound if asked is not None else min(bound, service.default_output_reservation)
            meter = self._meter = await service._meter(
                served,
                self._tenant,
                self._started,
                prompt.count,
                most,
                output,
                bound,
                self._streaming,
            )
            try:
                span = self._span = upstream_span(served.metadata.provider, served.model)
                span.__enter__()
            except BaseException as error:
                meter.close(error)
                raise
        except BaseException as error:
            await slot.__aexit__(type(error), error, error.__traceback__)
            raise
        return request, meter

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            try:
                self._span.__exit__(kind, error, traceback)
            finally:
                self._meter.close(error)
        finally:
            await self._slot.__aexit__(kind, error, traceback)


def _for(request: _Named, served: ServedModel) -> _Named:
    """The request as `served` gets it: a route's member's name in it; as it is otherwise (a
    copy of every request would cost each call)."""
    return request if request.model == served.model else replace(request, model=served.model)


def _request_texts(request: ModelRequest) -> list[str]:
    """Every string the caller gave (all that `[limits] max_request_chars` counts, and stop
    strings and attribution), so an upstream's error or a log line quoting any of it is scrubbed
    (core/redaction.py). The request id is left out: it is the worker's own log key."""
    texts = _message_texts(request.messages)
    texts += request.sampling.stop
    texts += (request.context.user, *request.context.metadata.values())
    if request.plain:
        return texts
    for tool in request.tools:
        texts += (tool.name, tool.description, tool.parameters_json_schema)
    output_format = request.output_format
    if isinstance(output_format, JsonSchemaFormat):
        texts += (output_format.name, output_format.schema_json)
    elif isinstance(output_format, GrammarFormat):
        texts.append(output_format.gbnf)
    return texts


def _message_texts(messages: Sequence[ModelMessage]) -> list[str]:
    """The strings of messages: text, names, image URLs (pre-signed credentials included), tool
    calls and their ids, reasoning and its signature. Image bytes are not text and stay out."""
    texts: list[str] = []
    for message in messages:
        texts += (message.content, message.name)
        if message.plain:
            continue
        texts += (part if isinstance(part, str) else part.url or "" for part in message.parts)
        for call in message.tool_calls:
            texts += (call.id, call.name, call.arguments_json)
        texts += (message.tool_call_id, message.reasoning or "")
        texts.append(message.reasoning_signature.decode("utf-8", errors="replace"))
    return texts


def _timing(started: float, first_token_at: float | None, usage: Usage | None) -> Timing:
    """Streams: decode rate after the first token. Unary calls see no first token before the whole
    answer, so their time to first token is the total and their rate is over the whole call."""
    now = time.perf_counter()
    tokens = usage.completion_tokens if usage else 0
    if first_token_at is None:
        total = now - started
        return Timing(
            time_to_first_token_s=total,
            tokens_per_second=tokens / total if total > 0 else 0.0,
            total_s=total,
        )
    decode_s = now - first_token_at
    rate = (tokens - 1) / decode_s if tokens > 1 and decode_s > 0 else 0.0
    return Timing(
        time_to_first_token_s=first_token_at - started,
        tokens_per_second=rate,
        total_s=now - started,
    )


def _check_tool_calls(calls: Sequence[ToolCall], finish_reason: FinishReason | None) -> None:
    """A model's tool calls reach the caller whole and well-formed (an id, a name, arguments that
    are a JSON object), unless max_new_tokens cut them, which finish_reason LENGTH tells the
    caller."""
    if finish_reason is FinishReason.LENGTH:
        return
    problem = broken_tool_call(calls)
    if problem is not None:
        raise UpstreamUnavailable(f"the model answered with a broken tool call: {problem}")

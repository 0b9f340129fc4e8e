"""One facade call's bookkeeping and its answers in its API's shape: which API a request speaks,
the headers its response carries (its request id, its rate limits), an error as that API says it
(facade/errors.py's status, the API's body, Retry-After, a quota refusal's x-ratelimit-*)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from modelwire.core import strict_json
from modelwire.core.errors import ModelwireError, QuotaExceeded
from modelwire.facade import anthropic_wire, openai_wire
from modelwire.facade.calls import GenerationCall, HttpError
from modelwire.facade.errors import http_error
from modelwire.observe.call_record import CallRecord, note_error_kind
from modelwire.quota.limiter import refusal_headers
from modelwire.rpc.auth import Unauthenticated
from modelwire.rpc.status import error_kind
from modelwire.rpc.wire import attempts_text

REQUEST_ID_HEADER = "x-request-id"
# The attempts of a call with a choice of deployments or models (worker/failover.py).
ATTEMPTS_HEADER = "x-modelwire-attempts"
ANTHROPIC_VERSION_HEADER = "anthropic-version"
JSON = "application/json"
SERVER = "modelwire"


def dumps(value: object) -> bytes:
    return strict_json.dumps(value).encode()


@dataclass(frozen=True)
class Api:
    """What differs between the two APIs around a call: its error body, its names for the
    contract's fields, and the header that carries the request id back."""

    name: str
    error_body: Callable[[HttpError, str], dict[str, Any]]
    param_of: Callable[[str, GenerationCall | None], str]
    request_id_headers: tuple[str, ...]


OPENAI = Api(
    "openai",
    lambda error, _request_id: openai_wire.error_body(error),
    openai_wire.error_param,
    (REQUEST_ID_HEADER,),
)
ANTHROPIC = Api(
    "anthropic",
    anthropic_wire.error_body,
    anthropic_wire.error_param,
    (REQUEST_ID_HEADER, "request-id"),
)


def api_of(request: web.BaseRequest) -> Api:
    """Anthropic's for its paths and for any request an Anthropic SDK sent; OpenAI's otherwise."""
    if request.path.startswith("/v1/messages") or ANTHROPIC_VERSION_HEADER in request.headers:
        return ANTHROPIC
    return OPENAI


class Call:
    """One facade call's bookkeeping: its record, its API, the headers its response carries."""

    __slots__ = ("api", "headers", "record", "parsed", "streaming")

    def __init__(self, api: Api, record: CallRecord) -> None:
        self.api = api
        self.record = record
        self.parsed: GenerationCall | None = None
        # A stream's status and headers went: from then on a failure is an event in the stream.
        self.streaming = False
        self.headers: dict[str, str] = {name: record.request_id for name in api.request_id_headers}
        self.headers["Server"] = SERVER  # not aiohttp's default, which names its version

    def json(self, body: object, status: int = 200) -> web.Response:
        return web.Response(
            body=dumps(body), status=status, content_type=JSON, headers=self.answer_headers()
        )

    def answer_headers(self) -> dict[str, str]:
        """The headers, with the attempts of a call that had a choice of deployments or models
        (`model/deployment=outcome`, as gRPC's modelwire-attempts trailer)."""
        if not self.record.attempts:
            return self.headers
        return {**self.headers, ATTEMPTS_HEADER: attempts_text(self.record.attempts)}

    @property
    def answered_by(self) -> str | None:
        """The model that answered (a route's member), once one did."""
        return self.record.answered_by

    def failed(self, error: BaseException) -> HttpError:
        """`error` as this API says it; the record takes its gRPC status and error kind."""
        parsed = self.parsed
        answer = http_error(error, lambda field: self.api.param_of(field, parsed))
        self.record.code = answer.code
        if isinstance(error, ModelwireError):
            # A key's refusal is no error kind (as at the gRPC pipeline), nor a worker's failure a
            # gateway passes on: the worker counted it.
            if not (isinstance(error, Unauthenticated) or error.relayed):
                note_error_kind(error_kind(error))
        elif answer.code == "INTERNAL":
            note_error_kind("internal")
        extra = refusal_headers(error) if isinstance(error, QuotaExceeded) else ()
        status = answer.status
        if self.api is ANTHROPIC and status == 503 and answer.code == "RESOURCE_EXHAUSTED":
            status = 529  # Anthropic's "overloaded", which its SDKs retry
        return dataclasses.replace(answer, status=status, headers=answer.headers + extra)

    def error_response(self, error: HttpError) -> web.Response:
        headers = dict(self.answer_headers())
        headers.update(error.headers)
        if error.retry_after_s is not None:
            headers["Retry-After"] = str(max(1, round(error.retry_after_s)))
        response = web.Response(
            body=dumps(self.api.error_body(error, self.record.request_id)),
            status=error.status,
            content_type=JSON,
            headers=headers,
        )
        if error.status == 408:
            response.force_close()  # the rest of the body may still come: not as a next request
        return response

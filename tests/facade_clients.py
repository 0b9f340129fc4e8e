"""The official OpenAI and Anthropic SDKs as clients of an HTTP facade (facade/server.py), and a
record of the HTTP requests they sent and the responses they received (retries included)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import anthropic
import httpx
import openai


@dataclass
class Seen:
    """What a client sent and received, in order: request headers; (status, headers)."""

    requests: list[httpx.Headers] = field(default_factory=list)
    responses: list[tuple[int, httpx.Headers]] = field(default_factory=list)

    async def sent(self, request: httpx.Request) -> None:
        self.requests.append(request.headers)

    async def received(self, response: httpx.Response) -> None:
        self.responses.append((response.status_code, response.headers))

    @property
    def statuses(self) -> list[int]:
        return [status for status, _headers in self.responses]

    def hooks(self) -> dict[str, list[Any]]:
        return {"request": [self.sent], "response": [self.received]}


def openai_client(
    port: int, key: str, *, max_retries: int = 0, seen: Seen | None = None
) -> openai.AsyncOpenAI:
    """`max_retries` 0 unless a test is about retries: a retried 5xx would be a second upstream
    request the test does not expect. (To send no key, a call passes `NO_OPENAI_KEY` as its
    `extra_headers`: the SDK honours an omitted header only per request.)"""
    return openai.AsyncOpenAI(
        api_key=key,
        base_url=f"http://127.0.0.1:{port}/v1",
        max_retries=max_retries,
        http_client=openai.DefaultAsyncHttpxClient(
            event_hooks=seen.hooks() if seen is not None else {}, trust_env=False
        ),
    )


NO_OPENAI_KEY = {"Authorization": openai.Omit()}


def anthropic_client(
    port: int,
    key: str | None,
    *,
    max_retries: int = 0,
    seen: Seen | None = None,
    headers: dict[str, str] | None = None,
) -> anthropic.AsyncAnthropic:
    """This SDK version sends its key as `Authorization: Bearer`; `key` None: a client that sends
    no key of its own, only `headers` (such as the API's `x-api-key`)."""
    omitted: dict[str, Any] = (
        {"Authorization": anthropic.Omit(), "X-Api-Key": anthropic.Omit()} if key is None else {}
    )
    return anthropic.AsyncAnthropic(
        api_key=key if key is not None else "unsent",
        default_headers={**omitted, **(headers or {})},
        base_url=f"http://127.0.0.1:{port}",
        max_retries=max_retries,
        http_client=anthropic.DefaultAsyncHttpxClient(
            event_hooks=seen.hooks() if seen is not None else {}, trust_env=False
        ),
    )

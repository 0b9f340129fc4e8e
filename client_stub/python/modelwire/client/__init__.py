"""A small typed Python client for modelwire's ModelWorker API, async and sync."""

from modelwire.client.async_client import ModelWorkerClient, OutputStream
from modelwire.client.credentials import REQUEST_ID_KEY, tls_credentials
from modelwire.client.errors import FieldViolation, ModelwireCallError
from modelwire.client.requests import (
    IMAGE_TYPES,
    Messages,
    RequestOptions,
    assistant_turn,
    build_request,
    grammar_format,
    image,
    json_object_format,
    json_schema_format,
    message,
    tool,
    tool_result,
)
from modelwire.client.responses import OutputCollector, RateLimits, parse_duration
from modelwire.client.sync_client import ModelWorkerSyncClient, SyncOutputStream

__all__ = [
    "IMAGE_TYPES",
    "REQUEST_ID_KEY",
    "FieldViolation",
    "Messages",
    "ModelWorkerClient",
    "ModelWorkerSyncClient",
    "ModelwireCallError",
    "OutputCollector",
    "OutputStream",
    "RateLimits",
    "RequestOptions",
    "SyncOutputStream",
    "assistant_turn",
    "build_request",
    "grammar_format",
    "image",
    "json_object_format",
    "json_schema_format",
    "message",
    "parse_duration",
    "tool",
    "tool_result",
    "tls_credentials",
]

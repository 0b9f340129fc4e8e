"""A small typed Python client for modelwire's ModelWorker API, async and sync."""

from modelwire.client.credentials import REQUEST_ID_KEY, tls_credentials
from modelwire.client.errors import ModelwireCallError
from modelwire.client.requests import Messages, build_request
from modelwire.client.sync_client import ModelWorkerSyncClient
from modelwire.client.async_client import ModelWorkerClient

__all__ = [
    "REQUEST_ID_KEY",
    "Messages",
    "ModelWorkerClient",
    "ModelWorkerSyncClient",
    "ModelwireCallError",
    "build_request",
    "tls_credentials",
]

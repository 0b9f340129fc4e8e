"""The facade's connections below its calls: TLS from [tls], aiohttp's connection handler with
the facade's answer to a request it cannot parse, aiohttp's protocol log kept quiet, and peers
whose first request never arrives whole dropped."""

from __future__ import annotations

import asyncio
import logging
import ssl

from aiohttp import web

from modelwire.core.settings import TlsConfig
from modelwire.facade import openai_wire
from modelwire.facade.answer import JSON, SERVER, dumps
from modelwire.facade.calls import HttpError


class _QuietRefusals(logging.Filter):
    """aiohttp's own refusals of malformed HTTP (a control character in a header, a line too
    long) are logged at DEBUG without their exception: its message and traceback quote the
    offending line, which may hold the caller's key, and any peer could fill the log at ERROR."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        record.msg, record.args = "refused a malformed HTTP request", None
        record.exc_info = record.exc_text = None
        return True


PROTOCOL_LOGGER = logging.getLogger("modelwire.facade.protocol")
PROTOCOL_LOGGER.addFilter(_QuietRefusals())


def ssl_context(tls: TlsConfig) -> ssl.SSLContext:
    """The listener's TLS from [tls]: its certificate and key; client certificates signed by
    `client_ca_file` required when it is set (mTLS), as on the gRPC port."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls.cert_file, tls.key_file)
    if tls.client_ca_file is not None:
        context.load_verify_locations(cafile=tls.client_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class _Connection(web.RequestHandler):
    """aiohttp's connection handler, answering a request it cannot parse at all (a line too
    long, a control character in a header) as the facade answers: a JSON error naming no
    library version and quoting nothing of the request back. Logged at DEBUG (_QuietRefusals)."""

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        self.log_exception("refused a malformed HTTP request", exc_info=exc)
        if request.writer.output_size > 0:
            raise ConnectionError("the answer had begun: the connection is closed instead")
        if status < 500:
            error = HttpError(status, "INVALID_ARGUMENT", "the request is not well-formed HTTP/1.1")
        else:
            error = HttpError(status, "INTERNAL", "internal error while reading the request")
        response = web.Response(
            body=dumps(openai_wire.error_body(error)),
            status=status,
            content_type=JSON,
            headers={"Server": SERVER},
        )
        response.force_close()
        return response


class FacadeServer(web.Server):
    """aiohttp's low-level server with the facade's connection handler."""

    def __call__(self) -> web.RequestHandler:
        return _Connection(self, loop=self._loop, **self._kwargs)


async def drop_silent_peers(runner: web.BaseRunner, bound_s: float) -> None:
    """Closes a connection whose first request has not arrived whole within `bound_s` (a
    slowloris peer sending a header block byte by byte, or nothing): aiohttp bounds the silence
    between requests (its keep-alive timeout) but not before the first one."""
    seen: dict[web.RequestHandler, float] = {}
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(bound_s / 2)
        server = runner.server
        connections = server.connections if isinstance(server, web.Server) else []
        now = loop.time()
        waiting = {}
        for connection in connections:
            # No request line and headers whole yet on this connection (aiohttp counts a request
            # when its header block is parsed).
            if getattr(connection, "_request_count", 1) == 0:
                since = waiting[connection] = seen.get(connection, now)
                if now - since >= bound_s:
                    connection.force_close()
        seen = waiting

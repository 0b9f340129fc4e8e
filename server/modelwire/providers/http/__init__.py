"""What the HTTP providers share: options, server-sent events, error mapping, retries, client."""

__all__ = ["client", "errors", "options", "retry", "sse"]

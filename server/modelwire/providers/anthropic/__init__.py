"""The Anthropic Messages API provider: client, codec and refusals."""

__all__ = ["client", "codec", "refusals"]

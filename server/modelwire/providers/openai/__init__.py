"""The OpenAI-compatible Chat Completions provider: client, codec and refusals."""

__all__ = ["client", "codec", "refusals"]

"""The OpenAI-compatible provider's tests."""

"""The Anthropic provider's tests."""

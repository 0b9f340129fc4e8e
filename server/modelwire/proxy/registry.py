"""Provider name (the `provider` config key) → ProxyLLMClient subclass."""

from __future__ import annotations

from modelwire.core.settings import ModelConfig
from modelwire.proxy.base import ProxyLLMClient
from modelwire.proxy.anthropic import AnthropicClient
from modelwire.proxy.echo import EchoClient
from modelwire.proxy.llamacpp import LlamaCppClient
from modelwire.proxy.openai import OpenAIClient

PROVIDERS: dict[str, type[ProxyLLMClient]] = {
    LlamaCppClient.provider: LlamaCppClient,
    OpenAIClient.provider: OpenAIClient,
    AnthropicClient.provider: AnthropicClient,
    EchoClient.provider: EchoClient,
}


def provider_class(model: ModelConfig) -> type[ProxyLLMClient]:
    try:
        return PROVIDERS[model.provider]
    except KeyError:
        raise model.error(
            "provider", f"unknown provider {model.provider!r}; known: {', '.join(sorted(PROVIDERS))}"
        ) from None

"""OpenAI's HTTP API ⇄ the domain types for the facade, the caller's side (the provider's side,
calling an upstream, is providers/openai/codec.py), with no I/O.

Requests are translated exactly or refused by name, `param` in OpenAI's own terms: a field this
gateway does not translate, or a value asking for what it cannot do (`n` > 1, log probabilities,
audio, an image `detail`), is never silently dropped; a value that means the default (`n: 1`,
`logprobs: false`, `store: false`, `null`) is accepted. Answers take the API reference's shapes,
plus two fields of ours on assistant messages and deltas: `reasoning_content` (DeepSeek's name,
which reasoning-aware OpenAI clients read) and `reasoning_signature` (base64), so that a reasoning
model's turn can be sent back as it came.
"""

from modelwire.facade.openai_wire.answers import (
    ChatStream,
    chat_completion,
    embeddings_body,
    error_body,
    model_list,
    model_object,
)
from modelwire.facade.openai_wire.requests import (
    ChatCall,
    error_param,
    parse_chat,
    parse_embeddings,
)

__all__ = [
    "ChatCall",
    "ChatStream",
    "chat_completion",
    "embeddings_body",
    "error_body",
    "error_param",
    "model_list",
    "model_object",
    "parse_chat",
    "parse_embeddings",
]

"""Anthropic's Messages API ⇄ the domain, for the facade: a caller's bodies (POST /v1/messages,
/v1/messages/count_tokens) as domain requests, and domain outputs as the Message, event stream,
token count, models and errors the API answers with. No I/O.

What the provider's codec (providers/anthropic/codec.py) already says is shared, not restated:
stop reasons, usage, and how thinking blocks travel in the domain (`signature_of`,
`reasoning_blocks`), so a turn that went out through this facade comes back as the same domain
bytes. Nothing a caller sends is dropped: a field, block or value the domain cannot carry is
refused, by its path in the Messages API's own terms."""

from modelwire.facade.anthropic_wire.answers import (
    MessageStream,
    count_tokens_body,
    error_body,
    message_body,
    model_list,
    model_object,
)
from modelwire.facade.anthropic_wire.requests import (
    OUTPUT_SCHEMA_NAME,
    error_param,
    parse_count_tokens,
    parse_messages,
)

__all__ = [
    "OUTPUT_SCHEMA_NAME",
    "MessageStream",
    "count_tokens_body",
    "error_body",
    "error_param",
    "message_body",
    "model_list",
    "model_object",
    "parse_count_tokens",
    "parse_messages",
]

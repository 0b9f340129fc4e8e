"""The HTTP facades: OpenAI's Chat Completions and Anthropic's Messages APIs in front of a worker's
models or a gateway's fleet (docs/api.md#http-facades)."""

"""The local provider: a GGUF model in-process through llama.cpp, its grammars and model files."""

__all__ = [
    "build",
    "client",
    "constraints",
    "engine",
    "gbnf_check",
    "gemma_format",
    "grammar",
    "model_files",
    "stop_strings",
]

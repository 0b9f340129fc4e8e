"""modelwire: a gRPC model-serving worker for large language models."""

__version__ = "0.1.0"

"""The worker: the gRPC edge, validation, admission and the generation path."""

"""The domain every layer shares: types, typed errors (each naming its gRPC code as a string), the
configuration schema, and the small pieces below them all (backoff, cancellation, deadline,
redaction, strict JSON, addresses). No grpc, no protobuf, no provider."""

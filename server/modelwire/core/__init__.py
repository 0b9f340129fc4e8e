"""Domain types and typed errors: no grpc, no protobuf, no provider."""

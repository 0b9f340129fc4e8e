"""Generated protobuf and gRPC stubs of modelwire.v1 (make proto); do not edit."""

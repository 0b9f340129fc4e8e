"""The gRPC plumbing every process (worker, controller, gateway) is assembled from: the server
builder, the call pipeline, auth, the one error → status lookup, and the names on the wire."""

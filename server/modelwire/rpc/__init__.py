"""The gRPC plumbing every process (worker, controller, gateway) is assembled from."""

"""What every process of a fleet shares: the registry's contract and types, the controller and etcd
clients, following an instance's health, and reading the load-report trailers."""

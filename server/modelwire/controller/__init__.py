"""Fleets: the instance registry (in memory or etcd), the ModelController service, the worker's
registration agent, the load-balancing gateway and the ORCA load-report interceptor."""

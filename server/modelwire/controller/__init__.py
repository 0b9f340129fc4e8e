"""The `modelwire controller` process: the ModelController service over a registry (in memory or
etcd) and the active health prober."""

"""The `modelwire gateway` process: the ModelWorker API in front of a fleet."""

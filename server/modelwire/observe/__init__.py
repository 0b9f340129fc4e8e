"""Seeing a running process (worker, controller, gateway): one record per call, turned into a log
line, metrics and trace spans. The call pipeline (rpc/) feeds it; it imports nothing of rpc/."""

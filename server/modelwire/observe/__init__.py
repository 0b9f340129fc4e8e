"""Seeing a running worker: one record per call, turned into a log line, metrics and trace spans."""

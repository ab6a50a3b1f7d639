"""Tracing, logging and the request id: what every layer may use to be seen."""

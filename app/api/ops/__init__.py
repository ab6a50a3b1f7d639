"""The probes and metrics of the service itself: `/healthz`, `/readyz`, `/metrics`."""

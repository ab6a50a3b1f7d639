"""The middleware every request passes: request ids and metrics, the audit entry, the body size and JSON guards, the drain."""

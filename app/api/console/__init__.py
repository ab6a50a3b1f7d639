"""The web console at `/ui`."""

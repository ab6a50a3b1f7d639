"""The HTTP skin: routers that call the core in `app.ollama`, nothing else."""

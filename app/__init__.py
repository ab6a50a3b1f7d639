"""ollama-gateway: a FastAPI gateway in front of one or more Ollama servers."""

__version__ = "0.1.0"

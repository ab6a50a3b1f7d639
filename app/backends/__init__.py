"""Talking to Ollama servers: one client per backend, and the pool that routes between them."""

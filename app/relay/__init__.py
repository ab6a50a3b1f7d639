"""Ollama's own API (`/api/*`) relayed through the pool, unparsed, with runs recorded on the side and streams continued mid-answer."""

"""Ollama's API (`/api/*`) as Ollama serves it, through the relay."""

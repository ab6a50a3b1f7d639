"""The Ollama emulator: a stand-in Ollama server and command line. Shares no code with the gateway."""

"""`python -m app.emulator`: the `ollama` command-line stand-in."""

from app.emulator.ollama_cli import main

main()

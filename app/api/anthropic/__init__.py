"""The Anthropic Messages API, `/v1/messages`: Claude Code's door, through the core."""

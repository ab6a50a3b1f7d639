"""A reasoning item's `encrypted_content`: the model's thinking, exactly, in a form a client
keeps without reading (clients that want to read it have the item's `summary`).

Clients such as Codex send the reasoning items of earlier turns back unchanged; decoding
`encrypted_content` gives the assistant message its thinking back to the character, so the
prompt rendered for the next turn starts with the very tokens the backend has cached. It
is an encoding, not encryption: the gateway keeps no secret, and the text is the client's
own conversation. Content that is not ours (Ollama puts the plain thinking there) is taken
as the thinking itself.
"""

from __future__ import annotations

import base64
import binascii

__all__ = ["decode_thinking", "encode_thinking"]

PREFIX = "ogw1:"


def encode_thinking(thinking: str) -> str:
    data = base64.urlsafe_b64encode(thinking.encode("utf-8", "surrogatepass")).decode("ascii")
    return PREFIX + data


def decode_thinking(content: str) -> str:
    if not content.startswith(PREFIX):
        return content
    try:
        raw = base64.urlsafe_b64decode(content[len(PREFIX) :].encode("ascii"))
        return raw.decode("utf-8", "surrogatepass")
    except (ValueError, binascii.Error, UnicodeError):
        return content

"""Request bodies decoded as Ollama's Go server decodes them, errors in its decoder's words.

Ollama reads a body with Go's `encoding/json`; a body it cannot read is a 400 whose `error`
is the decoder's text (`invalid character 'x' looking for beginning of value`, `unexpected
EOF`, `invalid character '[' exceeded max depth`, ...). `load` gives the same texts for the
same bodies, with two deliberate differences:

- Text that is not Unicode is refused: a body that is not valid UTF-8, or a string holding a
  lone surrogate (a `"\\ud800"` escape with no partner), is a 400 `invalid character '\\xff'
  in string literal` / `invalid character '\\ud800' in string literal`. Go's decoder would
  instead put U+FFFD in place of such text and go on; the emulator refuses it so that no
  broken text reaches the engines or the reply encoder.
- Nesting deeper than `MAX_DEPTH` (512) levels is refused with Go's `exceeded max depth`
  text; Go's own limit is 10000, deeper than Python's parser and the emulator's recursive
  helpers can go.
"""

from __future__ import annotations

import json
import re
from typing import Any

from app.emulator.errors import OllamaError

__all__ = ["MAX_DEPTH", "go_char", "load", "syntax_error"]

MAX_DEPTH = 512

# Strings (skipped whole) and brackets, for counting nesting outside strings.
_STRINGS_AND_BRACKETS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.DOTALL)
# Where a lone surrogate may come from: a \uD800-\uDFFF escape.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_SURROGATE = re.compile("[\ud800-\udfff]")
_HEX = set("0123456789abcdefABCDEF")
_GO_ESCAPES = {0x07: "\\a", 0x08: "\\b", 0x0C: "\\f", 0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t",
               0x0B: "\\v"}  # fmt: skip


class _NonFinite(ValueError):
    """`NaN`, `Infinity` or `-Infinity`: Python's parser takes them, Go's does not."""

    def __init__(self, literal: str) -> None:
        super().__init__(literal)
        self.literal = literal


def _refuse_constant(literal: str) -> Any:
    raise _NonFinite(literal)


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)


def load(body: bytes) -> Any:
    """The JSON value of a request body; `OllamaError(400, <decoder text>)` if unreadable."""
    invalid_byte: int | None = None
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        invalid_byte = body[exc.start]
        # Bad bytes become lone surrogates (U+DC80..U+DCFF), so that the parser still
        # reports a syntax error where Go's would, with the byte Go would name.
        text = body.decode("utf-8", "surrogateescape")
    too_deep = _depth_error(text)
    if too_deep is not None:
        raise too_deep
    try:
        value = _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise syntax_error(exc) from None
    except _NonFinite as exc:
        if exc.literal.startswith("-"):  # `-Infinity`: Go stops at the `I`
            raise OllamaError(400, "invalid character 'I' in numeric literal") from None
        where = "looking for beginning of value"
        raise OllamaError(400, f"invalid character {go_char(exc.literal)} {where}") from None
    if invalid_byte is not None:  # parsed, so the bad byte sat inside a string
        raise OllamaError(400, f"invalid character '\\x{invalid_byte:02x}' in string literal")
    if _SURROGATE_ESCAPE.search(text):
        lone = _first_surrogate(value)
        if lone is not None:
            raise OllamaError(400, f"invalid character '\\u{ord(lone):04x}' in string literal")
    return value


def _depth_error(text: str) -> OllamaError | None:
    """Go's error for nesting past `MAX_DEPTH`, unless a syntax error comes first."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return None
    depth = 0
    for match in _STRINGS_AND_BRACKETS.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                at = match.start()
                try:  # a syntax error before the deep bracket is what Go reports
                    _DECODER.decode(text[:at])
                except json.JSONDecodeError as exc:
                    if exc.pos < at:
                        return syntax_error(exc)
                except (_NonFinite, RecursionError):
                    pass
                return OllamaError(400, f"invalid character '{token}' exceeded max depth")
        elif token in "]}":
            depth -= 1
    return None


def _first_surrogate(value: Any) -> str | None:
    """The first lone surrogate in any string (keys too) of a decoded value, or None."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            found = _SURROGATE.search(item)
            if found is not None:
                return found.group()
        elif isinstance(item, dict):
            pairs = [part for pair in item.items() for part in pair]
            stack.extend(reversed(pairs))
        elif isinstance(item, list):
            stack.extend(reversed(item))
    return None


def go_char(char: str) -> str:
    """Go's `quoteChar` for the byte its scanner stopped at: the first UTF-8 byte of `char`
    (a byte escaped by `surrogateescape` is that byte), as a quoted Latin-1 rune."""
    byte = char.encode("utf-8", "surrogateescape")[0]
    if byte == 0x27:
        return "'\\''"
    if byte == 0x5C:
        return "'\\\\'"
    if byte < 0x20 or byte == 0x7F:
        return "'" + _GO_ESCAPES.get(byte, f"\\x{byte:02x}") + "'"
    rune = chr(byte)
    return f"'{rune}'" if rune.isprintable() else f"'\\u{byte:04x}'"


def _innermost_bracket(doc: str, pos: int) -> str:
    """`[` or `{`: the open bracket around `pos` (strings skipped), or '' at top level."""
    stack: list[str] = []
    for match in _STRINGS_AND_BRACKETS.finditer(doc, 0, pos):
        token = match.group()
        if token in "[{":
            stack.append(token)
        elif token in "]}" and stack:
            stack.pop()
    return stack[-1] if stack else ""


def syntax_error(exc: json.JSONDecodeError) -> OllamaError:
    """Go decoder-like text for malformed JSON."""
    doc, pos, msg = exc.doc, exc.pos, exc.msg
    if msg.startswith("Unterminated string") or pos >= len(doc.rstrip()):
        return OllamaError(400, "unexpected EOF")
    char = doc[pos]
    if msg.startswith("Invalid control character"):
        where = "in string literal"
    elif msg.startswith("Invalid \\escape"):  # Python points at the backslash, Go after it
        char, where = doc[pos + 1], "in string escape code"
    elif msg.startswith("Invalid \\uXXXX"):  # Python points at the `u`
        digits = doc[pos + 1 : pos + 5]
        bad = next((c for c in digits if c not in _HEX), None)
        if bad is None:
            return OllamaError(400, "unexpected EOF")
        char, where = bad, "in \\u hexadecimal character escape"
    elif msg.startswith(("Expecting value", "Unexpected UTF-8 BOM")):
        where = "looking for beginning of value"
    elif msg.startswith("Expecting property name"):
        where = "looking for beginning of object key string"
    elif msg.startswith("Expecting ':'"):
        where = "after object key"
    elif msg.startswith("Extra data"):
        where = "after top-level value"
    elif _innermost_bracket(doc, pos) == "[":
        where = "after array element"
    else:
        where = "after object key:value pair"
    return OllamaError(400, f"invalid character {go_char(char)} {where}")

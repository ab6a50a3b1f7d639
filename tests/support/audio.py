"""Audio made by the tests themselves (no binary files in the repository)."""

from __future__ import annotations

import io
import math
import struct
import wave


def wav_bytes(seconds: float, rate: int = 16_000) -> bytes:
    """A 16-bit mono WAV of `seconds` of a 440 Hz tone (a whole number of periods a second,
    so one second of samples is made and repeated)."""
    second = struct.pack(
        f"<{rate}h", *(round(6000 * math.sin(2 * math.pi * 440 * i / rate)) for i in range(rate))
    )
    count = round(seconds * rate)
    whole, rest = divmod(count, rate)
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(second * whole + second[: rest * 2])
    return buffer.getvalue()


def wav_seconds(data: bytes) -> float:
    """The length of a WAV, read with Python's `wave` module (which checks it is one)."""
    with wave.open(io.BytesIO(data), "rb") as audio:
        return audio.getnframes() / audio.getframerate()

"""A `multipart/form-data` body read as it streams: text fields in memory (small, bounded),
files in temporary files on disk, the whole body counted against a limit as it comes.

The edge (`app.api.edge.body_size`) refuses an upload whose declared length is over the
limit before a byte is read; a body that declares none (chunked) is counted here and
refused with 413 as soon as it passes the limit, having held at most one buffer of it in
memory. `on_field` sees each text field as soon as its part ends, so a route can refuse
a request (a model the key may not use) before the file that follows is read. A body
that ends before the form's closing boundary (cut off mid-file) is a 400 that says so.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import IO

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from app.api.common.errors import ApiError

__all__ = ["MultipartForm", "UploadedFile", "read_multipart"]

FLUSH_BYTES = 1 << 20
"""A file's bytes are written to disk once this many have come (at most this much of an
upload is held in memory)."""
MAX_PARTS = 64
MAX_FIELD_BYTES = 1 << 20
"""The most bytes of text fields a form may hold, all of them together (they are held in
memory); a caller may ask for less."""


def invalid(message: str) -> ApiError:
    return ApiError(400, "Invalid request", message)


@dataclass
class UploadedFile:
    """One file of the form, in an unnamed temporary file (gone once closed)."""

    filename: str | None
    content_type: str | None
    size: int = 0
    file: IO[bytes] = field(default_factory=lambda: tempfile.TemporaryFile())  # noqa: SIM115
    pending: bytearray = field(default_factory=bytearray)
    """Bytes received, not yet written to `file` (see `FLUSH_BYTES`)."""

    async def flush(self, force: bool = False) -> None:
        """Write the held bytes to disk (in a worker thread) once there are enough."""
        if not self.pending or (len(self.pending) < FLUSH_BYTES and not force):
            return
        data, self.pending = bytes(self.pending), bytearray()
        await asyncio.to_thread(self.file.write, data)

    async def read(self) -> bytes:
        """The whole file (read in a worker thread)."""

        def read_all() -> bytes:
            self.file.seek(0)
            return self.file.read()

        return await asyncio.to_thread(read_all)

    def close(self) -> None:
        self.file.close()


@dataclass
class MultipartForm:
    """The fields (the first value of each name) and files of a form; `close()` removes
    the files."""

    fields: dict[str, str] = field(default_factory=dict)
    files: dict[str, UploadedFile] = field(default_factory=dict)

    def close(self) -> None:
        for upload in self.files.values():
            upload.close()


def _text(value: str) -> str:
    """A file's name or type as it may be stored: without NUL (no database holds one)."""
    return value.replace("\x00", "")


class _Reader:
    """The parser's callbacks: where each part's bytes go."""

    def __init__(
        self,
        file_fields: Collection[str],
        max_field_bytes: int,
        on_field: Callable[[str, str], None] | None,
    ) -> None:
        self.form = MultipartForm()
        self.file_fields = file_fields
        self.max_field_bytes = max_field_bytes
        self.on_field = on_field
        self.parts = 0
        self.field_bytes = 0
        self.in_part = False
        self.ended = False
        self.header_name = bytearray()
        self.header_value = bytearray()
        self.headers: dict[bytes, bytes] = {}
        self.name: str | None = None
        self.upload: UploadedFile | None = None
        self.value = bytearray()
        self.skipping = False
        """The current part is neither a wanted file nor a text field (a file under
        another name): its bytes are dropped."""

    def callbacks(self) -> dict[str, Callable[..., None]]:
        return {
            "on_part_begin": self.part_begin,
            "on_header_field": lambda data, start, end: self.header_name.extend(data[start:end]),
            "on_header_value": lambda data, start, end: self.header_value.extend(data[start:end]),
            "on_header_end": self.header_end,
            "on_headers_finished": self.headers_finished,
            "on_part_data": self.part_data,
            "on_part_end": self.part_end,
            "on_end": self.end,
        }

    def part_begin(self) -> None:
        self.parts += 1
        self.in_part = True
        if self.parts > MAX_PARTS:
            raise invalid(f"the form has more than {MAX_PARTS} parts")
        self.headers.clear()
        self.name, self.upload, self.skipping = None, None, False
        self.value.clear()

    def header_end(self) -> None:
        self.headers[bytes(self.header_name).strip().lower()] = bytes(self.header_value).strip()
        self.header_name.clear()
        self.header_value.clear()

    def headers_finished(self) -> None:
        kind, options = parse_options_header(self.headers.get(b"content-disposition"))
        if kind != b"form-data" or b"name" not in options:
            raise invalid("each part of the form needs 'Content-Disposition: form-data; name=...'")
        name = options[b"name"].decode("utf-8", "replace")
        self.name = name
        if b"filename" in options:
            if name in self.file_fields and name not in self.form.files:
                content_type = self.headers.get(b"content-type")
                self.upload = UploadedFile(
                    filename=_text(options[b"filename"].decode("utf-8", "replace")),
                    content_type=_text(content_type.decode("latin-1")) if content_type else None,
                )
                self.form.files[name] = self.upload
            else:
                self.skipping = True

    def part_data(self, data: bytes, start: int, end: int) -> None:
        if self.skipping:
            return
        if self.upload is not None:
            self.upload.size += end - start
            self.upload.pending.extend(data[start:end])
            return
        self.field_bytes += end - start
        if self.field_bytes > self.max_field_bytes:
            raise invalid(f"the form's text fields are longer than {self.max_field_bytes} bytes")
        self.value.extend(data[start:end])

    def part_end(self) -> None:
        self.in_part = False
        if self.upload is not None or self.skipping or self.name is None:
            return
        try:
            value = self.value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise invalid(f"form field {self.name!r} is not UTF-8 text") from exc
        if "\x00" in value:
            raise invalid(f"form field {self.name!r} contains a NUL character")
        if self.name in self.form.fields or self.name in self.file_fields:
            return  # the first value counts; a file field sent as text is no file
        self.form.fields[self.name] = value
        if self.on_field is not None:
            self.on_field(self.name, value)

    def end(self) -> None:
        self.ended = True

    async def flush(self, force: bool = False) -> None:
        for upload in self.form.files.values():
            await upload.flush(force)

    def cut_off(self) -> str:
        if self.in_part and self.upload is not None:
            return f"in the middle of the file {self.name!r}"
        if self.in_part and self.name is not None:
            return f"in the middle of the field {self.name!r}"
        return "before the form's closing boundary"


async def read_multipart(
    request: Request,
    *,
    max_bytes: int,
    file_fields: Collection[str],
    max_field_bytes: int = MAX_FIELD_BYTES,
    on_field: Callable[[str, str], None] | None = None,
) -> MultipartForm:
    """The form of `request`, read as it streams (see the module doc).

    Raises `ApiError`: 413 past `max_bytes` (the whole body), 400 for a body that is not
    `multipart/form-data`, is malformed or ends early; whatever `on_field` raises. The
    caller closes the form (its temporary files)."""
    kind, options = parse_options_header(request.headers.get("content-type"))
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise invalid(
            "failed to parse multipart form: the body must be multipart/form-data (with a boundary)"
        )
    reader = _Reader(file_fields, max_field_bytes, on_field)
    try:
        parser = MultipartParser(boundary, reader.callbacks())  # type: ignore[arg-type]
    except FormParserError as exc:
        raise invalid(f"failed to parse multipart form: {exc}") from exc
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_bytes:
                raise ApiError(
                    413,
                    "Request body too large",
                    f"the upload is larger than the limit of {max_bytes} bytes",
                )
            try:
                parser.write(chunk)
            except FormParserError as exc:
                raise invalid(f"failed to parse multipart form: {exc}") from exc
            await reader.flush()
        if not reader.ended:
            raise invalid(
                f"the multipart body ended {reader.cut_off()}: the upload was cut off "
                "before its end"
            )
        await reader.flush(force=True)
        for upload in reader.form.files.values():
            await asyncio.to_thread(upload.file.flush)
    except ClientDisconnect as exc:
        reader.form.close()
        raise invalid("the client closed the connection before the upload ended") from exc
    except BaseException:
        reader.form.close()
        raise
    return reader.form

"""Just enough of `multipart/form-data` to route an upload by its `model` field.

Speech-to-text clients send the audio file and the `model` as form fields. The gateway must read
the model, put the engine's name for it in its place, and send the upload on without copying the
file: `form_fields` finds where each small field's value lies in the body (checking the framing),
and `with_field` returns the body as slices around the new value, for the upstream client to
send one after another. Pure functions on bytes.
"""

from __future__ import annotations

import re

from relais_gateway.errors import InvalidRequest

BOUNDARY = re.compile(r'boundary="?([^";]{1,200})"?')
NAME = re.compile(rb'name="([^"]{1,200})"')
MAX_PARTS = 100
MAX_FIELD_BYTES = 4096


def boundary(content_type: str) -> bytes:
    """The boundary of a `multipart/form-data` content type (400 otherwise)."""
    if not content_type.lower().startswith("multipart/form-data"):
        raise InvalidRequest("the request body must be multipart/form-data", code="invalid_form")
    match = BOUNDARY.search(content_type)
    if match is None:
        raise InvalidRequest("multipart/form-data without a boundary", code="invalid_form")
    return match.group(1).encode()


def form_fields(raw: bytes, mark: bytes) -> dict[str, tuple[int, int]]:
    """The (start, end) of each non-file field's value in `raw` (400 for broken framing).

    File parts (with a `filename`) are only searched for their end, never copied.
    """
    delimiter = b"--" + mark
    if not raw.startswith(delimiter):
        raise InvalidRequest("malformed multipart body: no opening boundary", code="invalid_form")
    fields: dict[str, tuple[int, int]] = {}
    at = len(delimiter)
    for _ in range(MAX_PARTS):
        if raw.startswith(b"--", at):
            return fields  # the closing delimiter
        if not raw.startswith(b"\r\n", at):
            raise InvalidRequest("malformed multipart body: bad delimiter", code="invalid_form")
        head_end = raw.find(b"\r\n\r\n", at + 2, at + 2 + MAX_FIELD_BYTES)
        if head_end == -1:
            raise InvalidRequest("malformed multipart body: part headers", code="invalid_form")
        headers = raw[at + 2 : head_end]
        start = head_end + 4
        end = raw.find(b"\r\n" + delimiter, start)
        if end == -1:
            raise InvalidRequest("malformed multipart body: unterminated part", code="invalid_form")
        name = NAME.search(headers)
        if name is not None and b"filename=" not in headers:
            fields[name.group(1).decode(errors="replace")] = (start, end)
        at = end + 2 + len(delimiter)
    raise InvalidRequest(f"multipart body with more than {MAX_PARTS} parts", code="invalid_form")


def with_field(body: bytes, span: tuple[int, int], value: bytes) -> list[memoryview]:
    """`body` with the field value at `span` replaced by `value`, as slices (nothing copied)."""
    view = memoryview(body)
    return [view[: span[0]], memoryview(value), view[span[1] :]]

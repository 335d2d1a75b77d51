"""Streams forwarded as the engine sent them, reading on the way only what the gateway needs.

An engine's stream reaches the client line by line, without re-encoding: the relays split network
chunks at line ends (so no line is ever cut in two) and hand the complete lines on. On the way they
note the end marker (SSE `data: [DONE]`, Ollama's `"done": true` line), the token counts, and the
usage chunk the gateway asked for on the client's behalf (dropped again when the client did not ask
for it). Scanning is by byte search; a line is parsed only when it carries counts, once a stream.
"""

from __future__ import annotations

import abc
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson

from relais_gateway.errors import UpstreamError

USAGE_MARKS = (b'"usage":{', b'"usage": {')
DONE_MARKS = (b"data: [DONE]", b"data:[DONE]")
NDJSON_DONE_MARKS = (b'"done":true', b'"done": true')


Rewrite = Callable[[bytes], bytes]
"""What a relay applies to the lines it forwards (the served name, response ids)."""

MODEL_FIELD = re.compile(rb'"model":(\s*)"(?:[^"\\]|\\.)*"')


class Rename:
    """Puts the name the client used wherever an answer names the model (`"model": ...`),
    whatever name the engine wrote there: its own (`--served-model-name`, an Ollama tag), its
    model id (TGI, llama.cpp), or an alias.

    Bytes in, bytes out, nothing re-encoded: when every `"model"` field already holds the served
    name (the common case), the data is returned as it came, after two byte counts. An engine
    writes its other name the same way on every line of a stream, so a form found once (by a
    regular expression) is replaced by plain byte replacement after that.
    """

    __slots__ = ("_right", "_spaced", "_value", "_wrong")

    MAX_FORMS = 4  # forms learnt per answer: an engine has one or two; a hostile one no more

    def __init__(self, served_name: str) -> None:
        self._value = orjson.dumps(served_name)
        self._right = b'"model":' + self._value
        self._spaced = b'"model": ' + self._value
        self._wrong: list[tuple[bytes, bytes]] = []

    def __call__(self, data: bytes) -> bytes:
        fields = data.count(b'"model":')
        if not fields:
            return data
        for old, new in self._wrong:
            data = data.replace(old, new)
        if data.count(self._right) + data.count(self._spaced) == fields:
            return data
        for match in MODEL_FIELD.finditer(data):
            pair = (match.group(0), self._replace(match))
            unseen = pair[0] != pair[1] and pair not in self._wrong
            if unseen and len(self._wrong) < self.MAX_FORMS:
                self._wrong.append(pair)
        return MODEL_FIELD.sub(self._replace, data)

    def _replace(self, match: re.Match[bytes]) -> bytes:
        return b'"model":' + match.group(1) + self._value


def renamer(served_name: str) -> Rename:
    """The `Rename` for answers to a request for `served_name`."""
    return Rename(served_name)


MAX_COUNT = 2**31 - 1


def token_count(value: Any) -> int:
    """An engine's token count as a number the gateway can use: a non-negative integer below
    2**31 (an integral float is accepted); anything else (negative, text, huge) counts as 0.
    Engine numbers are never trusted: they feed counters that must not go down or fail."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
        return 0
    return value


class LineSplitter(abc.ABC):
    """Splits network chunks into runs of complete lines, keeping the partial tail; each kind of
    stream (the relays here, the translators in dialects/) handles those lines in `_complete`."""

    def __init__(self, rename: Rewrite | None) -> None:
        self.rename = rename
        self.ended = False
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.lines = 0
        self._tail = b""

    def feed(self, data: bytes) -> bytes:
        """The complete lines of `data` (after what was held back), ready to forward."""
        if self._tail:
            data = self._tail + data
        cut = data.rfind(b"\n") + 1
        self._tail = data[cut:]
        return self._complete(data[:cut]) if cut else b""

    @property
    def pending(self) -> int:
        """Bytes of a line not ended yet (bounded by the caller: an engine may never end it)."""
        return len(self._tail)

    def close(self) -> bytes:
        """What is left when the engine's body ends (a last line with no newline)."""
        tail, self._tail = self._tail, b""
        return self._complete(tail + b"\n") if tail.strip() else b""

    @abc.abstractmethod
    def _complete(self, lines: bytes) -> bytes:
        """Note what the gateway needs from `lines`; the lines to forward."""


class SseRelay(LineSplitter):
    """An OpenAI-style SSE stream (`data: {...}` events, then `data: [DONE]`).

    `strip_usage`: the gateway asked for the usage chunk (for its metrics), the client did not.
    `add_usage`: the client asked for usage; an engine that sends none (llama.cpp's server) gets
    one added before `[DONE]`, with the completion tokens counted from the forwarded deltas.
    """

    def __init__(
        self,
        rename: Rewrite | None,
        *,
        strip_usage: bool,
        add_usage: bool = False,
        chat: bool = True,
    ) -> None:
        super().__init__(rename)
        self.strip_usage = strip_usage
        self.add_usage = add_usage
        self.chat = chat
        self.usage_seen = False
        self.deltas = 0

    def _complete(self, lines: bytes) -> bytes:
        # One byte search per marker and chunk; the exact forms are checked only on a hit.
        self.lines += lines.count(b"data:")
        if self.add_usage:
            self.deltas += _text_deltas(lines)
        if b'"usage":' in lines and any(mark in lines for mark in USAGE_MARKS):
            lines = self._usage(lines)
        if b"[DONE]" in lines and not self.ended:
            self.ended = any(mark in lines for mark in DONE_MARKS)
            if self.ended and self.add_usage and not self.usage_seen:
                lines = self._with_usage(lines)
        return self.rename(lines) if self.rename is not None else lines

    def _with_usage(self, lines: bytes) -> bytes:
        """The usage chunk the client asked for, inserted before the `[DONE]` event."""
        at = min(lines.find(mark) for mark in DONE_MARKS if mark in lines)
        usage = {"prompt_tokens": 0, "completion_tokens": self.deltas, "total_tokens": self.deltas}
        chunk: dict[str, Any] = {
            "id": "usage",
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": int(time.time()),
            "model": "",
            "choices": [],
            "usage": usage,
        }
        self.completion_tokens = self.deltas
        return lines[:at] + b"data: " + orjson.dumps(chunk) + b"\n\n" + lines[at:]

    def _usage(self, lines: bytes) -> bytes:
        kept: list[bytes] = []
        for line in lines.split(b"\n"):
            if line.startswith(b"data:") and any(mark in line for mark in USAGE_MARKS):
                data = _loads(line[5:])
                usage = data.get("usage") if isinstance(data, dict) else None
                if isinstance(usage, dict):
                    self.usage_seen = True
                    self.prompt_tokens = token_count(usage.get("prompt_tokens"))
                    self.completion_tokens = token_count(usage.get("completion_tokens"))
                    if self.strip_usage and not data.get("choices"):
                        continue  # the chunk we asked for on the client's behalf
            kept.append(line)
        return b"\n".join(kept)

    def error(self, message: str) -> bytes:
        """An in-band error event, as OpenAI sends one: `openai` clients raise on it."""
        body = {"error": {"message": message, "type": "server_error", "code": "upstream_error"}}
        return b"data: " + orjson.dumps(body) + b"\n\n"


class NdjsonRelay(LineSplitter):
    """An Ollama NDJSON stream: JSON lines, the last one with `"done": true` and the counts."""

    def _complete(self, lines: bytes) -> bytes:
        self.lines += lines.count(b"\n")
        if b'"done":' in lines and any(mark in lines for mark in NDJSON_DONE_MARKS):
            for line in lines.split(b"\n"):
                if any(mark in line for mark in NDJSON_DONE_MARKS):
                    data = _loads(line)
                    if isinstance(data, dict) and data.get("done") is True:
                        self.ended = True
                        self.prompt_tokens = token_count(data.get("prompt_eval_count"))
                        self.completion_tokens = token_count(data.get("eval_count"))
        return self.rename(lines) if self.rename is not None else lines

    @staticmethod
    def error(message: str) -> bytes:
        """An in-band error line, as Ollama sends one: `ollama` clients raise on it."""
        return orjson.dumps({"error": message}) + b"\n"


EMPTY_MARKS = (
    b'"content":""',
    b'"content": ""',
    b'"content":null',
    b'"content": null',
    b'"text":""',
    b'"text": ""',
)


def _text_deltas(lines: bytes) -> int:
    """How many events carry generated text (a streamed delta is about one token)."""
    found = lines.count(b'"content":') + lines.count(b'"text":')  # spaced forms included
    empty = sum(lines.count(mark) for mark in EMPTY_MARKS)
    return max(0, found - empty)


def _loads(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None


class ChunkReader(LineSplitter):
    """An OpenAI SSE stream read chunk by chunk, for a translator that writes another dialect's
    stream (Ollama NDJSON, Anthropic events): `_chunk` gets each parsed chunk, `_done` the end
    marker. An engine's in-band error becomes an `UpstreamError` (ended in the client's shape)."""

    def _complete(self, lines: bytes) -> bytes:
        return b"".join(self._lines(lines.split(b"\n")))

    def _lines(self, lines: list[bytes]) -> Iterator[bytes]:
        for line in lines:
            if not line.startswith(b"data:") or self.ended:
                continue  # blank separators, `event:` and `:` comments
            payload = line[5:].strip()
            if payload == b"[DONE]":
                yield from self._done()
                continue
            data = orjson.loads(payload)
            if "error" in data:
                error = data["error"]
                message = error.get("message") if isinstance(error, dict) else error
                raise UpstreamError(f"engine error: {str(message)[:300]}")
            self.lines += 1
            yield from self._chunk(data)

    @abc.abstractmethod
    def _chunk(self, data: dict[str, Any]) -> Iterator[bytes]:
        """The translated lines for one chunk of the engine's stream."""

    @abc.abstractmethod
    def _done(self) -> Iterator[bytes]:
        """The translated end of the stream (sets `ended` and the token counts)."""


class RawRelay(LineSplitter):
    """Any other stream (e.g. `/v1/responses` events): forwarded whole, nothing read."""

    def __init__(self, rename: Rewrite | None) -> None:
        super().__init__(rename)
        self.ended = True  # no end marker is known for an arbitrary route

    def _complete(self, lines: bytes) -> bytes:
        self.lines += lines.count(b"data:")
        return self.rename(lines) if self.rename is not None else lines

    @staticmethod
    def error(message: str) -> bytes:
        body = {"error": {"message": message, "type": "server_error", "code": "upstream_error"}}
        return b"data: " + orjson.dumps(body) + b"\n\n"

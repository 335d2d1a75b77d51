"""The HTTP server's connection protocol: uvicorn's httptools protocol, bounded before the app.

httptools (llhttp) accepts request heads of any size and uvicorn waits for them for ever, so a
caller with no key could make the gateway hold a 100 MB header, or a thousand connections that
never finish their heads. This protocol counts each request head's bytes before the parser sees
them (431 past `max_header_bytes`) and closes a connection whose head has not arrived within
`header_timeout_s`. `main` runs uvicorn with it; the body's own limits are the edge's.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

HEAD_END = b"\r\n\r\n"


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a size and a time limit on each request head."""

    max_header_bytes = 65_536
    header_timeout_s = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True
        self._head_bytes = 0
        self._head_tail = b""
        self._head_timer: asyncio.TimerHandle | None = None

    @classmethod
    def configured(cls, max_header_bytes: int, header_timeout_s: float) -> type[HttpToolsProtocol]:
        """A subclass with these limits (uvicorn takes the protocol as a class)."""
        limits = {"max_header_bytes": max_header_bytes, "header_timeout_s": header_timeout_s}
        return type("GatewayHttpProtocol", (cls,), limits)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            if not self._head_bytes and self._head_timer is None:
                self._arm()  # the first byte of a keep-alive connection's next request
            if not self._head_fits(data):
                self._reject_head()
                return
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._disarm()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head, self._head_bytes, self._head_tail = True, 0, b""

    def _head_fits(self, data: bytes) -> bool:
        """Whether the head stays within the limit: counted up to its end if `data` holds it."""
        room = self.max_header_bytes - self._head_bytes
        if len(data) <= room:
            self._head_bytes += len(data)
            self._head_tail = (self._head_tail + data)[-3:]
            return True
        end = (self._head_tail + data).find(HEAD_END)
        return end != -1 and end + len(HEAD_END) - len(self._head_tail) <= room

    def _reject_head(self) -> None:
        self._disarm()
        body = b"request headers too large"
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
        )
        self.transport.close()

    def _arm(self) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timed_out)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        """A new connection that sent no full head in time, or a head begun and never finished
        (slowloris): closed. (Between requests, uvicorn's keep-alive timeout applies.)"""
        self._head_timer = None
        if self._in_head and not self.transport.is_closing():
            self.transport.close()

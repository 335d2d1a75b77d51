"""A recording reverse proxy for tests: put in front of an engine, it shows what the engine got.

    with RecordingProxy(engine.url) as proxy:   # then point the gateway at proxy.url
        ...; proxy.records()  # every request: method, path, query, headers, raw body, JSON
        proxy.forwarded()     # the same without GETs (the gateway's health probes)

It forwards every request byte for byte (method, path, query, headers, body) to the target and
streams the answer back as it comes, unbuffered. Unlike the fakes' own request logs it records
every path, including ones the engine does not route (a 404 from the engine is still recorded).
It runs in-process on its own event loop in a background thread (`BackgroundServer`), which the
misbehaving engine (`tests.fakes.misbehaving`) reuses. Used by the hostile-client gateway tests.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "host",
        "content-length",
    }
)
"""Headers that describe one connection, not the request: set anew on the forwarded one."""
PROBE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class Running(abc.ABC):
    """Something a test starts and stops, also as `with thing:` (start returns it)."""

    @abc.abstractmethod
    def start(self) -> Self: ...

    @abc.abstractmethod
    def stop(self) -> None: ...

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class BackgroundServer(Running):
    """An aiohttp application served on a free loopback port from a thread with its own loop."""

    def __init__(self, app: web.Application, host: str = "127.0.0.1") -> None:
        self.app = app
        self.host = host
        self.loop = asyncio.new_event_loop()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, 0))
        self.port: int = self._sock.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> Self:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self.loop).result(timeout=30)
        return self

    async def _serve(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        await web.SockSite(self._runner, self._sock).start()

    def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(runner.cleanup(), self.loop).result(timeout=30)
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=30)
        self._sock.close()

    def call(self, coro: Any, timeout: float = 30) -> Any:
        """Run a coroutine on the server's loop from the calling thread; its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=timeout)


@dataclass(frozen=True)
class Recorded:
    """One request the proxy forwarded (or tried to): what the engine was sent."""

    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    body: bytes
    at: float = field(default_factory=time.monotonic)
    """When the request arrived (time.monotonic)."""

    @property
    def json(self) -> Any:
        """The body parsed as JSON; None when empty or not JSON."""
        if not self.body:
            return None
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    def header_values(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name.lower()]


class RecordingProxy(Running):
    """Forwards everything to `target` and keeps a list of what it forwarded (thread-safe)."""

    def __init__(self, target: str) -> None:
        self.target = target.rstrip("/")
        self._records: list[Recorded] = []
        self._lock = threading.Lock()
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        app.on_startup.append(self._open_session)
        app.on_cleanup.append(self._close_session)
        self._server = BackgroundServer(app)
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return self._server.url

    def records(self, path: str | None = None) -> list[Recorded]:
        """What was forwarded so far (only to `path` if given), oldest first."""
        with self._lock:
            found = list(self._records)
        return [r for r in found if path is None or r.path == path]

    def forwarded(self, path: str | None = None) -> list[Recorded]:
        """`records(path)` without GET, HEAD and OPTIONS requests: what clients' requests caused,
        without the gateway's own health probes and model lists."""
        return [r for r in self.records(path) if r.method not in PROBE_METHODS]

    def bodies(self, path: str | None = None) -> list[Any]:
        """The parsed JSON bodies of `forwarded(path)`."""
        return [r.json for r in self.forwarded(path)]

    def clear(self) -> None:
        with self._lock:
            self._records.clear()

    async def _open_session(self, app: web.Application) -> None:
        self._session = aiohttp.ClientSession(
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=["Accept-Encoding", "User-Agent", "Content-Type"],
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
        )

    async def _close_session(self, app: web.Application) -> None:
        if self._session is not None:
            await self._session.close()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP]
        entry = Recorded(request.method, request.path, request.query_string, headers, body)
        with self._lock:
            self._records.append(entry)
        assert self._session is not None
        url = self.target + request.rel_url.raw_path
        if request.rel_url.raw_query_string:
            url += "?" + request.rel_url.raw_query_string
        async with self._session.request(
            request.method,
            url,
            headers=CIMultiDict(headers),
            data=body if body else None,
            allow_redirects=False,
        ) as upstream:
            reply = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for key, value in upstream.headers.items():
                if key.lower() not in HOP_BY_HOP:
                    reply.headers.add(key, value)
            if upstream.content_length is not None:
                reply.content_length = upstream.content_length
            await reply.prepare(request)
            async for chunk in upstream.content.iter_any():
                await reply.write(chunk)
            await reply.write_eof()
            return reply

    def start(self) -> Self:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()


@contextlib.contextmanager
def recording(target: str) -> Iterator[RecordingProxy]:
    """A started `RecordingProxy` in front of `target`, stopped on exit."""
    with RecordingProxy(target) as proxy:
        yield proxy

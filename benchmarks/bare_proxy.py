"""A featureless uvicorn + aiohttp proxy: the floor the gateway's overhead is compared against.

`gateway_overhead.py --reference` runs it beside the gateway. It forwards the body to the
upstream named for its `model` (no validation, auth, metrics, logs or dialect translation) and
streams the answer back as it arrives. Not a product: a measuring stick.

    python benchmarks/bare_proxy.py '{"bench": "http://127.0.0.1:9000"}' PORT
"""

from __future__ import annotations

import json
import sys
from typing import Any

import aiohttp
import uvicorn

Scope = dict[str, Any]


class BareProxy:
    """ASGI app: route by the request body's `model`, pooled aiohttp upstream."""

    def __init__(self, upstreams: dict[str, str]) -> None:
        self.upstreams = upstreams
        self.session: aiohttp.ClientSession | None = None

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan(receive, send)
        elif scope["path"] == "/healthz":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
        else:
            await self.proxy(scope, receive, send)

    async def lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.session = aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=1000),
                    auto_decompress=False,
                    skip_auto_headers=["Accept-Encoding"],
                    cookie_jar=aiohttp.DummyCookieJar(),
                )
                await send({"type": "lifespan.startup.complete"})
            else:
                if self.session is not None:
                    await self.session.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def proxy(self, scope: Scope, receive: Any, send: Any) -> None:
        assert self.session is not None
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        upstream = self.upstreams[json.loads(body)["model"]] + scope["path"]
        headers = {"Content-Type": "application/json"}
        async with self.session.post(upstream, data=body, headers=headers) as answer:
            content_type = answer.headers.get("Content-Type", "application/json").encode()
            if b"event-stream" in content_type:
                start = [(b"content-type", content_type)]
                await send(
                    {"type": "http.response.start", "status": answer.status, "headers": start}
                )
                while data := await answer.content.readany():
                    await send({"type": "http.response.body", "body": data, "more_body": True})
                await send({"type": "http.response.body", "body": b""})
            else:
                data = await answer.read()
                length = str(len(data)).encode()
                start = [(b"content-type", content_type), (b"content-length", length)]
                await send(
                    {"type": "http.response.start", "status": answer.status, "headers": start}
                )
                await send({"type": "http.response.body", "body": data})


def main() -> None:
    upstreams, port = json.loads(sys.argv[1]), int(sys.argv[2])
    uvicorn.run(
        BareProxy(upstreams),
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        timeout_keep_alive=75,
    )


if __name__ == "__main__":
    main()

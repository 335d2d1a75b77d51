"""Start a fake engine as a real subprocess on a free loopback port and drive it over HTTP.

    async with FakeEngine("ollama", first_token_delay_ms=50) as fake:  # or "tgi", "vllm"
        fake.url; await fake.configure(status=503); await fake.requests(); await fake.reset()

`FakeEngine("vllm", max_loras=2, lora_load_ms=200, lora_modules={"a": "/path"})` starts a fake
vLLM with LoRA slots; `await fake.lora()` reads its slot loads.

`with FakeEngine("tgi") as fake:` works too, with `configure_sync`, `reset_sync`, `requests_sync`.
`FakeEngine("ollama", host="127.0.0.2", port=11434)` binds a chosen address (default: a free port).
Used by the gateway tests, the real-model test's neighbours, the benchmark and the demo scripts.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import aiohttp

Engine = Literal["ollama", "tgi", "vllm"]
ENGINES = ("ollama", "tgi", "vllm")
REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 60.0  # a loaded 2-core machine can take seconds to import aiohttp


class FakeEngineError(RuntimeError):
    """The fake did not start, or refused a control request."""


def switch_flags(switches: dict[str, Any]) -> list[str]:
    """CLI flags for switches: `{"hang": True, "tokens": 3}` -> `["--hang", "--tokens", "3"]`."""
    flags: list[str] = []
    for name, value in switches.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, list):
            flags += [flag, ",".join(str(v) for v in value)]
        elif isinstance(value, dict):  # lora_modules={"name": "path"} -> name=path,...
            flags += [flag, ",".join(f"{k}={v}" for k, v in value.items())]
        elif value is not None:
            flags += [flag, str(value)]
    return flags


class FakeEngine:
    """A fake Ollama, TGI or vLLM subprocess; `url` is its base URL once started."""

    def __init__(
        self, engine: Engine, *, host: str = "127.0.0.1", port: int = 0, **switches: Any
    ) -> None:
        if engine not in ENGINES:
            raise ValueError(f"unknown fake engine {engine!r}")
        if not 0 <= port <= 65535:
            raise ValueError(f"invalid port {port}")
        self.engine = engine
        self.host = host
        self.port = port
        self.switches = switches
        self._proc: subprocess.Popen[str] | None = None
        self._url: str | None = None

    @property
    def url(self) -> str:
        if self._url is None:
            raise FakeEngineError("the fake engine is not running")
        return self._url

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise FakeEngineError("the fake engine is not running")
        return self._proc.pid

    # ------------------------------------------------------------ lifecycle

    def start(self) -> str:
        """Start the subprocess, wait for its `READY <url>` line and a control answer."""
        command = [sys.executable, "-m", f"tests.fakes.{self.engine}"]
        command += ["--host", self.host, "--port", str(self.port), *switch_flags(self.switches)]
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
        }
        self._proc = subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, text=True
        )
        try:
            self._url = self._read_ready_line(self._proc)
            self._wait_answering()
        except BaseException:
            self.stop()
            raise
        return self._url

    @staticmethod
    def _read_ready_line(proc: subprocess.Popen[str]) -> str:
        assert proc.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            readable, _, _ = select.select([proc.stdout], [], [], 0.5)
            if readable:
                line = proc.stdout.readline()
                if line.startswith("READY "):
                    return line.split()[1]
                if not line and proc.poll() is not None:
                    break
        raise FakeEngineError(f"fake engine did not start (exit code {proc.poll()})")

    def _wait_answering(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                self._control_sync("GET", "/_fake/config")
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        """Terminate the subprocess (kill it if it does not exit within 10 s)."""
        proc, self._proc, self._url = self._proc, None, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)

    # ------------------------------------------------------------ control (async)

    async def _control(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        timeout = aiohttp.ClientTimeout(total=30)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.request(method, self.url + path, json=body) as response,
        ):
            payload = await response.json()
            if response.status != 200:
                raise FakeEngineError(f"{method} {path}: {response.status} {payload}")
            return payload

    async def configure(self, **switches: Any) -> dict[str, Any]:
        """Merge switches into the running fake's configuration; returns the full configuration."""
        result: dict[str, Any] = await self._control("POST", "/_fake/config", switches)
        return result

    async def reset(self) -> None:
        """Back to the startup switches, with an empty request log."""
        await self._control("POST", "/_fake/reset", {})

    async def requests(self) -> list[dict[str, Any]]:
        """What the fake received on engine routes: `{path, method, headers, json}` dicts."""
        result: list[dict[str, Any]] = await self._control("GET", "/_fake/requests")
        return result

    async def stats(self) -> dict[str, int]:
        """Counters: requests, successes, failures, disconnects, and in_flight right now."""
        result: dict[str, int] = await self._control("GET", "/_fake/stats")
        return result

    async def lora(self) -> dict[str, Any]:
        """vLLM only: `{"loads": N, "active": [names in GPU slots, LRU first], "adapters":
        {name: path}}` (tests.fakes.lora)."""
        result: dict[str, Any] = await self._control("GET", "/relais-fake/lora")
        return result

    # ------------------------------------------------------------ control (sync)

    def _control_sync(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise FakeEngineError(f"{method} {path}: {exc.code} {exc.read()!r}") from exc

    def configure_sync(self, **switches: Any) -> dict[str, Any]:
        result: dict[str, Any] = self._control_sync("POST", "/_fake/config", switches)
        return result

    def reset_sync(self) -> None:
        self._control_sync("POST", "/_fake/reset", {})

    def requests_sync(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._control_sync("GET", "/_fake/requests")
        return result

    def stats_sync(self) -> dict[str, int]:
        result: dict[str, int] = self._control_sync("GET", "/_fake/stats")
        return result

    def lora_sync(self) -> dict[str, Any]:
        """vLLM only: `{"loads": N, "active": [names in GPU slots, LRU first], "adapters":
        {name: path}}` (tests.fakes.lora)."""
        result: dict[str, Any] = self._control_sync("GET", "/relais-fake/lora")
        return result

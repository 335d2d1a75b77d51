"""The adapter agent: a sidecar beside vLLM that keeps the engine's LoRA adapters as declared.

The operator mounts the LLMDeployment's adapters as a ConfigMap file (`adapters.json`,
`{"adapters": [{"name", "source", "revision"}]}`) into this container, next to the vLLM
container of every replica. Every `RELAIS_AGENT_INTERVAL_S`, and as soon as the file changes
(a ConfigMap update swaps the `..data` symlink: the file is read again each pass), the agent
reads it, asks the engine which LoRAs it holds (`GET /v1/models`: the cards with a `parent`),
and loads, unloads or reloads through vLLM's own API (`/v1/load_lora_adapter`,
`/v1/unload_lora_adapter`) on loopback, so the engine's admin API is never exposed and data
flows one way: spec -> ConfigMap -> agent -> engine. An engine that restarted (nothing loaded)
gets its adapters back on the next pass. `GET /adapters` on `RELAIS_AGENT_PORT` reports each
adapter's state for the operator's status; `GET /healthz` is the probe.

hf:// sources resolve to their snapshot in the Hugging Face cache (downloaded here first unless
`RELAIS_CACHE_READ_ONLY`, where the operator's download Job fills a shared cache and the agent
waits); other sources are paths under `RELAIS_CACHE_PATH`. Failed loads and downloads are retried
with back-off (capped at 30 s), keeping the message. Standard library, aiohttp, pydantic-settings
and (for hf:// only) huggingface_hub; run as `python -m relais_operator.adapter_agent`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import sys
import time
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

log = logging.getLogger("relais_operator.adapter_agent")

HF_PREFIX = "hf://"
BACKOFF_CAP_S = 30.0
ENGINE_TIMEOUT = aiohttp.ClientTimeout(total=10)
# Loading reads the adapter from disk into the engine: large ones take a while.
LOAD_TIMEOUT = aiohttp.ClientTimeout(total=600)


class AgentSettings(BaseSettings):
    """The agent's environment (the operator sets it on the `adapter-agent` container)."""

    model_config = SettingsConfigDict(env_prefix="RELAIS_", frozen=True, extra="ignore")

    adapters_file: Path = Path("/etc/relais/adapters/adapters.json")
    engine_url: str = "http://127.0.0.1:8000"
    agent_host: str = "0.0.0.0"
    agent_port: int = Field(default=8001, ge=0, le=65535)
    cache_path: Path = Path("/data")
    # A shared (RWX) cache: the operator's Job downloads hf:// adapters; the agent only waits.
    cache_read_only: bool = False
    agent_interval_s: float = Field(default=5.0, gt=0, le=300)
    log_level: str = "INFO"


# ---------------------------------------------------------------- the desired list and its paths


@dataclass(frozen=True)
class Adapter:
    """One declared adapter, as the ConfigMap file lists it."""

    name: str
    source: str
    revision: str | None = None

    @property
    def hf_repo(self) -> str | None:
        return self.source.removeprefix(HF_PREFIX) if self.source.startswith(HF_PREFIX) else None


def parse_desired(raw: bytes) -> list[Adapter]:
    """The adapters of an `adapters.json`, in order; ValueError when it is not one."""
    document = json.loads(raw)
    entries = document.get("adapters") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ValueError('expected {"adapters": [...]}')
    adapters = []
    for entry in entries:
        if not isinstance(entry, dict):
            raise ValueError(f"an adapter must be an object, got {entry!r}")
        name, source, revision = entry.get("name"), entry.get("source"), entry.get("revision")
        if not isinstance(name, str) or not name or not isinstance(source, str) or not source:
            raise ValueError(f"an adapter needs a name and a source, got {entry!r}")
        if revision is not None and not isinstance(revision, str):
            raise ValueError(f"revision must be a string, got {revision!r}")
        adapters.append(Adapter(name, source, revision))
    return adapters


def cache_path_of(adapter: Adapter, cache_root: Path) -> str:
    """A cache-volume source's directory (the schema forbids '/' at the start and '..')."""
    return str(cache_root / adapter.source)


# ---------------------------------------------------------------- the reconcile pass (pure)


@dataclass(frozen=True)
class Load:
    name: str
    path: str


@dataclass(frozen=True)
class Unload:
    name: str


Action = Load | Unload


def plan(
    wanted: Sequence[tuple[str, str | None]], loaded: Mapping[str, str], held: Set[str]
) -> list[Action]:
    """What to ask the engine, given the declared adapters (name, resolved path or None while
    it downloads) and the engine's LoRAs (name -> root, the path it loaded).

    Unload what is not declared; load what is declared, resolved and absent; reload (unload, then
    load) one whose root is not the declared path. Names in `held` (backing off after a failure)
    are left as they are, as are adapters still downloading.
    """
    declared = {name for name, _ in wanted}
    actions: list[Action] = [Unload(name) for name in loaded if name not in declared]
    for name, path in wanted:
        if path is None or name in held:
            continue
        if name in loaded and loaded[name] != path:
            actions.append(Unload(name))
        if loaded.get(name) != path:
            actions.append(Load(name, path))
    return actions


def engine_loras(models: Any) -> dict[str, str]:
    """The LoRAs in a `/v1/models` answer (cards with a `parent`): name -> root (their path)."""
    cards = models.get("data") if isinstance(models, dict) else None
    if not isinstance(cards, list):
        raise ValueError("the engine's /v1/models has no data list")
    return {
        str(card["id"]): str(card.get("root") or "")
        for card in cards
        if isinstance(card, dict) and card.get("parent") and card.get("id")
    }


def backoff_s(failures: int, interval_s: float) -> float:
    """Wait before retry number `failures` (1, 2, ...): doubling from the interval, 30 s cap."""
    return float(min(BACKOFF_CAP_S, interval_s * 2 ** max(0, failures - 1)))


# ---------------------------------------------------------------- state


class State(enum.StrEnum):
    DOWNLOADING = "Downloading"
    LOADING = "Loading"
    READY = "Ready"
    FAILED = "Failed"


@dataclass
class Status:
    """What `/adapters` says of one adapter; failures count toward its back-off."""

    state: State = State.LOADING
    message: str = "waiting for the engine"
    failures: int = 0
    retry_at: float = 0.0


class EngineError(Exception):
    """The engine refused a load or unload; the message is the engine's own."""


class EngineUnavailable(Exception):
    """The engine did not answer (starting, restarting, or gone)."""


@dataclass
class Agent:
    """The agent's memory between passes: the last good desired list and each adapter's status."""

    settings: AgentSettings
    desired: list[Adapter] = field(default_factory=list)
    statuses: dict[str, Status] = field(default_factory=dict)
    snapshots: dict[tuple[str, str], str] = field(default_factory=dict)
    # hf:// snapshots being found or fetched in a thread, by (repo, revision)
    downloads: dict[tuple[str, str], asyncio.Task[str]] = field(default_factory=dict)
    file_bytes: bytes | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    # ------------------------------------------------------------ the file

    def read_file(self) -> bool:
        """Read the desired list again; True when its content changed. A missing or broken
        file keeps the last good list (a ConfigMap update never leaves one half-written)."""
        try:
            raw = self.settings.adapters_file.read_bytes()
        except OSError as exc:
            if self.file_bytes is not None:
                log.warning("cannot read the adapters file", extra={"error": str(exc)})
            self.file_bytes = None
            return False
        if raw == self.file_bytes:
            return False
        self.file_bytes = raw
        try:
            desired = parse_desired(raw)
        except ValueError as exc:
            log.error("invalid adapters file, keeping the last list", extra={"error": str(exc)})
            return False
        self._adopt(desired)
        return True

    def _adopt(self, desired: list[Adapter]) -> None:
        before = {a.name: a for a in self.desired}
        for adapter in desired:
            if before.get(adapter.name) != adapter:  # new or changed: a fresh start, no back-off
                self.statuses[adapter.name] = Status()
        for name in set(before) - {a.name for a in desired}:
            self.statuses.pop(name, None)
        self.desired = desired
        log.info("adapters declared", extra={"adapters": [a.name for a in desired]})

    def file_changed(self) -> bool:
        """Cheap check between passes: has the file's content changed since the last read?"""
        try:
            return self.settings.adapters_file.read_bytes() != self.file_bytes
        except OSError:
            return self.file_bytes is not None

    # ------------------------------------------------------------ one pass

    async def reconcile(self, http: aiohttp.ClientSession) -> None:
        """One pass: resolve paths, read the engine's LoRAs, act, record states."""
        self.read_file()
        wanted = [(a.name, self._resolve(a)) for a in self.desired]
        try:
            loaded = await self._engine_loras(http)
        except EngineUnavailable as exc:
            for name, path in wanted:
                if path is not None and self.statuses[name].state != State.FAILED:
                    self._set(name, State.LOADING, f"waiting for the engine: {exc}")
            return
        now = time.monotonic()
        held = {name for name, s in self.statuses.items() if s.retry_at > now}
        actions = plan(wanted, loaded, held)
        for action in actions:
            try:
                await self._apply(http, action)
            except EngineUnavailable as exc:
                log.warning("the engine went away mid-pass", extra={"error": str(exc)})
                return
        acted = {action.name for action in actions}
        for name, path in wanted:  # already loaded at its declared path: Ready
            if path is not None and name not in acted and loaded.get(name) == path:
                self._ready(name)

    async def _apply(self, http: aiohttp.ClientSession, action: Action) -> None:
        if isinstance(action, Unload):
            try:
                await self._post(http, "/v1/unload_lora_adapter", {"lora_name": action.name})
            except EngineError as exc:  # already gone (404): the next pass sees the truth
                log.warning("unload refused", extra={"adapter": action.name, "error": str(exc)})
                return
            log.info("adapter unloaded", extra={"adapter": action.name})
            return
        self._set(action.name, State.LOADING, f"loading {action.path}")
        started = time.perf_counter()
        body = {"lora_name": action.name, "lora_path": action.path}
        try:
            await self._post(http, "/v1/load_lora_adapter", body, LOAD_TIMEOUT)
        except EngineError as exc:
            # vLLM writes `<path>` for paths under /tmp, /home, /var...: the agent knows which.
            self._fail(action.name, str(exc).replace("<path>", action.path))
            return
        elapsed_ms = round((time.perf_counter() - started) * 1000, 1)
        self._ready(action.name)
        extra = {"adapter": action.name, "path": action.path, "elapsed_ms": elapsed_ms}
        log.info("adapter loaded", extra=extra)

    # ------------------------------------------------------------ engine I/O

    async def _engine_loras(self, http: aiohttp.ClientSession) -> dict[str, str]:
        url = self.settings.engine_url + "/v1/models"
        try:
            async with http.get(url, timeout=ENGINE_TIMEOUT) as response:
                if response.status != 200:
                    raise EngineUnavailable(f"GET /v1/models answered {response.status}")
                return engine_loras(await response.json(content_type=None))
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise EngineUnavailable(str(exc) or type(exc).__name__) from exc

    async def _post(
        self,
        http: aiohttp.ClientSession,
        path: str,
        body: dict[str, str],
        limit: aiohttp.ClientTimeout = ENGINE_TIMEOUT,
    ) -> None:
        """POST to the engine; EngineError with its message on a refusal."""
        url = self.settings.engine_url + path
        try:
            async with http.post(url, json=body, timeout=limit) as response:
                status, text = response.status, await response.text()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise EngineUnavailable(str(exc) or type(exc).__name__) from exc
        if status in (502, 503, 504):  # not ready, not a refusal
            raise EngineUnavailable(f"{path} answered {status}")
        if status != 200:
            raise EngineError(error_message(status, text))

    # ------------------------------------------------------------ hf:// sources

    def _resolve(self, adapter: Adapter) -> str | None:
        """The adapter's directory, or None while its hf:// snapshot is found or fetched."""
        repo = adapter.hf_repo
        if repo is None:
            return cache_path_of(adapter, self.settings.cache_path)
        key = (repo, adapter.revision or "main")
        if key in self.snapshots:
            return self.snapshots[key]
        task = self.downloads.get(key)
        if task is None:
            if self.statuses[adapter.name].retry_at <= time.monotonic():
                self._start_download(adapter.name, key)
            return None
        if not task.done():
            self._set(adapter.name, State.DOWNLOADING, self._fetching(key))
            return None
        del self.downloads[key]
        try:
            self.snapshots[key] = task.result()
        except Waiting as exc:
            self._set(adapter.name, State.DOWNLOADING, str(exc))
            return None
        except Exception as exc:  # any hub or disk failure becomes the adapter's message
            self._fail(adapter.name, f"download of {repo}@{key[1]} failed: {exc}")
            return None
        return self.snapshots[key]

    def _fetching(self, key: tuple[str, str]) -> str:
        if self.settings.cache_read_only:
            return f"waiting for {key[0]}@{key[1]} in the shared cache"
        return f"downloading {key[0]}@{key[1]}"

    def _start_download(self, name: str, key: tuple[str, str]) -> None:
        read_only = self.settings.cache_read_only
        self._set(name, State.DOWNLOADING, self._fetching(key))
        task = asyncio.create_task(asyncio.to_thread(snapshot, key[0], key[1], read_only))
        task.add_done_callback(lambda _: self.wake.set())
        self.downloads[key] = task

    # ------------------------------------------------------------ statuses

    def _set(self, name: str, state: State, message: str) -> None:
        status = self.statuses.get(name)
        if status is None:
            return
        if status.state != state:
            extra = {"adapter": name, "state": state.value, "detail": message}
            log.info("adapter state", extra=extra)
        status.state, status.message = state, message

    def _ready(self, name: str) -> None:
        status = self.statuses.get(name)
        if status is not None:
            status.failures, status.retry_at = 0, 0.0
            self._set(name, State.READY, "loaded")

    def _fail(self, name: str, message: str) -> None:
        status = self.statuses.get(name)
        if status is None:
            return
        status.failures += 1
        delay = backoff_s(status.failures, self.settings.agent_interval_s)
        status.retry_at = time.monotonic() + delay
        status.state, status.message = State.FAILED, message
        extra = {"adapter": name, "error": message, "retry_in_s": round(delay, 1)}
        log.warning("adapter failed", extra=extra)

    def report(self) -> dict[str, Any]:
        """`GET /adapters`: every declared adapter in file order, with its state and message."""
        adapters = []
        for adapter in self.desired:
            status = self.statuses[adapter.name]
            entry = {"name": adapter.name, "state": status.state.value, "message": status.message}
            adapters.append(entry)
        return {"adapters": adapters}

    async def pause(self, stop: asyncio.Event) -> None:
        """Wait one interval, or less: until stopped, the file changes, or a download ends."""
        deadline = time.monotonic() + self.settings.agent_interval_s
        while not stop.is_set() and not self.wake.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.file_changed():
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=min(remaining, 0.25))
        self.wake.clear()

    async def close(self) -> None:
        for task in self.downloads.values():
            task.cancel()  # the thread finishes on its own; nothing waits for it


class Waiting(Exception):
    """A read-only cache does not hold the snapshot yet (the operator's Job is fetching it)."""


def snapshot(repo: str, revision: str, read_only: bool) -> str:
    """The snapshot directory of repo@revision in the HF cache (HF_HUB_CACHE), downloading it
    unless the cache is read-only. Blocking: run in a thread."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError as exc:
        raise RuntimeError("huggingface_hub is not installed in the agent's image") from exc
    try:
        return str(snapshot_download(repo, revision=revision, local_files_only=True))
    except LocalEntryNotFoundError:
        if read_only:
            raise Waiting(f"waiting for {repo}@{revision} in the shared cache") from None
    return str(snapshot_download(repo, revision=revision))


def error_message(status: int, text: str) -> str:
    """The engine's error message (vLLM: `{"error": {"message"}}`), else its status and text."""
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        message = json.loads(text)["error"]["message"]
        if isinstance(message, str) and message:
            return message
    return f"the engine answered {status}: {text.strip()[:500]}"


# ---------------------------------------------------------------- the HTTP server and the loop


def create_app(agent: Agent) -> web.Application:
    """`GET /adapters` (states) and `GET /healthz` (the agent runs)."""

    async def adapters(request: web.Request) -> web.Response:
        return web.json_response(agent.report())

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_get("/adapters", adapters)
    app.router.add_get("/healthz", healthz)
    return app


async def run(settings: AgentSettings, stop: asyncio.Event | None = None) -> None:
    """Serve `/adapters` and reconcile every interval until `stop` is set (or cancelled)."""
    stop = stop or asyncio.Event()
    agent = Agent(settings)
    runner = web.AppRunner(create_app(agent), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, settings.agent_host, settings.agent_port).start()
    log.info(
        "adapter agent started",
        extra={"engine": settings.engine_url, "file": str(settings.adapters_file)},
    )
    try:
        async with aiohttp.ClientSession() as http:
            while not stop.is_set():
                await agent.reconcile(http)
                await agent.pause(stop)
    finally:
        await agent.close()
        await runner.cleanup()


class JsonLines(logging.Formatter):
    """One JSON object per line (the gateway's shape): ts, level, logger, msg, extra fields."""

    _standard = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update((k, v) for k, v in record.__dict__.items() if k not in self._standard)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def main() -> None:
    """`python -m relais_operator.adapter_agent`: settings from the environment, JSON logs."""
    settings = AgentSettings()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines())
    logging.basicConfig(level=settings.log_level.upper(), handlers=[handler])
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(settings))


async def _main(settings: AgentSettings) -> None:
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await run(settings, stop)


if __name__ == "__main__":
    main()

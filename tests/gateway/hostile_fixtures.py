"""The hostile-client suite's world: fake engines behind recording proxies, and real gateways.

`engine_stack()` starts a fake vLLM serving two models (the dangerous case: one engine, two
names, so a request for A that reaches the engine naming B would be served), a fake Ollama (any
tag) and a fake TGI, each behind a `RecordingProxy`. `base_config(stack)` is the static config
of the shared gateway: deployments for both vLLM names, both Ollama tags, TGI, and an `openai`
kind on the vLLM engine; a key allowed only the A models and a key allowed everything.
`running_gateway(config, env)` runs `relais-gateway --config` as a subprocess (the real CLI, so
settings come from `RELAIS_GATEWAY_*` and the process's memory can be measured). Used by
`test_hostile.py` and `test_sweep.py`.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from tests.fakes.process import FakeEngine
from tests.fakes.recording import RecordingProxy
from tests.fakes.servers import GatewayProcess, gateway_process

MAX_TOKENS = 64
KEY_A = "sk-hostile-team-a-0123456789"
"""May use only the A models."""
KEY_ALL = "sk-hostile-everything-0123456789"
"""May use every model."""

VLLM_A, VLLM_B = "org/model-a", "org/model-b"  # one vLLM engine serves both names
OLLAMA_A, OLLAMA_B = "qwen2.5:0.5b", "secret-b:7b"  # one Ollama engine holds both tags
TGI_ENGINE_MODEL = "fake-org/fake-model"  # the id the fake TGI reports

A_MODELS = ("model-a", "openai-a", "ollama-a", "tgi-a")
B_MODELS = ("model-b", "ollama-b")
ENGINE_NAME = {
    "model-a": VLLM_A,
    "openai-a": VLLM_A,
    "model-b": VLLM_B,
    "ollama-a": OLLAMA_A,
    "ollama-b": OLLAMA_B,
    "tgi-a": TGI_ENGINE_MODEL,
}
"""Served name -> the engine's own name for it (what the engine must receive as `model`)."""


@dataclass
class EngineStack:
    """The three fake engines and the recording proxy in front of each."""

    vllm: FakeEngine
    ollama: FakeEngine
    tgi: FakeEngine
    vllm_proxy: RecordingProxy
    ollama_proxy: RecordingProxy
    tgi_proxy: RecordingProxy

    @property
    def proxies(self) -> tuple[RecordingProxy, ...]:
        return (self.vllm_proxy, self.ollama_proxy, self.tgi_proxy)

    def proxy_of(self, served: str) -> RecordingProxy:
        if served.startswith("ollama"):
            return self.ollama_proxy
        if served.startswith("tgi"):
            return self.tgi_proxy
        return self.vllm_proxy

    def clear(self) -> None:
        for proxy in self.proxies:
            proxy.clear()

    def recorded_bodies(self) -> list[tuple[str, Any]]:
        """(path, JSON body) of every request forwarded to any engine since the last `clear()`
        (health probes left out)."""
        return [(r.path, r.json) for proxy in self.proxies for r in proxy.forwarded()]


@contextlib.contextmanager
def engine_stack() -> Iterator[EngineStack]:
    with (
        FakeEngine("vllm", models=[VLLM_A, VLLM_B]) as vllm,
        FakeEngine("ollama") as ollama,
        FakeEngine("tgi") as tgi,
        RecordingProxy(vllm.url) as vllm_proxy,
        RecordingProxy(ollama.url) as ollama_proxy,
        RecordingProxy(tgi.url) as tgi_proxy,
    ):
        yield EngineStack(vllm, ollama, tgi, vllm_proxy, ollama_proxy, tgi_proxy)


def deployment(
    served: str, engine: str, model: str, url: str, **request_limits: Any
) -> dict[str, Any]:
    """One static deployment entry, `requestLimits.maxTokens` 64 plus `request_limits`."""
    return {
        "name": served,
        "engine": engine,
        "servedModelName": served,
        "model": model,
        "endpoints": [url],
        "requestLimits": {"maxTokens": MAX_TOKENS, **request_limits},
    }


def keys() -> dict[str, Any]:
    return {
        "keys": [
            {"name": "team-a", "key": KEY_A, "models": list(A_MODELS)},
            {"name": "everything", "key": KEY_ALL},
        ]
    }


def base_config(stack: EngineStack) -> dict[str, Any]:
    """Every deployment of the shared gateway, on the recording proxies."""
    return {
        "deployments": [
            deployment("model-a", "vllm", VLLM_A, stack.vllm_proxy.url),
            deployment("model-b", "vllm", VLLM_B, stack.vllm_proxy.url),
            deployment("openai-a", "openai", VLLM_A, stack.vllm_proxy.url),
            deployment("ollama-a", "ollama", OLLAMA_A, stack.ollama_proxy.url),
            deployment("ollama-b", "ollama", OLLAMA_B, stack.ollama_proxy.url),
            deployment("tgi-a", "tgi", TGI_ENGINE_MODEL, stack.tgi_proxy.url),
        ],
        "auth": keys(),
    }


QUIET_AUTH_LIMIT = {"RELAIS_GATEWAY_AUTH_FAILURES_PER_MINUTE": "1000000"}
"""The shared gateway sees many deliberate 401s from 127.0.0.1; they must not throttle the
other tests (the throttle has its own test and gateway)."""


@contextlib.contextmanager
def running_gateway(
    config: dict[str, Any], env: dict[str, str] | None = None, log_level: str = "info"
) -> Iterator[GatewayProcess]:
    """`relais-gateway --config` as a subprocess; its log is `log_path(running)`."""
    with gateway_process(config, log_level=log_level, env=env) as running:
        yield running


def log_path(running: GatewayProcess) -> Path:
    """Where `tests.fakes.servers.gateway_process` sends the gateway's stdout and stderr."""
    return running.config.parent / "gateway.log"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


class PeakRss:
    """Samples a process's resident memory every few ms; `growth` is peak minus the baseline
    taken on entry (bytes)."""

    def __init__(self, pid: int, interval_s: float = 0.002) -> None:
        self.process = psutil.Process(pid)
        self.interval_s = interval_s
        self.baseline = 0
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _rss(self) -> int:
        rss: int = self.process.memory_info().rss
        return rss

    def _sample(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(psutil.Error):
                self.peak = max(self.peak, self._rss())
            time.sleep(self.interval_s)

    @property
    def growth(self) -> int:
        return self.peak - self.baseline

    def __enter__(self) -> PeakRss:
        self.baseline = self.peak = self._rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        with contextlib.suppress(psutil.Error):
            self.peak = max(self.peak, self._rss())


# ---------------------------------------------------------------- request bodies and checks

CHAT: list[dict[str, Any]] = [{"role": "user", "content": "hi"}]
OPENAI_ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses")
OLLAMA_ROUTES = ("/api/chat", "/api/generate", "/api/embed", "/api/embeddings")
GENERATION_ROUTES = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/responses",
    "/api/chat",
    "/api/generate",
)
EMBEDDING_ROUTES = ("/v1/embeddings", "/api/embed", "/api/embeddings")


def body_for(route: str, model: str, **extra: Any) -> dict[str, Any]:
    """The smallest valid non-streamed body for `route` naming `model`, plus `extra`."""
    bases: dict[str, dict[str, Any]] = {
        "/v1/chat/completions": {"messages": CHAT},
        "/v1/completions": {"prompt": "hi"},
        "/v1/embeddings": {"input": "hi"},
        "/v1/responses": {"input": "hi"},
        "/api/chat": {"messages": CHAT, "stream": False},
        "/api/generate": {"prompt": "hi", "stream": False},
        "/api/embed": {"input": "hi"},
        "/api/embeddings": {"prompt": "hi"},
    }
    return {"model": model, **bases[route], **extra}


OPENAI_TOKEN_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


def engine_token_limits(path: str, body: dict[str, Any]) -> dict[str, Any]:
    """The output-token limits an engine reads from a request it received on `path`:
    Ollama's native routes read `options.num_predict`; OpenAI routes their top-level fields."""
    if path.startswith("/api/"):
        options = body.get("options")
        if isinstance(options, dict) and "num_predict" in options:
            return {"options.num_predict": options["num_predict"]}
        return {}
    return {name: body[name] for name in OPENAI_TOKEN_FIELDS if name in body}


def assert_capped(path: str, body: dict[str, Any], limit: int = MAX_TOKENS) -> None:
    """The engine got a limit, and every limit it reads is an integer in 1..`limit`."""
    limits = engine_token_limits(path, body)
    assert limits, f"no output-token limit reached the engine on {path}: {body}"
    for name, value in limits.items():
        assert isinstance(value, int), f"{name}={value!r} is not an integer"
        assert not isinstance(value, bool), f"{name}={value!r}"
        assert 1 <= value <= limit, f"{name}={value} reached the engine (limit {limit})"


def deep_array(depth: int) -> str:
    """JSON text of `depth` nested arrays (built as text: json.dumps would recurse)."""
    return "[" * depth + "]" * depth

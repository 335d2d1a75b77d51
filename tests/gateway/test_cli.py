"""The `relais-gateway` console script as a real process: static config, bad config, SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.fakes.process import FakeEngine
from tests.fakes.servers import gateway_process
from tests.gateway.conftest import OLLAMA_MODEL

SCRIPT = Path(sys.executable).parent / "relais-gateway"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_ready(url: str, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        try:
            if httpx.get(url + "/readyz").status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError("gateway did not become ready")


@pytest.fixture
def config_file(tmp_path: Path, ollama_engine: FakeEngine) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        f"""
deployments:
  - name: qwen
    engine: ollama
    servedModelName: {OLLAMA_MODEL}
    endpoints: ["{ollama_engine.url}"]
    requestLimits: {{maxTokens: 512, maxConcurrentRequests: 8}}
auth:
  keys:
    - {{name: team-a, key: "sk-secret-a", models: ["{OLLAMA_MODEL}"], requestsPerMinute: 60}}
"""
    )
    return path


@pytest.fixture
def running(config_file: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    port = free_port()
    proc = subprocess.Popen(
        [str(SCRIPT), "--config", str(config_file), "--port", str(port)],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "RELAIS_GATEWAY_SHUTDOWN_GRACE_S": "10"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def test_static_config_serves_and_logs_json(
    running: tuple[str, subprocess.Popen[str]], ollama_engine: FakeEngine
) -> None:
    url, proc = running
    body = {"model": OLLAMA_MODEL, "messages": [{"role": "user", "content": "my secret prompt"}]}
    headers = {"Authorization": "Bearer sk-secret-a", "X-Request-ID": "cli-1"}
    assert httpx.post(url + "/v1/chat/completions", json=body, headers=headers).status_code == 200
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    # uvicorn re-raises the signal after its graceful shutdown (exit status -SIGTERM).
    assert proc.returncode in (0, -signal.SIGTERM)
    assert "Application shutdown complete." in stderr
    records = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    request = next(r for r in records if r.get("request_id") == "cli-1")
    assert request["status"] == 200
    assert request["model"] == OLLAMA_MODEL
    assert request["key"] == "team-a"
    assert "latency_ms" in request
    assert "sk-secret-a" not in stderr
    assert "my secret prompt" not in stderr


def test_sigterm_drains_a_stream(
    running: tuple[str, subprocess.Popen[str]], ollama_engine: FakeEngine
) -> None:
    url, proc = running
    ollama_engine.configure_sync(token_delay_ms=150)
    body = {"model": OLLAMA_MODEL, "prompt": "x"}
    headers = {"Authorization": "Bearer sk-secret-a"}
    with httpx.stream("POST", url + "/api/generate", json=body, headers=headers, timeout=60) as r:
        lines = r.iter_lines()
        next(lines)
        proc.send_signal(signal.SIGTERM)
        rest = [json.loads(line) for line in lines if line]
    assert rest[-1]["done"] is True
    proc.wait(timeout=30)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("deployments: []\n", "auth"),
        (
            "deployments: [{name: a, servedModelName: m, engine: nope}]\nauth: {disabled: true}\n",
            "deployments.0.engine",
        ),
        ("deployments: [\n", "expected"),
    ],
)
def test_bad_config_exits_with_a_readable_error(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    result = subprocess.run(
        [str(SCRIPT), "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "configuration error" in result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_edited_keys_apply_without_a_restart(ollama_engine: FakeEngine) -> None:
    """The static config's `auth:` (a mounted Secret, in a cluster) is re-read when it changes."""
    config = {
        "deployments": [
            {
                "name": "q",
                "engine": "ollama",
                "servedModelName": "m",
                "endpoints": [ollama_engine.url],
            }
        ],
        "auth": {"keys": [{"name": "old", "key": "sk-old"}]},
    }
    env = {"RELAIS_GATEWAY_AUTH_RELOAD_INTERVAL_S": "0.2"}
    with gateway_process(config, env=env) as running:

        def status(key: str) -> int:
            headers = {"Authorization": f"Bearer {key}"}
            return httpx.get(running.url + "/v1/models", headers=headers, timeout=10).status_code

        def until(check: Callable[[], bool]) -> None:
            deadline = time.monotonic() + 10  # the bound for picking up new keys
            while not check():
                assert time.monotonic() < deadline, "the new keys did not apply within 10 s"
                time.sleep(0.1)

        assert status("sk-old") == 200
        assert status("sk-new") == 401
        edited = {**config, "auth": {"keys": [{"name": "new", "key": "sk-new"}]}}
        running.config.write_text(yaml.safe_dump(edited))
        until(lambda: status("sk-new") == 200)
        assert status("sk-old") == 401
        metrics = httpx.get(running.url + "/metrics").text
        assert 'relais_gateway_auth_reloads_total{result="ok"} 1.0' in metrics

        running.config.write_text("auth: {keys: [{name: broken}]}\n")  # no `key`: invalid
        until(
            lambda: "relais_gateway_auth_reload_ok 0.0" in httpx.get(running.url + "/metrics").text
        )
        assert status("sk-new") == 200  # the keys in force stay
        assert running.proc.poll() is None

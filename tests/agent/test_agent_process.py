"""`python -m relais_operator.adapter_agent` as the pod runs it: env, JSON logs, SIGTERM."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.agent.helpers import make_adapter, write_file
from tests.fakes.process import FakeEngine
from tests.fakes.servers import REPO_ROOT, free_port, http_get


def test_the_module_runs_from_the_environment_and_stops_on_sigterm(tmp_path: Path) -> None:
    make_adapter(tmp_path / "cache" / "adapters" / "a")
    write_file(tmp_path / "adapters.json", [{"name": "a", "source": "adapters/a"}])
    ready = {"adapters": [{"name": "a", "state": "Ready", "message": "loaded"}]}
    port = free_port()
    with FakeEngine("vllm", models=["base"]) as fake:
        env = {
            **os.environ,
            "RELAIS_ADAPTERS_FILE": str(tmp_path / "adapters.json"),
            "RELAIS_ENGINE_URL": fake.url,
            "RELAIS_AGENT_HOST": "127.0.0.1",
            "RELAIS_AGENT_PORT": str(port),
            "RELAIS_CACHE_PATH": str(tmp_path / "cache"),
            "RELAIS_AGENT_INTERVAL_S": "0.2",
        }
        command = [sys.executable, "-m", "relais_operator.adapter_agent"]
        proc = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 30
            body: dict[str, object] = {}
            while time.monotonic() < deadline:
                with contextlib.suppress(OSError):  # not listening yet
                    status, raw = http_get(f"http://127.0.0.1:{port}/adapters")
                    body = json.loads(raw) if status == 200 else body
                if body == ready:
                    break
                time.sleep(0.1)
            assert body == ready
        finally:
            proc.send_signal(signal.SIGTERM)
            _, logs = proc.communicate(timeout=15)
    assert proc.returncode == 0
    lines = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
    loaded = [line for line in lines if line["msg"] == "adapter loaded"]
    assert loaded
    assert loaded[0]["adapter"] == "a"
    assert loaded[0]["logger"] == "relais_operator.adapter_agent"

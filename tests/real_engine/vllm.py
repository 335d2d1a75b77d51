"""Real vLLM (CPU) servers started exactly as the operator would start them.

The command line comes from the operator's own engine table (`ENGINES["vllm"]`: command and
`args(spec)` for a parsed `LLMDeploymentSpec`); only `--host`/`--port` change (loopback, a free
port), and the environment adds only what a CPU run needs. So a flag the operator adds that vLLM
rejects fails here. Used by the real-engine tests, `hack/record-vllm.py` and
`benchmarks/real_routing.py`; `hack/install-vllm.sh` builds `.venv-vllm` and the model cache.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from relais_api import LLMDeploymentSpec
from relais_operator.engines import ENGINES

from tests.fakes.servers import REPO_ROOT, ServerError, free_port, stop, wait_ready

VLLM_VERSION = "0.32.0"  # what hack/install-vllm.sh installs
VLLM_VENV = REPO_ROOT / ".venv-vllm"
HF_CACHE = REPO_ROOT / ".cache" / "hf-hub"
INSTALLED = VLLM_VENV / ".installed-vllm"
# Loading, then torch.compile warming up, takes 1-4 minutes here; a loaded CI box, more.
START_TIMEOUT_S = 900

# The chat model (Gemma 3 270M with a hermes tool template, see hack/prepare-models.py). Its
# family is not in the parser table, so the spec names the parser, as a user would.
CHAT_SPEC: dict[str, Any] = {
    "engine": "vllm",
    "model": "relais-test/gemma-3-270m-it",
    "servedModelName": "gemma-3-270m",
    "gpu": {"count": 0},
    "toolCallParser": "hermes",
    "requestLimits": {"maxConcurrentRequests": 8},
    # -O0: no torch.compile at start (minutes on 2 cores, for a few tokens per test). No free
    # whitespace in constrained JSON: a tiny model pads with it until max_tokens, and a cut
    # tool call or structured answer parses as nothing.
    "args": [
        "--max-model-len",
        "1024",
        "-O0",
        "--structured-outputs-config",
        '{"backend": "xgrammar", "disable_any_whitespace": true}',
    ],
}
# LoRA on the chat server: two GPU slots, ranks up to 16, adapters loaded at run time (as the
# operator's `lora:` turns on). The agent's and the recorder's adapters are loaded into it; the
# other tests never name an adapter, so they see the server as before.
LORA_SLOTS = 2
LORA_MAX_RANK = 16


def with_lora(spec: Mapping[str, Any]) -> dict[str, Any]:
    """`spec` with LoRA on: the operator's `lora` field where the API has it, else the flags."""
    env = [*spec.get("env", []), {"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"}]
    if "lora" in LLMDeploymentSpec.model_fields:
        return {**spec, "lora": {"maxAdapters": LORA_SLOTS, "maxRank": LORA_MAX_RANK}, "env": env}
    flags = ["--enable-lora", "--max-loras", str(LORA_SLOTS), "--max-lora-rank", str(LORA_MAX_RANK)]
    return {**spec, "args": [*spec.get("args", []), *flags], "env": env}


CHAT_SPEC = with_lora(CHAT_SPEC)
EMBED_SPEC: dict[str, Any] = {
    "engine": "vllm",
    "model": "sentence-transformers/all-MiniLM-L6-v2",
    "servedModelName": "all-minilm",
    "gpu": {"count": 0},
    "args": ["--runner", "pooling", "--convert", "embed", "-O0"],
}


def missing() -> str | None:
    """Why real vLLM cannot run here, or None when `hack/install-vllm.sh` has run."""
    if not INSTALLED.exists():
        return f"{INSTALLED} is missing (run `make install` or hack/install-vllm.sh)"
    for spec in (CHAT_SPEC, EMBED_SPEC):
        if not (HF_CACHE / f"models--{spec['model'].replace('/', '--')}").exists():
            return f"{spec['model']} is not in {HF_CACHE} (run hack/install-vllm.sh)"
    return None


def require() -> None:
    """Skip with the reason real vLLM cannot run here, or fail when the run requires it
    (`RELAIS_REQUIRE_REAL_MODEL=1`, as `make test` sets)."""
    reason = missing()
    if reason is not None and os.environ.get("RELAIS_REQUIRE_REAL_MODEL") == "1":
        pytest.fail(f"RELAIS_REQUIRE_REAL_MODEL=1 but {reason}")
    if reason is not None:
        pytest.skip(reason)


def command(spec: LLMDeploymentSpec, port: int) -> list[str]:
    """The operator's vLLM command line for `spec`, listening on 127.0.0.1:`port` instead."""
    engine = ENGINES["vllm"]
    args = list(engine.args(spec))
    for flag, value in (("--host", "127.0.0.1"), ("--port", str(port))):
        args[args.index(flag) + 1] = value
    program, *rest = engine.command  # `vllm serve`: the venv's own `vllm`
    return [str(VLLM_VENV / "bin" / program), *rest, *args]


def environment(spec: LLMDeploymentSpec, cpus: str | None = None) -> dict[str, str]:
    """The operator's server environment, with the cache here and what a CPU run needs."""
    engine = ENGINES["vllm"]
    # spec.env: plain values only (a valueFrom needs a cluster to resolve).
    env = {**os.environ, **engine.serve_env, **{var.name: var.value or "" for var in spec.env}}
    env["HF_HUB_CACHE"] = str(HF_CACHE)
    env["HF_HOME"] = str(HF_CACHE.parent / "hf-home")
    # The CPU build: no GPU to find; a small KV cache (GiB) so two servers fit in memory.
    env["VLLM_TARGET_DEVICE"] = "cpu"
    env["VLLM_CPU_KVCACHE_SPACE"] = env.get("VLLM_CPU_KVCACHE_SPACE", "1")
    if cpus is not None:  # pin the OpenMP threads of this server to these cores ("0", "1", "0-1")
        env["VLLM_CPU_OMP_THREADS_BIND"] = cpus
    return env


def split_cores(count: int) -> list[str | None]:
    """OpenMP core lists for `count` servers on this machine: one core each for all but the
    first, which gets the rest. vLLM's automatic binding puts every server on the same cores."""
    cores = os.cpu_count() or 1
    if cores < count:
        return [None] * count
    first = "0" if cores == count else f"0-{cores - count}"
    return [first, *(str(core) for core in range(cores - count + 1, cores))]


@dataclass
class VllmServer:
    """A vLLM process: its base URL, the process and its log file."""

    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def tail(self, chars: int = 4000) -> str:
        """The end of the server's log, for a failure message."""
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


def launch(spec_body: Mapping[str, Any], log_dir: Path, cpus: str | None = None) -> VllmServer:
    """Start vLLM for the spec (parsed as the operator parses it); do not wait for it."""
    spec = LLMDeploymentSpec.model_validate(spec_body)
    port = free_port()
    log = log_dir / f"vllm-{spec.effective_served_model_name}-{port}.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            command(spec, port),
            cwd=REPO_ROOT,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=environment(spec, cpus),
        )
    return VllmServer(f"http://127.0.0.1:{port}", proc, log)


def wait_healthy(server: VllmServer, timeout_s: float = START_TIMEOUT_S) -> None:
    """Wait for `/health` (vLLM answers it only once the model is loaded); raise with its log."""
    try:
        wait_ready(server.url + "/health", server.proc, timeout_s)
    except ServerError as exc:
        raise ServerError(f"{exc}\n--- vLLM log ---\n{server.tail()}") from None


@contextlib.contextmanager
def running(
    *specs: Mapping[str, Any], cpus: list[str | None] | None = None
) -> Iterator[list[VllmServer]]:
    """Start one vLLM per spec at once (they load in parallel), wait for all, stop all on exit.

    `cpus`: each server's cores (VLLM_CPU_OMP_THREADS_BIND); default `split_cores`.
    """
    with tempfile.TemporaryDirectory(prefix="relais-vllm-") as tmp:
        pinned = cpus or split_cores(len(specs))
        started: list[VllmServer] = []
        try:
            for spec, cpu in zip(specs, pinned, strict=True):
                started.append(launch(spec, Path(tmp), cpu))
            for server in started:
                wait_healthy(server)
            yield started
        finally:
            for server in started:
                stop(server.proc, grace_s=30)


def sse_events(raw: str) -> dict[str, Any]:
    """A transcript's view of an SSE body: its events, and whether every one is `data: ...`
    ended by a blank line (hack/record-vllm.py records it; the fake is held to it)."""
    blocks = raw.split("\n\n")
    framed = blocks[-1] == "" and all(b.startswith("data: ") for b in blocks[:-1])
    events = [b.removeprefix("data: ") for b in blocks[:-1]]
    parsed = [e if e == "[DONE]" else json.loads(e) for e in events]
    return {"framing": "data: <json>\\n\\n" if framed else "other", "events": parsed}

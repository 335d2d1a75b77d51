"""Operator at scale: N LLMDeployments against KMock; time to reconcile, API writes, peak RSS.

Half the resources are Ollama ones, half vLLM ones. Two processes, as in a cluster: a KMock
API server (`python -m tests.operator.kmock_server`) and the real `relais-operator` console
script, talking HTTP over loopback through a kubeconfig. For each N (default 200 and 1000):

1. start the operator, wait for its liveness endpoint;
2. create N resources and time until every one has a status for its generation;
3. count the operator's writes (KMock's own request log) per created resource;
4. restart the operator (kopf re-lists and resumes every resource: a full no-op resync) and
   count its writes again;
5. read the operator's peak RSS (VmHWM) across both runs.

Targets (printed next to the figures; not asserted): 1000 reconciled <= 60 s on 2 cores,
<= 5 writes per create, 0 writes per no-op resync, <= 200 MB peak RSS at 1000.

Run: .venv/bin/python benchmarks/operator_scale.py [--n 200 --n 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp

ROOT = pathlib.Path(__file__).resolve().parents[1]
BIN = pathlib.Path(sys.executable).parent
NS = "bench"
LLMD_PATH = f"/apis/relais.dev/v1alpha1/namespaces/{NS}/llmdeployments"
AGENT = "relais-bench"
# The mix: every other resource is a vLLM one (a Hugging Face model, a GPU, a token Secret).
SPECS = [
    {"engine": "ollama", "model": "qwen2.5:0.5b", "gpu": {"count": 0}},
    {
        "engine": "vllm",
        "model": "Qwen/Qwen2.5-0.5B-Instruct",
        "gpu": {"count": 1, "type": "nvidia-l4"},
        "hfTokenSecretRef": {"name": "hf-token"},
        "requestLimits": {"maxConcurrentRequests": 32},
    },
]


@dataclass
class Result:
    n: int
    reconcile_seconds: float
    writes_per_create: float
    write_breakdown: dict[str, int]
    resync_writes: int
    resync_seconds: float
    peak_rss_mb: float


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def kmock_server() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.operator.kmock_server", "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "listening" in line, f"kmock did not start: {line!r}"
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def write_kubeconfig(directory: pathlib.Path, url: str) -> pathlib.Path:
    path = directory / "kubeconfig"
    path.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: kmock\n"
        f"clusters: [{{name: kmock, cluster: {{server: '{url}'}}}}]\n"
        "users: [{name: kmock, user: {token: bench}}]\n"
        "contexts: [{name: kmock, context: {cluster: kmock, user: kmock}}]\n"
    )
    return path


class OperatorProcess:
    """`relais-operator` as a subprocess; its log goes to a file we scan for kopf's progress."""

    def __init__(self, kubeconfig: pathlib.Path, log: pathlib.Path) -> None:
        self.kubeconfig, self.log = kubeconfig, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = free_port()
        self.peak_rss_kb = 0

    async def start(self, session: aiohttp.ClientSession) -> None:
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "RELAIS_OPERATOR_LOG_LEVEL": "INFO",
        }
        command = [str(BIN / "relais-operator"), "--liveness-port", str(self.port)]
        self.proc = self._spawn(command, env)
        url = f"http://127.0.0.1:{self.port}/healthz"
        for _ in range(600):
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(url) as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.1)
        raise RuntimeError("the operator did not become live")

    def _spawn(self, command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as log:
            return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)

    def sample_rss(self) -> None:
        """Peak resident set size so far, as the kernel counts it (VmHWM)."""
        if self.proc is None:
            return
        with contextlib.suppress(OSError):
            for line in pathlib.Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    self.peak_rss_kb = max(self.peak_rss_kb, int(line.split()[1]))

    def count(self, text: str) -> int:
        return self.log.read_text(errors="replace").count(text)

    async def stop(self) -> None:
        if self.proc is None:
            return
        self.sample_rss()
        self.proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(self.proc.wait, 60)
        self.proc = None


async def stats(session: aiohttp.ClientSession, url: str) -> dict[str, int]:
    async with session.get(f"{url}/_stats") as resp:
        data: dict[str, int] = await resp.json()
        return data


def writes(counts: dict[str, int]) -> int:
    return sum(counts.get(method, 0) for method in ("POST", "PATCH", "PUT", "DELETE"))


async def create_all(session: aiohttp.ClientSession, url: str, n: int) -> None:
    limit = asyncio.Semaphore(32)

    async def create(i: int) -> None:
        body = {
            "apiVersion": "relais.dev/v1alpha1",
            "kind": "LLMDeployment",
            "metadata": {"name": f"m{i:05d}", "namespace": NS, "uid": str(uuid.uuid4())},
            "spec": SPECS[i % len(SPECS)],
        }
        async with limit, session.post(f"{url}{LLMD_PATH}", json=body) as resp:
            assert resp.status < 300, await resp.text()

    await asyncio.gather(*(create(i) for i in range(n)))


async def reconciled(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(f"{url}{LLMD_PATH}") as resp:
        items = (await resp.json())["items"]
    return sum(1 for item in items if (item.get("status") or {}).get("observedGeneration") == 1)


async def settle(session: aiohttp.ClientSession, url: str, quiet: float = 3.0) -> dict[str, int]:
    """Wait until the operator has written nothing for `quiet` seconds."""
    last = await stats(session, url)
    while True:
        await asyncio.sleep(quiet)
        now = await stats(session, url)
        if writes(now) == writes(last):
            return now
        last = now


async def wait_for(operator: OperatorProcess, predicate: Any, limit_s: float) -> None:
    deadline = time.monotonic() + limit_s
    while not await predicate():
        operator.sample_rss()
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark step did not finish in time")
        await asyncio.sleep(0.5)


@contextlib.asynccontextmanager
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(headers={"User-Agent": AGENT}, timeout=timeout) as session:
        yield session


async def run_one(n: int, limit_s: float) -> Result:
    with kmock_server() as url, tempfile.TemporaryDirectory() as tmp:
        kubeconfig = write_kubeconfig(pathlib.Path(tmp), url)
        operator = OperatorProcess(kubeconfig, pathlib.Path(tmp) / "operator.log")
        async with client() as session:
            await operator.start(session)
            before = await stats(session, url)
            started = time.monotonic()
            await create_all(session, url, n)

            async def all_reconciled() -> bool:
                return await reconciled(session, url) >= n

            await wait_for(operator, all_reconciled, limit_s)
            reconcile_seconds = time.monotonic() - started
            after = await settle(session, url)
            breakdown = {
                key: after.get(key, 0) - before.get(key, 0)
                for key in after
                if " " in key and after.get(key, 0) != before.get(key, 0)
            }
            create_writes = writes(after) - writes(before)

            # A no-op resync: restart; kopf re-lists and resumes every resource.
            await operator.stop()
            resumed = "Resuming is processed"
            seen = operator.count(resumed)
            restarted = time.monotonic()
            await operator.start(session)

            async def all_resumed() -> bool:
                return operator.count(resumed) - seen >= n

            await wait_for(operator, all_resumed, limit_s)
            resync_seconds = time.monotonic() - restarted
            final = await settle(session, url)
            await operator.stop()
        return Result(
            n=n,
            reconcile_seconds=reconcile_seconds,
            writes_per_create=create_writes / n,
            write_breakdown=breakdown,
            resync_writes=writes(final) - writes(after),
            resync_seconds=resync_seconds,
            peak_rss_mb=operator.peak_rss_kb / 1024,
        )


def report(results: list[Result]) -> None:
    print()
    print(
        f"{'N':>6} {'reconciled (s)':>15} {'writes/create':>14} {'resync writes':>14}"
        f" {'resync (s)':>11} {'peak RSS (MB)':>14}"
    )
    for r in results:
        print(
            f"{r.n:>6} {r.reconcile_seconds:>15.1f} {r.writes_per_create:>14.2f}"
            f" {r.resync_writes:>14} {r.resync_seconds:>11.1f} {r.peak_rss_mb:>14.1f}"
        )
    print(
        "targets: 1000 reconciled <= 60 s; <= 5 writes/create; 0 resync writes; <= 200 MB at 1000"
    )
    for r in results:
        parts = ", ".join(f"{key}: {value}" for key, value in sorted(r.write_breakdown.items()))
        print(f"writes at N={r.n}: {parts}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, action="append", help="resources (repeatable)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per step")
    args = parser.parse_args()
    results = [asyncio.run(run_one(n, args.timeout)) for n in args.n or [200, 1000]]
    report(results)


if __name__ == "__main__":
    main()

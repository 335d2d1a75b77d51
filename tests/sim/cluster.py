"""SimCluster: the API server, the real operator, real gateways and the simulated node, together.

See the package docstring (`tests/sim/__init__.py`) for how tests and benchmarks use it.
Processes: the API server (`tests.sim.apiserver`), `relais-operator` and every
`relais-gateway --source kubernetes` run as subprocesses with a kubeconfig pointing at the API
server; the kubelet/controllers (`kubelet.Kubelet`) run as a task on the caller's event loop.
Every process writes its output to a log file in the cluster's work directory; `logs()` shows the
tails, and every timeout error includes them.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiohttp
import yaml

from tests.fakes.process import FakeEngine
from tests.fakes.servers import REPO_ROOT, free_port, gateway_command
from tests.operator.conftest import write_kubeconfig
from tests.sim import world
from tests.sim.kube import LLMDEPLOYMENTS, PODS, SERVICES, SLICES, Api, ApiError, path
from tests.sim.kubelet import AddressPool, Kubelet, KubeletSettings, Replica

Obj = dict[str, Any]
GATEWAY_NAMESPACE = "relais-system"
GATEWAY_SERVICE = "relais-gateway"
GATEWAY_LABELS = {world.ENGINE_LABEL: GATEWAY_SERVICE}
START_TIMEOUT_S = 60.0


class SimError(AssertionError):
    """A wait timed out or a process failed; the message carries the processes' log tails."""


def llmdeployment(
    name: str,
    model: str = "qwen2.5:0.5b",
    *,
    engine: str = "ollama",
    replicas: int = 1,
    **spec: Any,
) -> Obj:
    """An LLMDeployment body for `apply` (CPU-only: `gpu.count` 0); extra spec keys as given."""
    return {
        "apiVersion": "relais.dev/v1alpha1",
        "kind": "LLMDeployment",
        "metadata": {"name": name},
        "spec": {"engine": engine, "model": model, "replicas": replicas, "gpu": {"count": 0}}
        | spec,
    }


@dataclass
class Process:
    """A subprocess with its output in a log file."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def tail(self, chars: int = 3000) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return (
            f"--- {self.name} (pid {self.proc.pid}, exit {self.proc.poll()}) ---\n{text[-chars:]}"
        )

    async def stop(self, *, kill: bool = False, grace_s: float = 15.0) -> None:
        """SIGTERM (SIGKILL with `kill`, or after `grace_s`) and wait for the exit."""
        if self.proc.poll() is None:
            if kill:
                self.proc.kill()
            else:
                self.proc.terminate()
            try:
                await asyncio.to_thread(self.proc.wait, grace_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                await asyncio.to_thread(self.proc.wait, 10)


@dataclass
class Gateway:
    process: Process
    ip: str
    port: int
    pod: str

    @property
    def url(self) -> str:
        return f"http://{self.ip}:{self.port}"


class SimCluster:
    """A simulated cluster; `async with SimCluster(...) as sim:` (see the package docstring)."""

    def __init__(
        self,
        *,
        start_delay_s: float = 0.5,
        drain_grace_s: float = 0.5,
        drain_timeout_s: float = 30.0,
        tick_s: float = 0.2,
        engine_switches: dict[str, Any] | None = None,
        namespace: str = "default",
        operator: bool = True,
        timeout_s: float = 60.0,
        engine_network: str = "127.0.0",
        gateway_network: str = "127.0.1",
        operator_env: dict[str, str] | None = None,
        gateway_env: dict[str, str] | None = None,
        cache_seed: Path | None = None,
        agent_delay_s: float = 0.0,
    ) -> None:
        self.namespace = namespace
        # RELAIS_OPERATOR_* / RELAIS_GATEWAY_* settings of every operator and gateway started.
        self.operator_env = {
            "RELAIS_OPERATOR_GATEWAY_SERVICE": f"{GATEWAY_NAMESPACE}/{GATEWAY_SERVICE}",
            **(operator_env or {}),
        }
        self.gateway_env = dict(gateway_env or {})
        self.timeout_s = timeout_s
        self._start_operator = operator
        self._workdir = Path(tempfile.mkdtemp(prefix="relais-sim-"))
        self._settings = KubeletSettings(
            start_delay_s,
            drain_grace_s,
            drain_timeout_s,
            tick_s,
            dict(engine_switches or {}),
            workdir=self._workdir / "node",
            cache_seed=cache_seed,
            agent_delay_s=agent_delay_s,
        )
        self._engine_pool = AddressPool(engine_network, first=2)
        self._gateway_pool = AddressPool(gateway_network, first=1)
        self.kubeconfig = self._workdir / "kubeconfig"
        self.url = ""
        self.api = Api("http://unset")
        self.kubelet = Kubelet(self.api, self._settings, self._engine_pool)
        self._apiserver: Process | None = None
        self._operator: Process | None = None
        self._gateways: list[Gateway] = []
        self._gateway_port = 0
        self._kubelet_task: asyncio.Task[None] | None = None
        self._operator_runs = 0

    # ------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Self:
        try:
            await self._start_apiserver()
            await self._seed()
            self._kubelet_task = asyncio.create_task(self.kubelet.run())
            if self._start_operator:
                await self.start_operator()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop everything: gateways, operator, node (every engine), API server. Idempotent.

        Every step runs even when an earlier one fails; the first failure is raised at the end.
        """
        steps = [gateway.process.stop(grace_s=5) for gateway in self._gateways]
        self._gateways.clear()
        if self._operator is not None:
            steps.append(self._operator.stop(grace_s=10))
        steps += [self._stop_kubelet(), self.api.close()]
        if self._apiserver is not None:
            steps.append(self._apiserver.stop(grace_s=5))
        self._operator = self._apiserver = None
        failures: list[BaseException] = []
        for step in steps:
            try:
                await step
            except BaseException as exc:  # even a cancellation: every process must be stopped
                failures.append(exc)
        shutil.rmtree(self._workdir, ignore_errors=True)
        if failures:
            raise failures[0]

    async def _stop_kubelet(self) -> None:
        if self._kubelet_task is not None:
            self._kubelet_task.cancel()
            await asyncio.gather(self._kubelet_task, return_exceptions=True)
            self._kubelet_task = None
        await self.kubelet.close()
        self._gateway_pool.close()

    def _spawn(
        self, name: str, command: list[str], extra_env: dict[str, str] | None = None
    ) -> Process:
        log = self._workdir / f"{name}.log"
        env = {**os.environ, **(extra_env or {}), "KUBECONFIG": str(self.kubeconfig)}
        env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
        with log.open("wb") as sink:
            proc = subprocess.Popen(
                command, cwd=REPO_ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT
            )
        return Process(name, proc, log)

    async def _start_apiserver(self) -> None:
        self._apiserver = self._spawn("apiserver", [sys.executable, "-m", "tests.sim.apiserver"])
        line = await self._wait_line(self._apiserver, "READY ")
        self.url = line.split()[1].rstrip("/")
        write_kubeconfig(self.kubeconfig, self.url)
        self.api.base_url = self.url

    async def _wait_line(self, process: Process, prefix: str) -> str:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if process.log.exists():
                for line in process.log.read_text(errors="replace").splitlines():
                    if line.startswith(prefix):
                        return line
            if process.proc.poll() is not None:
                break
            await asyncio.sleep(0.05)
        raise SimError(f"{process.name} did not start\n{process.tail()}")

    async def _seed(self) -> None:
        """The gateways' Service (the chart's `relais-gateway`). KMock needs no Namespace objects
        (and cannot parse a POST of one), so none are created."""
        self._gateway_port = free_port(f"{self._gateway_pool.prefix}.{self._gateway_pool.first}")
        service = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": GATEWAY_SERVICE, "namespace": GATEWAY_NAMESPACE},
            "spec": {
                "selector": GATEWAY_LABELS,
                "ports": [{"name": "http", "port": self._gateway_port, "targetPort": "http"}],
            },
        }
        await self.api.create(SERVICES, service)

    # ------------------------------------------------------------ the operator

    async def start_operator(self) -> None:
        """Run `relais-operator` (all namespaces, no liveness port); a restart if it ran before."""
        if self._operator is not None and self._operator.proc.poll() is None:
            raise SimError("the operator is already running")
        self._operator_runs += 1
        command = [str(Path(sys.executable).with_name("relais-operator"))]
        command += ["--all-namespaces", "--liveness-port", "0"]
        self._operator = self._spawn(f"operator-{self._operator_runs}", command, self.operator_env)

    async def stop_operator(self, *, kill: bool = False) -> None:
        """Stop the operator: SIGTERM (kopf shuts down cleanly) or, with `kill`, SIGKILL."""
        if self._operator is not None:
            await self._operator.stop(kill=kill)

    @property
    def operator_running(self) -> bool:
        return self._operator is not None and self._operator.proc.poll() is None

    # ------------------------------------------------------------ gateways

    async def start_gateway(self, auth: Obj | None = None, log_level: str = "warning") -> str:
        """A `relais-gateway --source kubernetes` at the next 127.0.1.N, port shared; its URL.

        `auth` is the auth file's content (default `{"disabled": True}`). Returns once /readyz
        answers 200 (its watches are synced); the gateway is then an endpoint of the
        `relais-system/relais-gateway` Service's EndpointSlice.
        """
        ip = self._gateway_pool.take(self._gateway_port)
        index = len(self._gateways) + 1
        auth_file = self._workdir / f"gateway-{index}-auth.yaml"
        auth_file.write_text(yaml.safe_dump(auth if auth is not None else {"disabled": True}))
        command = [*gateway_command(), "--source", "kubernetes", "--auth-file", str(auth_file)]
        command += ["--host", ip, "--port", str(self._gateway_port), "--log-level", log_level]
        process = self._spawn(f"gateway-{index}", command, self.gateway_env)
        gateway = Gateway(process, ip, self._gateway_port, f"{GATEWAY_SERVICE}-{index}")
        self._gateways.append(gateway)
        await self.wait_for(lambda: _answers(gateway.url + "/readyz", process), "gateway /readyz")
        await self.api.create(PODS, self._gateway_pod(gateway))
        self.kubelet.wake()
        return gateway.url

    def _gateway_pod(self, gateway: Gateway) -> Obj:
        pod: Obj = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": gateway.pod,
                "namespace": GATEWAY_NAMESPACE,
                "labels": GATEWAY_LABELS,
            },
            "spec": {
                "containers": [
                    {"name": "gateway", "ports": [{"name": "http", "containerPort": gateway.port}]}
                ]
            },
        }
        pod["status"] = world.running_status(pod, gateway.ip)
        return pod

    async def stop_gateway(self, url: str, *, kill: bool = False) -> None:
        """Take the gateway out of its Service's endpoints, then stop its process."""
        gateway = next((g for g in self._gateways if g.url == url), None)
        if gateway is None:
            raise SimError(f"no gateway at {url}; running: {self.gateways}")
        self._gateways.remove(gateway)
        await self.api.delete(PODS, GATEWAY_NAMESPACE, gateway.pod)
        self.kubelet.wake()
        await gateway.process.stop(kill=kill)
        self._gateway_pool.release(gateway.ip)

    @property
    def gateways(self) -> list[str]:
        """URLs of the running gateways."""
        return [g.url for g in self._gateways]

    # ------------------------------------------------------------ kubectl-like

    def _ns(self, namespace: str | None) -> str:
        return namespace or self.namespace

    async def apply(self, body: Obj) -> Obj:
        """Create the LLMDeployment, or merge its spec/labels/annotations into the existing one."""
        body = {**body, "metadata": {**body.get("metadata", {})}}
        body["metadata"].setdefault("namespace", self.namespace)
        meta = body["metadata"]
        try:
            return await self.api.create(LLMDEPLOYMENTS, body)
        except ApiError as exc:
            if exc.status != 409:
                raise
        patch: Obj = {"spec": body.get("spec", {})}
        patch["metadata"] = {k: meta[k] for k in ("labels", "annotations") if k in meta}
        return await self.api.merge_patch(LLMDEPLOYMENTS, meta["namespace"], meta["name"], patch)

    async def get(self, name: str, namespace: str | None = None) -> Obj | None:
        """The LLMDeployment as stored (status included), or None."""
        return await self.api.get(LLMDEPLOYMENTS, self._ns(namespace), name)

    async def scale(self, name: str, replicas: int, namespace: str | None = None) -> Obj:
        """`kubectl scale`: a merge patch of the scale subresource; returns the Scale."""
        where = path(*LLMDEPLOYMENTS, self._ns(namespace), name) + "/scale"
        body = {"spec": {"replicas": replicas}}
        return await self.api.raw("PATCH", where, body, "application/merge-patch+json")

    async def get_scale(self, name: str, namespace: str | None = None) -> Obj:
        where = path(*LLMDEPLOYMENTS, self._ns(namespace), name) + "/scale"
        return await self.api.raw("GET", where)

    async def delete(self, name: str, namespace: str | None = None) -> None:
        """Delete the LLMDeployment (the simulated GC then removes its children and pods)."""
        await self.api.delete(LLMDEPLOYMENTS, self._ns(namespace), name)

    async def endpoint_slice(self, name: str, namespace: str | None = None) -> Obj | None:
        """The simulated EndpointSlice of the Service `name`."""
        return await self.api.get(SLICES, self._ns(namespace), name + world.SLICE_SUFFIX)

    async def gateway_endpoints(self) -> list[str]:
        """Ready addresses in the gateway Service's EndpointSlice (what an autoscaler reads)."""
        found = await self.api.get(SLICES, GATEWAY_NAMESPACE, GATEWAY_SERVICE + world.SLICE_SUFFIX)
        return [ip for e in _ready_endpoints(found) for ip in e["addresses"]]

    # ------------------------------------------------------------ engine processes

    def engines(self, name: str, namespace: str | None = None) -> list[FakeEngine]:
        """The running fake engines of LLMDeployment `name`, by ordinal (draining ones too)."""
        return [r.engine for r in self._running(name, namespace) if r.engine is not None]

    def replicas(self, name: str, namespace: str | None = None) -> list[str]:
        """Base URLs of the running engine processes of `name`, by ordinal (draining ones too)."""
        return [r.url for r in self._running(name, namespace)]

    def _running(self, name: str, namespace: str | None) -> list[Replica]:
        ns = self._ns(namespace)
        found = self.kubelet.replicas.values()
        mine = [r for r in found if r.llmd == name and r.namespace == ns and r.running]
        return sorted(mine, key=lambda r: r.ordinal)

    async def engine_stats(self, name: str, namespace: str | None = None) -> dict[str, Any]:
        """URL -> the fake's counters (requests, successes, failures, disconnects, in_flight)."""
        engines = self.engines(name, namespace)
        stats = await asyncio.gather(*(engine.stats() for engine in engines))
        return {engine.url: stat for engine, stat in zip(engines, stats, strict=True)}

    # ------------------------------------------------------------ waiting

    async def wait_for(
        self,
        check: Callable[[], Awaitable[Any]],
        what: str,
        timeout_s: float | None = None,
    ) -> Any:
        """Poll `check` until it returns something truthy; SimError with the logs on timeout."""
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        last: Any = None
        while True:
            self._check_alive()
            try:
                last = await check()
            except (ApiError, OSError, aiohttp.ClientError) as exc:
                last = exc
            else:
                if last:
                    return last
            if time.monotonic() > deadline:
                raise SimError(f"timed out waiting for {what}; last: {last!r}\n{self.logs()}")
            await asyncio.sleep(0.1)

    def _check_alive(self) -> None:
        task = self._kubelet_task
        if task is not None and task.done():
            raise SimError(f"the simulation loop ended: {task!r}\n{self.logs()}")
        for process in [self._apiserver, *(g.process for g in self._gateways)]:
            if process is not None and process.proc.poll() is not None:
                raise SimError(f"{process.name} exited\n{self.logs()}")

    async def wait_ready(
        self, name: str, replicas: int, namespace: str | None = None, timeout_s: float | None = None
    ) -> Obj:
        """Until `replicas` engines run, are ready endpoints, and the status counts them ready."""

        async def ready() -> Obj | None:
            llmd = await self.get(name, namespace)
            status = (llmd or {}).get("status") or {}
            endpoints = _ready_endpoints(await self.endpoint_slice(name, namespace))
            running = self._running(name, namespace)
            ok = (
                llmd is not None
                and status.get("observedGeneration") == llmd["metadata"].get("generation")
                and status.get("readyReplicas", 0) == replicas
                and len(endpoints) == replicas
                and len([r for r in running if not r.draining]) == replicas
            )
            return llmd if ok else None

        result: Obj = await self.wait_for(ready, f"{name}: {replicas} ready replicas", timeout_s)
        return result

    async def wait_phase(
        self, name: str, phase: str, namespace: str | None = None, timeout_s: float | None = None
    ) -> Obj:
        async def reached() -> Obj | None:
            llmd = await self.get(name, namespace)
            return llmd if llmd and (llmd.get("status") or {}).get("phase") == phase else None

        result: Obj = await self.wait_for(reached, f"{name}: phase {phase}", timeout_s)
        return result

    async def wait_replicas(
        self, name: str, count: int, namespace: str | None = None, timeout_s: float | None = None
    ) -> None:
        """Until exactly `count` engine processes of `name` exist (starting and draining too)."""

        async def counted() -> bool:
            ns = self._ns(namespace)
            found = [
                r for r in self.kubelet.replicas.values() if r.llmd == name and r.namespace == ns
            ]
            return len(found) == count

        await self.wait_for(counted, f"{name}: {count} engine processes", timeout_s)

    def logs(self) -> str:
        """The tails of every process's output, and the simulation's recent errors."""
        processes = [self._apiserver, self._operator, *(g.process for g in self._gateways)]
        parts = [p.tail() for p in processes if p is not None]
        for agent_log in sorted((self._workdir / "node").glob("agent-*.log")):
            parts.append(
                f"--- {agent_log.stem} ---\n" + agent_log.read_text(errors="replace")[-2000:]
            )
        parts.append("--- simulation errors ---\n" + "\n".join(self.kubelet.errors))
        return "\n".join(parts)


def _ready_endpoints(eps: Obj | None) -> list[Obj]:
    endpoints = (eps or {}).get("endpoints") or []
    return [e for e in endpoints if (e.get("conditions") or {}).get("ready") is True]


async def _answers(url: str, process: Process) -> bool:
    if process.proc.poll() is not None:
        raise SimError(f"{process.name} exited\n{process.tail()}")
    timeout = aiohttp.ClientTimeout(total=5)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as resp:
            return resp.status == 200
    except (aiohttp.ClientError, OSError, TimeoutError):
        return False

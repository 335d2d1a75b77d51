"""The simulated node and controllers, on the test's event loop, polling the API server.

Every tick (`tick_s`, or sooner when a process started or stopped) `Kubelet` lists EndpointSlices,
Pods, Services, StatefulSets and LLMDeployments (dependents before owners) and plays:
- the garbage collector: deletes objects whose owners are all gone (KMock has no GC);
- the StatefulSet controller: creates pod `<sts>-<i>` (and its claims from volumeClaimTemplates)
  for each missing ordinal below spec.replicas, deletes pods above it (podManagementPolicy
  Parallel: all at once; OrderedReady: one at a time), keeps the StatefulSet's status true;
- the kubelet: a new pod gets a loopback IP (127.0.0.2, .3, ...) and, after `start_delay_s`, a
  fake engine process there on the engine's container port, then turns Running/Ready. A deleted
  pod stays terminating (its endpoint `ready: false, serving: true, terminating: true`) while
  its requests finish (in_flight 0, after a preStop-like `drain_grace_s`, at most
  `drain_timeout_s`); then the process stops and the pod goes;
  a pod with an `adapter-agent` container (vLLM with `lora`) also runs the real agent
  (`python -m relais_operator.adapter_agent`) as a process once the engine is up (after
  `agent_delay_s`), with its container's environment, its volumes mapped to directories of this
  node (claims under `workdir/claims`, seeded from `cache_seed`; emptyDirs and ConfigMaps under
  `workdir/pods/<uid>`), the pod's address for localhost, and its ConfigMap rewritten there every
  tick it changes, as the kubelet syncs ConfigMap volumes;
- the EndpointSlice controller: one slice `<service>-sim` per Service with a selector.
Decisions are the pure functions of `world.py`; this module does the I/O and runs processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relais_operator import resources

from tests.fakes.process import Engine, FakeEngine, FakeEngineError
from tests.sim import world
from tests.sim.kube import (
    CLAIMS,
    CONFIGMAPS,
    LLMDEPLOYMENTS,
    PODS,
    SERVICES,
    SLICES,
    STATEFULSETS,
    Api,
    ApiError,
)

log = logging.getLogger("relais.sim")

Obj = dict[str, Any]


@dataclass(frozen=True)
class FakeFor:
    """How an engine is faked: which fake, and whether it serves only the fetched model."""

    fake: Engine
    only_fetched_model: bool


# One line per engine (the engine's port comes from the pod's container port named `http`).
FAKES: dict[str, FakeFor] = {
    "ollama": FakeFor("ollama", only_fetched_model=True),  # Ollama serves what was pulled
    "tgi": FakeFor("tgi", only_fetched_model=False),  # TGI answers for its one model, any name
    "vllm": FakeFor("vllm", only_fetched_model=False),  # its --served-model-name (vllm_switches)
}


class AddressPool:
    """Loopback addresses `<prefix>.<n>` handed out lowest first, each reserved while in use.

    The reservation is a socket bound to (address, port) without SO_REUSEADDR, so any other
    bind there fails (another simulation running at the same time skips the address), and then
    given SO_REUSEADDR, so the process meant to serve there (it sets SO_REUSEADDR, as the fakes
    and uvicorn do) can bind and listen beside it. A non-listening socket receives no connection.
    """

    def __init__(self, prefix: str, first: int = 2, last: int = 254) -> None:
        self.prefix, self.first, self.last = prefix, first, last
        self._held: dict[str, socket.socket] = {}

    def take(self, port: int) -> str:
        for n in range(self.first, self.last + 1):
            ip = f"{self.prefix}.{n}"
            if ip not in self._held:
                sock = _reserve(ip, port)
                if sock is not None:
                    self._held[ip] = sock
                    return ip
        raise RuntimeError(f"no free address in {self.prefix}.{self.first}-{self.last}:{port}")

    def release(self, ip: str) -> None:
        sock = self._held.pop(ip, None)
        if sock is not None:
            sock.close()

    def close(self) -> None:
        for ip in list(self._held):
            self.release(ip)


def _reserve(ip: str, port: int) -> socket.socket | None:
    sock = socket.socket()
    try:
        sock.bind((ip, port))
    except OSError:  # in use (or not an address of this host)
        sock.close()
        return None
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    return sock


@dataclass
class Replica:
    """One pod as the kubelet runs it: its address and, once started, its engine process."""

    namespace: str
    pod: str
    uid: str
    llmd: str
    ordinal: int
    ip: str
    port: int
    engine: FakeEngine | None = None
    agent: asyncio.subprocess.Process | None = None  # the adapter-agent sidecar, if the pod has one
    boot: asyncio.Future[str] | None = None  # the engine's start, in a thread (never cancelled)
    started: bool = False  # the engine answered: the pod turned Ready
    draining: bool = False
    stopped: bool = False  # the engine process is being (or has been) stopped
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{self.ip}:{self.port}"

    @property
    def running(self) -> bool:
        """The engine process is up (draining or not)."""
        return self.started and not self.stopped and self.engine is not None


@dataclass
class KubeletSettings:
    start_delay_s: float = 0.5
    drain_grace_s: float = 0.5
    drain_timeout_s: float = 30.0
    tick_s: float = 0.2
    engine_switches: Mapping[str, Any] = field(default_factory=dict)
    # Where pods' volumes live on this "node": <workdir>/claims/<ns>/<claim> (kept across pods,
    # as a PersistentVolume is) and <workdir>/pods/<uid>/<volume> (emptyDir, ConfigMap).
    workdir: Path = field(default_factory=lambda: Path("/nonexistent"))
    # Files a new claim starts with (a disk image: e.g. adapters put there beforehand).
    cache_seed: Path | None = None
    # The adapter-agent sidecar starts this long after the engine (its pod is Ready meanwhile).
    agent_delay_s: float = 0.0
    agent_interval_s: float = 0.2


class Kubelet:
    """The node + controllers loop; `replicas` is what runs, keyed by pod uid."""

    def __init__(self, api: Api, settings: KubeletSettings, pool: AddressPool) -> None:
        self.api, self.settings, self.pool = api, settings, pool
        self.replicas: dict[str, Replica] = {}
        self.errors: list[str] = []
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------ the loop

    async def run(self) -> None:
        """Tick until cancelled; a failed tick is recorded (`errors`) and the next one retries.

        Races (an object gone or created meanwhile) resolve on the next tick, as in controllers.
        """
        while True:
            try:
                await self.tick()
            except Exception as exc:  # never die: a dead simulator would look like a hung cluster
                log.exception("sim: tick failed")
                self._error(f"tick: {exc!r}")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.tick_s):
                    await self._wake.wait()

    async def tick(self) -> None:
        slices = await self.api.list(SLICES)
        claims = await self.api.list(CLAIMS)
        pods = await self.api.list(PODS)
        services = await self.api.list(SERVICES)
        sets = await self.api.list(STATEFULSETS)
        llmds = await self.api.list(LLMDEPLOYMENTS)
        live = {world.uid(obj) for obj in [*pods, *services, *sets, *llmds]}
        await self._collect_garbage(
            [
                (SLICES, slices),
                (CLAIMS, claims),
                (PODS, pods),
                (SERVICES, services),
                (STATEFULSETS, sets),
            ],
            live,
        )
        for statefulset in filter(world.managed, sets):
            await self._control(statefulset, pods)
        for pod in pods:
            self._run_pod(pod)
        if any(r.agent is not None for r in self.replicas.values()):
            self._sync_config_maps(pods, await self.api.list(CONFIGMAPS))
        self._forget_vanished({world.uid(pod) for pod in pods})
        for statefulset in filter(world.managed, sets):
            status = world.statefulset_status(statefulset, pods)
            if world.status_differs(statefulset, status):
                await self._patch(STATEFULSETS, statefulset, {"status": status}, "status")
        current = {(world.namespace(s), world.name(s)): s for s in slices}
        for service in services:
            if (service.get("spec") or {}).get("selector") and not world.terminating(service):
                await self._publish(service, pods, current)

    def wake(self) -> None:
        self._wake.set()

    # ------------------------------------------------------------ controllers

    async def _collect_garbage(
        self, groups: list[tuple[tuple[str, str], list[Obj]]], live: set[str]
    ) -> None:
        for kind, objects in groups:
            for obj in world.orphans(objects, live):
                log.info("gc: deleting %s %s/%s", kind[1], world.namespace(obj), world.name(obj))
                await self.api.delete(kind, world.namespace(obj), world.name(obj))

    async def _control(self, statefulset: Obj, pods: list[Obj]) -> None:
        """The StatefulSet controller: claims and pods for missing ordinals, excess pods deleted."""
        for index in world.missing_ordinals(statefulset, pods):
            for claim in world.claims(statefulset, index):
                await self._create_once(CLAIMS, claim)  # exists: kept from before (Retain)
            pod = world.new_pod(statefulset, index)
            log.info("statefulset: creating pod %s", world.name(pod))
            await self._create_once(PODS, pod)
        for pod in world.excess_pods(statefulset, pods):
            log.info("statefulset: deleting pod %s (scale-down)", world.name(pod))
            await self.api.delete(PODS, world.namespace(pod), world.name(pod))

    async def _publish(
        self, service: Obj, pods: list[Obj], current: Mapping[tuple[str, str], Obj]
    ) -> None:
        desired = world.endpoint_slice(service, pods)
        found = current.get((world.namespace(service), world.slice_name(service)))
        if found is None:
            await self.api.create(SLICES, desired)
        elif world.slice_differs(found, desired):
            body = {"ports": desired["ports"], "endpoints": desired["endpoints"]}
            await self._patch(SLICES, found, body)

    async def _create_once(self, kind: tuple[str, str], body: Obj) -> None:
        """Create unless it exists (409), as a controller does whose cache was a tick behind."""
        try:
            await self.api.create(kind, body)
        except ApiError as exc:
            if exc.status != 409:
                raise

    async def _patch(self, kind: tuple[str, str], obj: Obj, body: Obj, sub: str = "") -> None:
        try:
            await self.api.merge_patch(kind, world.namespace(obj), world.name(obj), body, sub)
        except ApiError as exc:
            if exc.status != 404:  # gone meanwhile: nothing to update
                raise

    # ------------------------------------------------------------ the kubelet

    def _run_pod(self, pod: Obj) -> None:
        if world.KUBELET_FINALIZER not in (world.meta(pod).get("finalizers") or ()):
            return  # not a pod this node runs (a gateway's, or already released)
        replica = self.replicas.get(world.uid(pod))
        if replica is None and not world.terminating(pod):
            self._admit(pod)
        elif replica is None:
            self._spawn(self._release(pod))  # deleted before it ever ran
        elif world.terminating(pod) and not replica.draining:
            replica.draining = True
            self._spawn(self._drain(replica, pod))

    def _admit(self, pod: Obj) -> None:
        port = world.container_port(pod, "http")
        if port is None or world.engine_of(pod) not in FAKES:
            self._error(f"pod {world.name(pod)}: no fake for engine {world.engine_of(pod)!r}")
            return
        replica = Replica(
            namespace=world.namespace(pod),
            pod=world.name(pod),
            uid=world.uid(pod),
            llmd=world.labels(pod).get(world.LABEL, ""),
            ordinal=world.ordinal(pod),
            ip=self.pool.take(port),
            port=port,
        )
        self.replicas[replica.uid] = replica
        replica.tasks.append(self._spawn(self._start(replica, pod)))

    async def _start(self, replica: Replica, pod: Obj) -> None:
        """Sandbox (IP) at once, then after the start delay the engine, then Running/Ready."""
        await self._patch(PODS, pod, {"status": world.starting_status(pod, replica.ip)}, "status")
        await asyncio.sleep(self.settings.start_delay_s)
        if replica.draining:
            return
        fake = FAKES[world.engine_of(pod)]
        switches = dict(self.settings.engine_switches)
        model = world.fetched_model(pod)
        if fake.only_fetched_model and model:
            switches["models"] = [model]
        if fake.fake == "vllm":
            switches.update(world.vllm_switches(pod))
        engine = FakeEngine(fake.fake, host=replica.ip, port=replica.port, **switches)
        replica.engine = engine
        replica.boot = asyncio.ensure_future(asyncio.to_thread(engine.start))
        try:
            await asyncio.shield(replica.boot)
        except (FakeEngineError, OSError) as exc:
            self._error(f"pod {replica.pod}: the fake engine did not start: {exc}")
            return
        replica.started = True
        log.info("kubelet: %s running at %s", replica.pod, replica.url)
        await self._patch(PODS, pod, {"status": world.running_status(pod, replica.ip)}, "status")
        self.wake()
        if world.container(pod, resources.AGENT_CONTAINER) is not None:
            await asyncio.sleep(self.settings.agent_delay_s)
            if not replica.draining:
                await self._start_agent(replica, pod)

    # ------------------------------------------------------------ the adapter-agent sidecar

    def _volume_dirs(self, replica: Replica, pod: Obj) -> dict[str, Path]:
        """Volume name -> its directory on this node (claims persist; the rest is per pod)."""
        claim = self.settings.workdir / "claims" / replica.namespace / world.cache_claim(pod)
        if not claim.exists():
            if self.settings.cache_seed is not None:
                shutil.copytree(self.settings.cache_seed, claim)
            claim.mkdir(parents=True, exist_ok=True)
        own = self.settings.workdir / "pods" / replica.uid
        dirs = {resources.CACHE_VOLUME: claim}
        for volume in (pod.get("spec") or {}).get("volumes") or ():
            if volume.get("name") != resources.CACHE_VOLUME:
                dirs[volume["name"]] = own / volume["name"]
                dirs[volume["name"]].mkdir(parents=True, exist_ok=True)
        return dirs

    async def _start_agent(self, replica: Replica, pod: Obj) -> None:
        """Run the real agent (`python -m relais_operator.adapter_agent`) as the pod's sidecar:
        its container's environment, with mount paths mapped to this node's directories, the
        engine at the pod's address (the pod's localhost), listening on the pod's address."""
        agent = world.container(pod, resources.AGENT_CONTAINER) or {}
        dirs = self._volume_dirs(replica, pod)
        mounts = {m["mountPath"]: dirs[m["name"]] for m in agent.get("volumeMounts") or ()}
        env = {}
        for key, value in world.env_of(agent).items():
            for mount in sorted(mounts, key=len, reverse=True):  # the deepest mount holds it
                if value == mount or value.startswith(mount + "/"):
                    value = str(mounts[mount]) + value[len(mount) :]
                    break
            env[key] = value
        env |= {
            "RELAIS_ENGINE_URL": replica.url,
            "RELAIS_AGENT_HOST": replica.ip,
            "RELAIS_AGENT_INTERVAL_S": str(self.settings.agent_interval_s),
            "HF_HUB_OFFLINE": "1",
        }
        self._sync_config_maps([pod], await self.api.list(CONFIGMAPS, replica.namespace))
        sink = (self.settings.workdir / f"agent-{replica.pod}-{replica.uid[:8]}.log").open("ab")
        replica.agent = await asyncio.create_subprocess_exec(
            sys.executable,
            *agent.get("command", [])[1:],
            env={**os.environ, **env},
            stdout=sink,
            stderr=asyncio.subprocess.STDOUT,
        )
        sink.close()
        log.info("kubelet: %s adapter-agent started", replica.pod)

    def _sync_config_maps(self, pods: list[Obj], config_maps: list[Obj]) -> None:
        """Write each running agent's ConfigMap into its volume (as the kubelet's sync does),
        atomically, only when it changed."""
        by_name = {(world.namespace(c), world.name(c)): c for c in config_maps}
        for pod in pods:
            replica = self.replicas.get(world.uid(pod))
            volume = world.config_map_volume(pod, resources.ADAPTERS_VOLUME)
            if replica is None or volume is None:
                continue
            found = by_name.get((replica.namespace, volume))
            where = self.settings.workdir / "pods" / replica.uid / resources.ADAPTERS_VOLUME
            where.mkdir(parents=True, exist_ok=True)
            for key, text in ((found or {}).get("data") or {}).items():
                target = where / key
                if not target.exists() or target.read_text() != text:
                    scratch = where / f".{key}.new"
                    scratch.write_text(text)
                    scratch.replace(target)

    async def _drain(self, replica: Replica, pod: Obj) -> None:
        """Terminating: let the gateways see it, wait for in-flight requests, stop, release."""
        for task in replica.tasks:
            with contextlib.suppress(Exception):
                await task
        if replica.started and replica.engine is not None:
            await asyncio.sleep(self.settings.drain_grace_s)
            await self._wait_idle(replica.engine)
        await self._stop(replica)
        await self._release(pod)
        self.pool.release(replica.ip)  # only now: the deleted pod kept its IP until it was gone

    async def _wait_idle(self, engine: FakeEngine) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.settings.drain_timeout_s):
                while True:
                    with contextlib.suppress(Exception):  # a dead engine is idle
                        if (await engine.stats())["in_flight"] == 0:
                            return
                    await asyncio.sleep(0.1)

    async def _stop(self, replica: Replica) -> None:
        replica.stopped = True
        if replica.agent is not None and replica.agent.returncode is None:
            replica.agent.terminate()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    await replica.agent.wait()
            if replica.agent.returncode is None:
                replica.agent.kill()
                await replica.agent.wait()
        if replica.engine is not None:
            await asyncio.to_thread(replica.engine.stop)
            log.info("kubelet: %s stopped", replica.pod)
        self.replicas.pop(replica.uid, None)
        self.wake()

    async def _release(self, pod: Obj) -> None:
        """Drop the kubelet's finalizer: the API server then removes the deleted pod."""
        rest = [f for f in world.meta(pod).get("finalizers") or () if f != world.KUBELET_FINALIZER]
        await self._patch(PODS, pod, {"metadata": {"finalizers": rest}})
        self.wake()

    def _forget_vanished(self, uids: set[str]) -> None:
        """Pods gone from the API without the kubelet's consent (finalizer removed): stop them."""
        for replica in [r for r in self.replicas.values() if r.uid not in uids]:
            if not replica.draining:
                replica.draining = True
                self._spawn(self._stop_after_start(replica))

    async def _stop_after_start(self, replica: Replica) -> None:
        for task in replica.tasks:
            with contextlib.suppress(Exception):
                await task
        await self._stop(replica)
        self.pool.release(replica.ip)

    # ------------------------------------------------------------ bookkeeping

    def _spawn(self, work: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._error(f"task failed: {task.exception()!r}")

    def _error(self, message: str) -> None:
        log.warning("sim: %s", message)
        self.errors = [*self.errors[-19:], message]

    async def close(self) -> None:
        """Cancel the pending work and stop every engine process (whatever state it is in)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        boots = [r.boot for r in self.replicas.values() if r.boot is not None]
        await asyncio.gather(*boots, return_exceptions=True)  # a starting process is stopped too
        engines = [r.engine for r in self.replicas.values() if r.engine is not None]
        await asyncio.gather(*(asyncio.to_thread(e.stop) for e in engines), return_exceptions=True)
        for replica in self.replicas.values():
            if replica.agent is not None and replica.agent.returncode is None:
                replica.agent.kill()
                await replica.agent.wait()
        self.replicas.clear()
        self.pool.close()

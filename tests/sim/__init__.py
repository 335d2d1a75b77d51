"""A small simulated Kubernetes cluster for end-to-end tests: real operator, real gateways.

One KMock API server (FaithfulKMock, `tests.sim.apiserver`) serves, at the same time, the real
`relais-operator` CLI, real `relais-gateway --source kubernetes` processes and the test. The
simulation plays what a cluster adds around them (`kubelet.py`, decisions in `world.py`):

- StatefulSet controller: pod `<sts>-<i>` for every ordinal below spec.replicas (labels from the
  template, ownerReference to the StatefulSet) with its PVCs from volumeClaimTemplates
  (`models-<sts>-<i>`, owned only when whenDeleted is Delete), deletion above it (Parallel: all
  at once; OrderedReady: one at a time, each waiting for the previous); a true `status`
  (replicas, readyReplicas, currentReplicas, updatedReplicas, availableReplicas,
  observedGeneration).
- kubelet: a pod gets a loopback IP (127.0.0.2, 127.0.0.3, ...; taken addresses are skipped),
  shows its fetch step running, and after `start_delay_s` runs a fake engine process
  (`tests.fakes`) on the engine's real port (container port `http`: Ollama 11434, TGI 8080);
  the fake Ollama serves the model the fetch step pulled, the fake vLLM its
  `--served-model-name` with the `--max-loras` slots of `--enable-lora`. Then the pod is
  Running/Ready. A pod with an `adapter-agent` sidecar runs the real agent as a process too
  (volumes on node directories, the ConfigMap synced; `cache_seed` fills new claims).
  A deleted pod (scale-down, GC, a test) stays terminating, as a draining pod does: its endpoint
  turns `ready: false, serving: true, terminating: true`, the process stops once its in-flight
  requests are done (after `drain_grace_s`, at most `drain_timeout_s`), then the pod goes.
- EndpointSlice controller: one slice `<service>-sim` per Service with a selector
  (`kubernetes.io/service-name` label, `addressType: IPv4`, ports by name with targets
  resolved, endpoints with `conditions` and `targetRef`). The gateways' Service
  `relais-system/relais-gateway` (port `http`) lists the running gateways the same way.
- garbage collector: objects whose owners are all gone are deleted (so deleting an
  LLMDeployment removes its StatefulSet, Service, slices and pods, and stops their processes).

Usage (pytest fixture `sim` in tests/sim/conftest.py gives the defaults)::

    from tests.sim.cluster import SimCluster, llmdeployment

    async with SimCluster(start_delay_s=0.5) as sim:            # API server + node + operator
        await sim.apply(llmdeployment("qwen", "qwen2.5:0.5b", replicas=1))
        await sim.wait_ready("qwen", 1)                          # engines, endpoints, status
        url = await sim.start_gateway()                          # http://127.0.1.1:P
        await sim.scale("qwen", 2)                               # PATCH .../qwen/scale
        sim.replicas("qwen")                                     # engine base URLs by ordinal
        await sim.engine_stats("qwen")                           # URL -> /_fake/stats
        await sim.stop_operator(kill=True); await sim.start_operator()
        await sim.delete("qwen"); await sim.wait_replicas("qwen", 0)

SimCluster(start_delay_s=0.5, drain_grace_s=0.5, drain_timeout_s=30, tick_s=0.2,
engine_switches=None, namespace="default", operator=True, timeout_s=60,
engine_network="127.0.0", gateway_network="127.0.1", operator_env=None, gateway_env=None,
cache_seed=None, agent_delay_s=0):
- `url`, `kubeconfig`, `api` (`kube.Api`: list/get/create/merge_patch/delete/raw);
- `apply(body)`, `get(name)`, `delete(name)`, `scale(name, n)` -> Scale, `get_scale(name)`,
  `endpoint_slice(name)`, `gateway_endpoints()`;
- `start_operator()`, `stop_operator(kill=False)`, `operator_running`;
- `start_gateway(auth=None, log_level="warning")` -> URL, `stop_gateway(url, kill=False)`,
  `gateways`;
- `replicas(name)` -> URLs, `engines(name)` -> `FakeEngine`s (`configure()` them),
  `engine_stats(name)`;
- `wait_ready(name, n)`, `wait_phase(name, phase)`, `wait_replicas(name, n)`,
  `wait_for(async_check, what)`: all bounded (`timeout_s`), raising `SimError` with every
  process's log tail; `logs()`.
`engine_switches` (fake-engine switches, e.g. `{"token_delay_ms": 20}`) apply to every engine
started; `wait_ready(name, n)` means n engines running and not draining, n ready endpoints in
the slice, and the LLMDeployment's status showing readyReplicas n for its current generation.
Every method taking a name also takes `namespace=` (default: the cluster's). Leaving the
`async with` (failure included) stops every process it started.

Known simplifications: the kubelet holds its pods with a finalizer (`sim.relais.dev/kubelet`),
because KMock deletes at once what a real server keeps terminating; DELETE's
propagationPolicy is not honoured (an orphaned StatefulSet's pods are collected, then
re-created); no Namespace objects (KMock cannot create them; nothing needs them); addresses
are reserved with a bound socket, so simulations running at the same time take different ones.

The package itself imports nothing: `python -m tests.sim.apiserver` stays light.
"""

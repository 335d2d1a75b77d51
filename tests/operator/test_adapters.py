"""The real operator against KMock with LoRA adapters.

Adding an adapter to a running vLLM deployment changes its ConfigMap, never the StatefulSet's
pod template; an adapter-agent's report (a tiny aiohttp server on a 127.0.0.x address, which
the test's pod reports as its podIP, as a cluster would) shows in status.adapters; a failed
adapter download Job and a name clash show too; bad input never crash-loops the operator.
"""

from __future__ import annotations

import json
import logging
import pathlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp.web
import pytest
from relais_operator import resources
from relais_operator.settings import OperatorSettings

from tests.operator.builders import make
from tests.operator.conftest import (
    LLMD_PATH,
    NS,
    POD_PATH,
    STS_PATH,
    Api,
    Operator,
    eventually,
    llmd,
    write_kubeconfig,
)
from tests.operator.test_lifecycle import (
    _condition,
    _settle,
    _status,
    _wait_object,
    _wait_status,
)
from tests.operator.test_shared_cache import JOB_PATH, _finish

CM_PATH = f"/api/v1/namespaces/{NS}/configmaps"
AGENT_HOST = "127.0.0.3"
SUPPORT = {"name": "support-bot", "source": "adapters/support-bot"}
VLLM = {
    "engine": "vllm",
    "model": "Qwen/Qwen2.5-0.5B-Instruct",
    "servedModelName": "qwen",
    "gpu": {"count": 0},
    "lora": {"maxAdapters": 2},
    "adapters": [SUPPORT],
}
SQL = {"name": "sql-writer", "source": "hf://acme/sql-lora", "revision": "v1"}


@pytest.fixture
async def fast_operator(
    server: Any, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Operator]:
    """The operator reading the adapter-agents every 0.2 s (the default is 10 s)."""
    path = write_kubeconfig(tmp_path / "kubeconfig", str(server.url).rstrip("/"))
    monkeypatch.setenv("KUBECONFIG", str(path))
    logging.getLogger("kopf").setLevel(logging.INFO)
    settings = OperatorSettings(
        liveness_port=0, metrics_port=0, adapter_poll_interval_s=0.2, adapter_poll_timeout_s=1
    )
    runner = Operator(settings)
    await runner.start()
    try:
        yield runner
    finally:
        await runner.stop()


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class FakeAgent:
    """An adapter-agent's report endpoint: GET /adapters answers `self.adapters`."""

    def __init__(self, adapters: list[dict[str, str]]) -> None:
        self.adapters = adapters
        self.port = _free_port(AGENT_HOST)
        self.reads = 0
        app = aiohttp.web.Application()
        app.router.add_get("/adapters", self._report)
        self._runner = aiohttp.web.AppRunner(app)

    async def _report(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        self.reads += 1
        return aiohttp.web.json_response({"adapters": self.adapters})

    async def start(self) -> None:
        await self._runner.setup()
        await aiohttp.web.TCPSite(self._runner, AGENT_HOST, self.port).start()

    async def stop(self) -> None:
        await self._runner.cleanup()


async def _template(api: Api, name: str) -> dict[str, Any]:
    sts = await _wait_object(api, f"{STS_PATH}/{name}")
    template: dict[str, Any] = sts["spec"]["template"]
    return template


async def _config(api: Api, name: str) -> dict[str, Any]:
    config = await _wait_object(api, f"{CM_PATH}/{name}-adapters")
    data: dict[str, Any] = json.loads(config["data"]["adapters.json"])
    return data


async def _adapters_show(api: Api, name: str, **states: str) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        status = await _status(api, name)
        shown = {a["name"]: a["state"] for a in status.get("adapters") or []}
        return status if shown == states else None

    result: dict[str, Any] = await eventually(check, what=f"{name} adapters {states}")
    return result


async def _ready_pod(api: Api, name: str, agent: FakeAgent | None) -> None:
    """Play the StatefulSet controller and the kubelet: one ready pod with its IP."""
    containers: list[dict[str, Any]] = [{"name": "model-server", "image": "vllm"}]
    if agent is not None:
        ports = [{"name": "agent", "containerPort": agent.port, "protocol": "TCP"}]
        containers.append({"name": "adapter-agent", "image": "op", "ports": ports})
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{name}-0",
            "namespace": NS,
            "labels": {resources.LABEL: name},
        },
        "spec": {"containers": containers},
        "status": {
            "phase": "Running",
            "podIP": AGENT_HOST,
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }
    await api.create(POD_PATH, pod)
    await api.patch(f"{STS_PATH}/{name}/status", {"status": {"replicas": 1, "readyReplicas": 1}})


async def test_adding_an_adapter_changes_the_configmap_not_the_pod_template(
    api: Api, fast_operator: Operator
) -> None:
    await api.create(LLMD_PATH, llmd("qwen", VLLM))
    before = await _template(api, "qwen")
    assert [c["name"] for c in before["spec"]["containers"]] == ["model-server", "adapter-agent"]
    assert (await _config(api, "qwen"))["adapters"] == [
        {"name": "support-bot", "source": "adapters/support-bot", "revision": None}
    ]
    cm = await api.get(f"{CM_PATH}/qwen-adapters") or {}
    uid = (await api.get(f"{LLMD_PATH}/qwen") or {})["metadata"]["uid"]
    assert cm["metadata"]["ownerReferences"][0]["uid"] == uid  # garbage-collected with it
    await _settle(api)

    adapters = [SUPPORT, SQL]
    await api.patch(f"{LLMD_PATH}/qwen", {"spec": {"adapters": adapters}})

    async def config_updated() -> bool:
        return len((await _config(api, "qwen"))["adapters"]) == 2

    await eventually(config_updated, what="the ConfigMap lists both adapters")
    await _settle(api)
    assert await _template(api, "qwen") == before
    sts_writes = [w for w in api.writes() if w[1].startswith(f"{STS_PATH}/qwen")]
    assert all(method != "PATCH" for method, _ in sts_writes[1:]), sts_writes

    # Removing them all: the ConfigMap empties, the pods stay as they are.
    await api.patch(f"{LLMD_PATH}/qwen", {"spec": {"adapters": []}})

    async def config_empty() -> bool:
        return not (await _config(api, "qwen"))["adapters"]

    await eventually(config_empty, what="the ConfigMap emptied")
    await _settle(api)
    assert await _template(api, "qwen") == before
    assert "adapters" not in await _status(api, "qwen")


async def test_an_agents_failed_download_shows_in_status(api: Api, fast_operator: Operator) -> None:
    failure = "401 Client Error: Unauthorized for url: https://huggingface.co/acme/sql-lora"
    agent = FakeAgent(
        [
            {"name": "support-bot", "state": "Ready", "message": ""},
            {"name": "sql-writer", "state": "Failed", "message": failure},
        ]
    )
    await agent.start()
    try:
        await api.create(LLMD_PATH, llmd("qwen", {**VLLM, "adapters": [SUPPORT, SQL]}))
        await _wait_object(api, f"{STS_PATH}/qwen")
        status = await _adapters_show(
            api, "qwen", **{"support-bot": "Pending", "sql-writer": "Pending"}
        )
        await _ready_pod(api, "qwen", agent)
        status = await _adapters_show(
            api, "qwen", **{"support-bot": "Ready", "sql-writer": "Failed"}
        )
        by_name = {a["name"]: a for a in status["adapters"]}
        assert by_name["sql-writer"]["message"] == f"qwen-0: {failure}"
        assert by_name["support-bot"]["readyReplicas"] == 1
        adapters_ready = _condition(status, "AdaptersReady")
        assert (adapters_ready["status"], adapters_ready["reason"]) == ("False", "AdapterFailed")
        assert failure in adapters_ready["message"]
        # The deployment itself is unaffected.
        assert status["phase"] == "Ready"
        assert _condition(status, "Ready")["status"] == "True"

        # The agent retries and succeeds: the status follows.
        agent.adapters = [{"name": "support-bot", "state": "Ready"}, {**SQL, "state": "Ready"}]
        status = await _adapters_show(
            api, "qwen", **{"support-bot": "Ready", "sql-writer": "Ready"}
        )
        assert _condition(status, "AdaptersReady")["reason"] == "AllAdaptersReady"

        # Polling again and again writes nothing new (status is written only when it changes).
        await _settle(api, quiet=2.0)
        count, reads = len(api.writes()), agent.reads
        await _settle(api, quiet=2.0)
        assert agent.reads > reads
        assert api.writes()[count:] == []
    finally:
        await agent.stop()


async def test_an_agent_that_does_not_answer_is_skipped(api: Api, fast_operator: Operator) -> None:
    agent = FakeAgent([])  # never started: nothing listens on its port
    await api.create(LLMD_PATH, llmd("qwen", VLLM))
    await _wait_object(api, f"{STS_PATH}/qwen")
    await _ready_pod(api, "qwen", agent)
    await _wait_status(api, "qwen", phase="Ready")
    await _settle(api)
    status = await _adapters_show(api, "qwen", **{"support-bot": "Pending"})
    assert "adapter-agent" in status["adapters"][0]["message"]
    await _settle(api)
    assert fast_operator.alive


SHARED = {**VLLM, "adapters": [SQL], "storage": {"accessMode": "ReadWriteMany"}}


async def test_a_failed_adapter_job_shows_failed(api: Api, fast_operator: Operator) -> None:
    llm = make("qwen", SHARED)
    fetch = resources.fetch_job_name(llm)
    job = resources.adapter_job_name(llm, llm.spec.adapters[0])
    await api.create(LLMD_PATH, llmd("qwen", SHARED))
    body = await _wait_object(api, f"{JOB_PATH}/{job}")
    env = {
        e["name"]: e.get("value") for e in body["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert (env["RELAIS_MODEL"], env["RELAIS_REVISION"]) == ("acme/sql-lora", "v1")
    await _adapters_show(api, "qwen", **{"sql-writer": "Downloading"})

    # The model's Job alone gates the replicas (the agents wait for the adapters' files).
    await _finish(api, fetch)

    async def scaled_up() -> bool:
        sts = await api.get(f"{STS_PATH}/qwen") or {}
        return bool(sts.get("spec", {}).get("replicas") == 1)

    await eventually(scaled_up, what="replicas start before the adapter is downloaded")

    await _finish(api, job, "Repository Not Found for url: https://huggingface.co/acme/sql-lora")
    status = await _adapters_show(api, "qwen", **{"sql-writer": "Failed"})
    [entry] = status["adapters"]
    assert f"download Job {job} failed: Repository Not Found" in entry["message"]
    assert _condition(status, "ModelCacheReady")["status"] == "True"

    # Removing the adapter deletes its Job.
    await api.patch(f"{LLMD_PATH}/qwen", {"spec": {"adapters": []}})

    async def job_gone() -> bool:
        return await api.get(f"{JOB_PATH}/{job}") is None

    await eventually(job_gone, what="the adapter's Job deleted")
    assert await api.get(f"{JOB_PATH}/{fetch}") is not None


async def test_a_name_clash_shows_conflict(api: Api, fast_operator: Operator) -> None:
    await api.create(LLMD_PATH, llmd("qwen", VLLM))
    await _adapters_show(api, "qwen", **{"support-bot": "Pending"})
    other = {"engine": "ollama", "model": "qwen2.5:0.5b", "gpu": {"count": 0}}
    await api.create(LLMD_PATH, llmd("bot", {**other, "servedModelName": "support-bot"}))
    status = await _adapters_show(api, "qwen", **{"support-bot": "Conflict"})
    [entry] = status["adapters"]
    assert "served model name of LLMDeployment default/bot" in entry["message"]
    assert _condition(status, "AdaptersReady")["reason"] == "AdapterConflict"

    # The other deployment goes away: the conflict clears.
    await api.delete(f"{LLMD_PATH}/bot")
    await _adapters_show(api, "qwen", **{"support-bot": "Pending"})


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({**VLLM, "adapters": [{"name": "x", "source": "../../etc"}]}, "source must be"),
        ({**VLLM, "adapters": [{"name": "Bad_Name", "source": "a"}]}, "spec.adapters.0.name"),
        ({**VLLM, "adapters": [{"name": "qwen", "source": "a"}]}, "served model name"),
        ({**VLLM, "adapters": [SUPPORT, SUPPORT]}, "duplicate name"),
        ({**VLLM, "lora": None}, "adapters need lora"),
        (
            {
                "engine": "ollama",
                "model": "m",
                "gpu": {"count": 0},
                "adapters": [{"name": "a", "source": "hf://a/b"}],
            },
            "with engine ollama",
        ),
        ({"engine": "tgi", "model": "a/b", "gpu": {"count": 0}, "lora": {}}, "lora is only valid"),
    ],
)
async def test_hostile_adapter_specs_are_invalid_not_fatal(
    api: Api, fast_operator: Operator, spec: dict[str, Any], message: str
) -> None:
    """KMock does not run CEL: the operator's own mirror must refuse these, once, readably."""
    spec = {key: value for key, value in spec.items() if value is not None}
    await api.create(LLMD_PATH, llmd("bad", spec))

    async def invalid() -> dict[str, Any] | None:
        status = await _status(api, "bad")
        return status if status.get("phase") == "Invalid" else None

    status = await eventually(invalid, what="phase Invalid")
    ready = _condition(status, "Ready")
    assert ready["reason"] == "InvalidSpec"
    assert message in ready["message"]
    assert await api.get(f"{STS_PATH}/bad") is None
    await _settle(api)
    assert fast_operator.alive


async def test_tgi_replicas_wait_for_the_adapters_they_read_at_start(
    api: Api, fast_operator: Operator
) -> None:
    spec = {
        "engine": "tgi",
        "model": "google/gemma-2-2b-it",
        "gpu": {"count": 0},
        "adapters": [SQL, SUPPORT],
        "storage": {"accessMode": "ReadWriteMany"},
    }
    llm = make("gemma", spec)
    fetch = resources.fetch_job_name(llm)
    [job] = [resources.adapter_job_name(llm, a) for a in resources.downloaded_adapters(llm)]
    await api.create(LLMD_PATH, llmd("gemma", spec))
    await _wait_object(api, f"{JOB_PATH}/{job}")
    await _finish(api, fetch)
    await _adapters_show(api, "gemma", **{"sql-writer": "Downloading", "support-bot": "Pending"})
    await _settle(api)
    assert (await api.get(f"{STS_PATH}/gemma") or {})["spec"]["replicas"] == 0
    await _finish(api, job)

    async def scaled_up() -> bool:
        sts = await api.get(f"{STS_PATH}/gemma") or {}
        return bool(sts.get("spec", {}).get("replicas") == 1)

    await eventually(scaled_up, what="replicas start once the adapter is cached")
    sts = await api.get(f"{STS_PATH}/gemma") or {}
    env = {
        e["name"]: e.get("value") for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["LORA_ADAPTERS"].startswith("sql-writer=/data/relais-adapters/")
    await api.patch(f"{STS_PATH}/gemma/status", {"status": {"replicas": 1, "readyReplicas": 1}})
    status = await _adapters_show(api, "gemma", **{"sql-writer": "Ready", "support-bot": "Ready"})
    assert "loaded at start" in status["adapters"][0]["message"]

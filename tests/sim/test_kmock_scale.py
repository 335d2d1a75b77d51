"""FaithfulKMock's `scale` subresource of the LLMDeployment CRD, against a real server's answers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import kmock
import pytest
import yaml

from tests.operator import kmock_scale
from tests.operator.kmock_server import FaithfulKMock, declare_resources

LLMD = "/apis/relais.dev/v1alpha1/namespaces/default/llmdeployments"
MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"


@pytest.fixture
async def server() -> AsyncIterator[str]:
    async with FaithfulKMock() as emulator, kmock.Server(emulator) as srv:
        declare_resources(emulator)
        yield str(srv.url).rstrip("/")


async def call(url: str, method: str, path: str, body: Any = None, kind: str = MERGE) -> Any:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url + path, json=body, headers={"Content-Type": kind}) as resp,
    ):
        return resp.status, await resp.json()


async def created(url: str) -> dict[str, Any]:
    body = {
        "apiVersion": "relais.dev/v1alpha1",
        "kind": "LLMDeployment",
        "metadata": {"name": "qwen", "namespace": "default"},
        "spec": {"engine": "ollama", "model": "qwen2.5:0.5b", "replicas": 1},
    }
    status, obj = await call(url, "POST", LLMD, body, "application/json")
    assert status == 201 or status == 200, obj
    status, obj = await call(
        url, "PATCH", LLMD + "/qwen/status", {"status": {"replicas": 1, "selector": "a=b"}}
    )
    assert status == 200, obj
    return dict(obj)


async def test_get_scale_is_an_autoscaling_v1_scale(server: str) -> None:
    obj = await created(server)
    status, scale = await call(server, "GET", LLMD + "/qwen/scale")
    assert status == 200
    assert scale == {
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            key: obj["metadata"][key]
            for key in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
        },
        "spec": {"replicas": 1},
        "status": {"replicas": 1, "selector": "a=b"},
    }


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        ({"spec": {"replicas": 3}}, MERGE),
        ([{"op": "replace", "path": "/spec/replicas", "value": 3}], JSON_PATCH),
    ],
)
async def test_patch_scale_writes_spec_replicas_and_bumps_generation(
    server: str, body: Any, kind: str
) -> None:
    obj = await created(server)
    status, scale = await call(server, "PATCH", LLMD + "/qwen/scale", body, kind)
    assert status == 200, scale
    assert scale["kind"] == "Scale"
    assert scale["spec"] == {"replicas": 3}
    assert scale["status"]["replicas"] == 1  # the status is the controller's, not the patch's
    _, after = await call(server, "GET", LLMD + "/qwen")
    assert after["spec"] == {**obj["spec"], "replicas": 3}  # nothing else of the spec changed
    assert after["metadata"]["generation"] == obj["metadata"]["generation"] + 1
    assert after["metadata"]["resourceVersion"] == scale["metadata"]["resourceVersion"]
    assert after["metadata"]["resourceVersion"] != obj["metadata"]["resourceVersion"]


async def test_patch_scale_ignores_everything_but_spec_replicas(server: str) -> None:
    obj = await created(server)
    body = {"spec": {"replicas": 2}, "status": {"replicas": 9}, "metadata": {"labels": {"x": "y"}}}
    status, scale = await call(server, "PATCH", LLMD + "/qwen/scale", body)
    assert status == 200, scale
    _, after = await call(server, "GET", LLMD + "/qwen")
    assert after["status"]["replicas"] == 1
    assert after["metadata"].get("labels") == obj["metadata"].get("labels")


@pytest.mark.parametrize("replicas", [-1, "2", None, True])
async def test_invalid_scale_is_422_and_writes_nothing(server: str, replicas: Any) -> None:
    obj = await created(server)
    status, answer = await call(
        server, "PATCH", LLMD + "/qwen/scale", {"spec": {"replicas": replicas}}
    )
    assert status == 422
    assert answer["kind"] == "Status"
    assert answer["reason"] == "Invalid"
    _, after = await call(server, "GET", LLMD + "/qwen")
    assert after["metadata"]["resourceVersion"] == obj["metadata"]["resourceVersion"]


async def test_scale_of_a_missing_resource_is_404(server: str) -> None:
    status, answer = await call(server, "GET", LLMD + "/nothing/scale")
    assert status == 404
    assert answer["reason"] == "NotFound"
    status, _ = await call(server, "PATCH", LLMD + "/nothing/scale", {"spec": {"replicas": 1}})
    assert status == 404


def test_scale_paths_come_from_the_crd() -> None:
    expected = kmock_scale.ScalePaths("spec.replicas", "status.replicas", "status.selector")
    found = kmock_scale.crd_scale_paths(yaml.safe_load(kmock_scale.CRD.read_text()))
    assert found == {"relais.dev/v1alpha1/llmdeployments": expected}
    assert found == kmock_scale.SCALES


async def test_watchers_see_the_scaled_resource(server: str) -> None:
    await created(server)
    async with (
        aiohttp.ClientSession() as session,
        session.get(server + LLMD, params={"watch": "true"}) as watch,
    ):
        status, _ = await call(server, "PATCH", LLMD + "/qwen/scale", {"spec": {"replicas": 4}})
        assert status == 200
        async with asyncio.timeout(30):
            async for line in watch.content:
                event = json.loads(line) if line.strip() else {}
                if event.get("type") == "MODIFIED":
                    assert event["object"]["spec"]["replicas"] == 4
                    break

"""The simulated controllers' pure decisions (world.py), on hand-made objects."""

from __future__ import annotations

from typing import Any

from tests.sim import world


def statefulset(replicas: int = 2, generation: int = 3) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {
            "name": "qwen",
            "namespace": "ns",
            "uid": "sts-uid",
            "generation": generation,
            "labels": {world.LABEL: "qwen"},
        },
        "spec": {
            "replicas": replicas,
            "serviceName": "qwen",
            "template": {
                "metadata": {"labels": {world.LABEL: "qwen", world.ENGINE_LABEL: "ollama"}},
                "spec": {
                    "initContainers": [
                        {
                            "name": "fetch-model",
                            "env": [
                                {"name": "HOME", "value": "/tmp"},
                                {"name": "RELAIS_MODEL", "value": "m:1"},
                            ],
                        }
                    ],
                    "containers": [
                        {
                            "name": "model-server",
                            "ports": [{"name": "http", "containerPort": 11434}],
                        }
                    ],
                },
            },
        },
    }


def pod(
    index: int, *, ready: bool = True, ip: str | None = "127.0.0.9", leaving: bool = False
) -> dict[str, Any]:
    result = world.new_pod(statefulset(), index)
    result["metadata"]["uid"] = f"pod-{index}"
    if ip is not None:
        maker = world.running_status if ready else world.starting_status
        result["status"] = maker(result, ip)
    if leaving:
        result["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return result


def service() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "qwen", "namespace": "ns", "uid": "svc-uid"},
        "spec": {
            "selector": {world.LABEL: "qwen"},
            "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
        },
    }


def test_new_pod_comes_from_the_template_and_is_owned_and_held() -> None:
    made = world.new_pod(statefulset(), 1)
    assert made["metadata"]["name"] == "qwen-1"
    assert made["metadata"]["labels"][world.ENGINE_LABEL] == "ollama"
    assert made["metadata"]["ownerReferences"][0]["uid"] == "sts-uid"
    assert made["metadata"]["finalizers"] == [world.KUBELET_FINALIZER]
    assert made["spec"]["hostname"] == "qwen-1"
    assert made["status"]["phase"] == "Pending"
    assert world.fetched_model(made) == "m:1"
    assert world.container_port(made, "http") == 11434
    assert world.container_port(made, 8080) == 8080
    assert world.container_port(made, "metrics") is None


def test_missing_and_excess_pods() -> None:
    pods = [pod(0), pod(2), pod(3, leaving=True)]
    assert world.missing_ordinals(statefulset(replicas=3), pods) == [1]  # 2 exists, 3 leaves
    assert world.missing_ordinals(statefulset(replicas=5), pods) == [1, 4]  # 3 blocks its name
    assert [world.name(p) for p in world.excess_pods(statefulset(replicas=1), pods)] == ["qwen-2"]
    assert world.excess_pods(statefulset(replicas=3), pods) == []


def test_statefulset_status_counts_live_and_ready_pods() -> None:
    pods = [pod(0), pod(1, ready=False), pod(2, leaving=True)]
    assert world.statefulset_status(statefulset(generation=7), pods) == {
        "observedGeneration": 7,
        "replicas": 2,
        "readyReplicas": 1,
        "currentReplicas": 2,
        "updatedReplicas": 2,
        "availableReplicas": 1,
    }


def test_endpoint_conditions_follow_the_pod() -> None:
    assert world.endpoint(pod(0, ip=None)) is None  # no IP yet: not an endpoint
    assert world.endpoint(pod(0))["conditions"] == {  # type: ignore[index]
        "ready": True,
        "serving": True,
        "terminating": False,
    }
    assert world.endpoint(pod(0, ready=False))["conditions"]["ready"] is False  # type: ignore[index]
    assert world.endpoint(pod(0, leaving=True))["conditions"] == {  # type: ignore[index]
        "ready": False,
        "serving": True,
        "terminating": True,
    }


def test_endpoint_slice_of_a_service() -> None:
    stranger = pod(5)
    stranger["metadata"]["labels"] = {world.LABEL: "other"}
    eps = world.endpoint_slice(
        service(), [pod(1, ip="127.0.0.3"), pod(0, ip="127.0.0.2"), stranger]
    )
    assert eps["metadata"]["name"] == "qwen-sim"
    assert eps["metadata"]["labels"][world.SERVICE_NAME_LABEL] == "qwen"
    assert eps["metadata"]["ownerReferences"][0]["uid"] == "svc-uid"
    assert eps["ports"] == [{"name": "http", "port": 11434, "protocol": "TCP"}]  # target resolved
    assert [e["addresses"] for e in eps["endpoints"]] == [["127.0.0.2"], ["127.0.0.3"]]
    assert eps["endpoints"][0]["targetRef"]["name"] == "qwen-0"
    assert not world.slice_differs(
        eps, world.endpoint_slice(service(), [pod(0, ip="127.0.0.2"), pod(1, ip="127.0.0.3")])
    )
    assert world.slice_differs(eps, world.endpoint_slice(service(), [pod(0, ip="127.0.0.2")]))


def test_orphans_are_objects_whose_owners_are_all_gone() -> None:
    owned = pod(0)
    free = {"metadata": {"name": "x"}}
    leaving = pod(1, leaving=True)
    assert world.orphans([owned, free, leaving], {"sts-uid"}) == []
    assert world.orphans([owned, free, leaving], set()) == [owned]  # `leaving` is already going


def test_ordered_ready_creates_and_deletes_one_pod_at_a_time() -> None:
    ordered = statefulset(replicas=3)
    ordered["spec"]["podManagementPolicy"] = "OrderedReady"
    assert world.missing_ordinals(ordered, []) == [0]
    assert world.missing_ordinals(ordered, [pod(0, ready=False)]) == []  # 0 is not Ready yet
    assert world.missing_ordinals(ordered, [pod(0)]) == [1]
    ordered["spec"]["replicas"] = 0
    assert [world.name(p) for p in world.excess_pods(ordered, [pod(0), pod(1)])] == ["qwen-1"]
    assert world.excess_pods(ordered, [pod(0), pod(1, leaving=True)]) == []  # one at a time


def test_claims_from_the_volume_claim_templates() -> None:
    owner = statefulset()
    template = {"metadata": {"name": "models", "labels": {"a": "b"}}, "spec": {"x": 1}}
    owner["spec"]["volumeClaimTemplates"] = [template]
    owner["spec"]["persistentVolumeClaimRetentionPolicy"] = {"whenDeleted": "Delete"}
    [claim] = world.claims(owner, 2)
    assert claim["metadata"]["name"] == "models-qwen-2"
    assert claim["metadata"]["labels"] == {"a": "b"}
    assert claim["metadata"]["ownerReferences"][0]["uid"] == "sts-uid"
    assert claim["spec"] == {"x": 1}
    owner["spec"]["persistentVolumeClaimRetentionPolicy"] = {"whenDeleted": "Retain"}
    assert "ownerReferences" not in world.claims(owner, 2)[0]["metadata"]
    assert world.claims(statefulset(), 0) == []

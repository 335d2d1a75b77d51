"""The `scale` subresource of custom resources, as a real API server serves it, for FaithfulKMock.

KMock alone serves the whole object at `.../NAME/scale` and merges a PATCH's body into it. A real
server answers with an `autoscaling/v1` Scale built from the CRD's scale paths (spec.replicas,
status.replicas, status.selector), and a PATCH of that Scale (merge or JSON patch, as
`kubectl scale` and autoscalers send) writes only the resource's replicas. The paths are read
from the CRD itself (manifests/crd.yaml, the one source). Pure functions; `kmock_server` serves.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonpatch  # a dependency of kmock (it applies JSON patches with it too)
import yaml

CRD = Path(__file__).resolve().parents[2] / "manifests" / "crd.yaml"


@dataclass(frozen=True)
class ScalePaths:
    """A CRD's scale subresource: where replicas and the selector live (dotted paths)."""

    spec: str
    status: str
    selector: str | None


def crd_scale_paths(crd: dict[str, Any]) -> dict[str, ScalePaths]:
    """`group/version/plural` -> the scale paths of every version declaring a scale subresource."""
    spec, found = crd["spec"], {}
    for version in spec["versions"]:
        scale = (version.get("subresources") or {}).get("scale")
        if scale is not None:
            key = f"{spec['group']}/{version['name']}/{spec['names']['plural']}"
            found[key] = ScalePaths(
                scale["specReplicasPath"].lstrip("."),
                scale["statusReplicasPath"].lstrip("."),
                (scale.get("labelSelectorPath") or "").lstrip(".") or None,
            )
    return found


SCALES = crd_scale_paths(yaml.safe_load(CRD.read_text()))


def lookup(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = obj.get(part) if isinstance(obj, dict) else None
    return obj


def nested(path: str, value: Any) -> dict[str, Any]:
    """`nested("spec.replicas", 2)` -> `{"spec": {"replicas": 2}}` (a merge patch)."""
    result: Any = value
    for part in reversed(path.split(".")):
        result = {part: result}
    return dict(result)


def to_scale(obj: dict[str, Any], paths: ScalePaths) -> dict[str, Any]:
    """The autoscaling/v1 Scale a real API server shows for a custom resource."""
    meta = obj.get("metadata") or {}
    keep = ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
    status: dict[str, Any] = {"replicas": int(lookup(obj, paths.status) or 0)}
    selector = lookup(obj, paths.selector) if paths.selector else None
    if selector:
        status["selector"] = selector
    return {
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {key: meta[key] for key in keep if key in meta},
        "spec": {"replicas": int(lookup(obj, paths.spec) or 0)},
        "status": status,
    }


def patched_replicas(scale: dict[str, Any], patch: Any, content_type: str | None) -> int:
    """spec.replicas of `scale` after a JSON patch or a merge patch; ValueError when invalid."""
    if "json-patch" in (content_type or ""):
        try:
            result = jsonpatch.apply_patch(scale, patch, in_place=False)
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, TypeError) as exc:
            raise ValueError(f"bad JSON patch: {exc}") from None
    elif isinstance(patch, dict):
        result = merge(scale, patch)
    else:
        raise ValueError("the body must be a JSON merge patch (an object) or a JSON patch")
    replicas = lookup(result, "spec.replicas")
    if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
        raise ValueError(f"spec.replicas: must be a non-negative integer, got {replicas!r}")
    return replicas


def merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (strategic merge patches of a Scale mean the same)."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge(result.get(key), value)
    return result


def status_error(code: int, reason: str, message: str) -> dict[str, Any]:
    """A metav1.Status failure body."""
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }

"""The install extras: each image installs only `gateway` or `operator`, so those two leave out
what their component never runs, every requirement is pinned, and the gateway says what to
install when it must read a kubeconfig without kubernetes_asyncio."""

from __future__ import annotations

import re
import sys
import tomllib

import pytest

from tests.packaging.conftest import ROOT


def extras() -> dict[str, list[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    found: dict[str, list[str]] = project["optional-dependencies"]
    return found


def names(requirements: list[str]) -> set[str]:
    """Normalised distribution names, extras and versions dropped."""
    return {
        re.split(r"[\[<>=!~;, ]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements
    }


def test_image_extras_leave_out_unused_dependencies() -> None:
    found = extras()
    # ~50 MB of API models: neither component uses them in a pod (plain aiohttp + JSON).
    assert "kubernetes-asyncio" not in names(found["gateway"]) | names(found["operator"])
    # uvicorn with the two speedups main.py selects, not [standard] (websockets, watchfiles).
    assert not [r for r in found["gateway"] if r.startswith("uvicorn[")]
    assert {"uvicorn", "uvloop", "httptools"} <= names(found["gateway"])
    assert names(found["kubeconfig"]) == {"kubernetes-asyncio"}
    assert "relais[operator,gateway,kubeconfig]" in found["dev"]


def test_every_requirement_is_pinned() -> None:
    pinned = names(
        [line for line in (ROOT / "constraints.txt").read_text().splitlines() if "==" in line]
    )
    wanted = set().union(*(names(reqs) for reqs in extras().values())) - {"relais"}
    assert wanted - pinned == set()


async def test_kubeconfig_without_kubernetes_asyncio_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from relais_gateway.routing.kubernetes import kubeconfig_access

    monkeypatch.setitem(sys.modules, "kubernetes_asyncio", None)  # as in the gateway image
    with pytest.raises(RuntimeError, match=r"pip install 'relais\[gateway,kubeconfig\]'"):
        await kubeconfig_access("/nonexistent/kubeconfig")

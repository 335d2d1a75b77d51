"""The fixed names: three import packages, and no `operator` package over the stdlib."""

import importlib
import operator
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = {"relais_api": "api", "relais_operator": "operator", "relais_gateway": "gateway"}


def test_stdlib_operator_is_not_shadowed() -> None:
    assert hasattr(operator, "itemgetter")
    assert not (ROOT / "operator" / "__init__.py").exists()


def test_import_packages() -> None:
    for name, directory in PACKAGES.items():
        module = importlib.import_module(name)
        assert module.__file__ is not None
        assert pathlib.Path(module.__file__).parent.parent.name == directory


def test_the_shared_api_needs_neither_kopf_nor_a_kubernetes_client() -> None:
    """The gateway imports relais_api without the operator's dependencies."""
    blocked = ("kopf", "kubernetes", "kubernetes_asyncio", "relais_operator", "relais_gateway")
    code = (
        "import sys\n"
        f"for name in {blocked!r}: sys.modules[name] = None\n"
        "import relais_api\n"
        "assert relais_api.LLMDeploymentSpec(engine='ollama', model='m').replicas == 1\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)

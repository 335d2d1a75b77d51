"""The fixed names: three import packages, no `operator` package over the stdlib, and the
gateway's folders (STYLE.md 17) with the one direction its parts depend in."""

import ast
import importlib
import operator
import pathlib
import subprocess
import sys
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = {"relais_api": "api", "relais_operator": "operator", "relais_gateway": "gateway"}
GATEWAY = ROOT / "gateway" / "relais_gateway"
# The app and what every part shares stay on top; each folder is one part of the request's way.
GATEWAY_TOP = {"__init__", "main", "app", "settings", "config", "errors"}
GATEWAY_PARTS = {"edge", "dialects", "forward", "routing", "policy"}
# Which parts each part may not import: the dialects call the forward path, which asks routing and
# policy; routing knows nothing of requests, and only `app.py` mounts the dialects.
GATEWAY_NEVER = {
    "routing": {"edge", "dialects", "forward", "policy"},
    "policy": {"edge", "dialects", "forward"},
    "forward": {"dialects"},
    "edge": {"dialects"},
}


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


def _gateway_imports(path: pathlib.Path) -> set[str]:
    """The relais_gateway modules `path` imports (the package uses absolute imports only)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            assert node.level == 0, f"{path}: relative import"
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.startswith("relais_gateway.")}


def test_the_gateway_is_grouped_by_parts() -> None:
    top = {p.stem for p in GATEWAY.glob("*.py")}
    parts = {p.parent.name for p in GATEWAY.glob("*/__init__.py")}
    assert top == GATEWAY_TOP, "a new gateway module belongs in one of its parts (STYLE.md 17)"
    assert parts == GATEWAY_PARTS
    assert (GATEWAY / "py.typed").exists()
    assert not list(GATEWAY.glob("*/*/__init__.py")), "one level of folders is enough"


def test_every_gateway_module_says_its_role_and_parts_re_export_nothing() -> None:
    for path in GATEWAY.rglob("*.py"):
        tree = ast.parse(path.read_text())
        assert ast.get_docstring(tree), f"{path.relative_to(ROOT)} opens without a docstring"
        if path.name == "__init__.py":
            assert len(tree.body) == 1, f"{path.relative_to(ROOT)}: a docstring only"


def test_the_gateway_parts_depend_one_way() -> None:
    for path in GATEWAY.glob("*/*.py"):
        part = path.parent.name
        for name in _gateway_imports(path):
            imported = name.split(".")[1]
            assert imported not in GATEWAY_NEVER.get(part, set()), f"{path.name} imports {name}"
            assert imported != "app", f"{path.name} imports the app"
    for path in GATEWAY.glob("*.py"):
        if path.stem != "app":
            assert not any(n.startswith("relais_gateway.dialects") for n in _gateway_imports(path))


def test_every_gateway_module_imports_and_the_console_script_resolves() -> None:
    for path in GATEWAY.rglob("*.py"):
        parts = path.relative_to(GATEWAY.parent).with_suffix("").parts
        importlib.import_module(".".join(p for p in parts if p != "__init__"))
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, attr = scripts["relais-gateway"].partition(":")
    assert (module, attr) == ("relais_gateway.main", "main")
    assert callable(getattr(importlib.import_module(module), attr))

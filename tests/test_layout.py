"""The repository's fixed names: two import packages, and no `operator` package over the stdlib."""

import importlib
import operator
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_stdlib_operator_is_not_shadowed() -> None:
    assert hasattr(operator, "itemgetter")
    assert not (ROOT / "operator" / "__init__.py").exists()


def test_import_packages() -> None:
    for name in ("relais_operator", "relais_gateway"):
        module = importlib.import_module(name)
        assert module.__file__ is not None
        assert pathlib.Path(module.__file__).parent.parent.name in {"operator", "gateway"}

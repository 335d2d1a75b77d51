"""The CRD (manifests/crd.yaml): examples validate, bad specs are rejected, CEL rules hold.

The openAPIV3Schema is checked with jsonschema. Its CEL rules are compiled and run with
cel-python (a CEL implementation, not the API server's: the Kubernetes CEL library extras are
not available, so the rules stick to standard CEL). Each rule is also mirrored by spec.py,
and both are run on the same inputs so they cannot drift apart.
"""

from __future__ import annotations

import copy
import pathlib
import typing
from collections.abc import Iterator
from typing import Any

import celpy
import jsonschema
import pytest
import yaml
from relais_api import Autoscaling
from relais_api import llmdeployment as api_module
from relais_operator.engines import ENGINES
from relais_operator.spec import InvalidSpecError, LLMDeployment, LLMDeploymentSpec

ROOT = pathlib.Path(__file__).resolve().parents[2]
CRD = yaml.safe_load((ROOT / "manifests" / "crd.yaml").read_text())
[VERSION] = CRD["spec"]["versions"]
SCHEMA = VERSION["schema"]["openAPIV3Schema"]
SPEC_SCHEMA = SCHEMA["properties"]["spec"]
EXAMPLES = sorted((ROOT / "manifests" / "examples").glob("*.yaml"))


def _examples() -> Iterator[dict[str, Any]]:
    for path in EXAMPLES:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "LLMDeployment":
                yield doc


def _apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """Structural defaulting as the API server does it (objects only, which is all we use)."""
    if schema.get("type") != "object" or not isinstance(value, dict):
        return value
    result = dict(value)
    for key, sub in schema.get("properties", {}).items():
        if key not in result and "default" in sub:
            result[key] = copy.deepcopy(sub["default"])
        if key in result:
            result[key] = _apply_defaults(sub, result[key])
    return result


def _schema_errors(obj: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(SCHEMA)
    return [error.message for error in validator.iter_errors(obj)]


def _rules(
    schema: dict[str, Any], path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], dict[str, Any]]]:
    for rule in schema.get("x-kubernetes-validations", []):
        yield path, rule
    for key, sub in schema.get("properties", {}).items():
        yield from _rules(sub, (*path, key))
    if "items" in schema:
        yield from _rules(schema["items"], (*path, "[]"))


def _cel(rule: str, self_value: Any, old_value: Any = None) -> bool:
    env = celpy.Environment()
    program = env.program(env.compile(rule))
    to_cel = celpy.json_to_cel  # type: ignore[attr-defined]
    activation = {"self": to_cel(self_value)}
    if old_value is not None:
        activation["oldSelf"] = to_cel(old_value)
    return bool(program.evaluate(activation))


def _resource(spec: dict[str, Any], name: str = "llm") -> dict[str, Any]:
    return {
        "apiVersion": "relais.dev/v1alpha1",
        "kind": "LLMDeployment",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    }


def _spec_rules_pass(spec: dict[str, Any]) -> bool:
    spec = _apply_defaults(SPEC_SCHEMA, spec)
    return all(_cel(rule["rule"], spec) for path, rule in _rules(SPEC_SCHEMA) if path == ())


def _python_accepts(spec: dict[str, Any], name: str = "llm") -> bool:
    try:
        LLMDeployment.from_body({"metadata": {"name": name, "namespace": "default"}, "spec": spec})
    except InvalidSpecError:
        return False
    return True


# --- the schema --------------------------------------------------------------------------------


def test_crd_names_and_subresources() -> None:
    names = CRD["spec"]["names"]
    assert (CRD["spec"]["group"], VERSION["name"], names["kind"]) == (
        "relais.dev",
        "v1alpha1",
        "LLMDeployment",
    )
    assert (names["plural"], names["shortNames"], names["categories"]) == (
        "llmdeployments",
        ["llmd"],
        ["relais"],
    )
    assert VERSION["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    columns = {c["name"]: c["jsonPath"] for c in VERSION["additionalPrinterColumns"]}
    assert columns["Engine"] == ".spec.engine"
    assert columns["Model"] == ".spec.model"
    assert columns["Ready"] == ".status.readyReplicas"
    assert columns["Desired"] == ".spec.replicas"
    assert columns["Age"] == ".metadata.creationTimestamp"


def _walk(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for key, sub in schema.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{key}")
    if "items" in schema:
        yield from _walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _walk(schema["additionalProperties"], f"{path}{{}}")


def test_schema_is_structural() -> None:
    for path, node in _walk(SCHEMA):
        typed = "type" in node or node.get("x-kubernetes-int-or-string")
        assert typed, f"{path or '<root>'} has no type"
        if node.get("type") == "object" and path != ".metadata":
            assert (
                "properties" in node
                or "additionalProperties" in node
                or node.get("x-kubernetes-preserve-unknown-fields")
            ), f"{path} is an untyped object"


def test_engine_enum_is_the_engine_table() -> None:
    literal = typing.get_args(LLMDeploymentSpec.model_fields["engine"].annotation)
    assert sorted(SPEC_SCHEMA["properties"]["engine"]["enum"]) == sorted(ENGINES) == sorted(literal)


def test_schema_defaults_match_the_python_model() -> None:
    spec = _apply_defaults(SPEC_SCHEMA, {"engine": "ollama", "model": "m"})
    parsed = LLMDeploymentSpec.model_validate({"engine": "ollama", "model": "m"})
    assert spec["replicas"] == parsed.replicas == 1
    assert spec["gpu"]["count"] == parsed.gpu.count == 1
    storage = parsed.storage
    assert spec["storage"] == {
        "size": storage.size,
        "accessMode": storage.access_mode,
        "retainOnDelete": storage.retain_on_delete,
    }
    assert spec["routing"] == parsed.routing.model_dump(by_alias=True)
    assert "autoscaling" not in spec
    assert parsed.autoscaling is None
    scaling = _apply_defaults(SPEC_SCHEMA["properties"]["autoscaling"], {"maxReplicas": 3})
    assert scaling == Autoscaling(max_replicas=3).model_dump(by_alias=True)
    key = SPEC_SCHEMA["properties"]["hfTokenSecretRef"]["properties"]["key"]["default"]
    tgi = {"engine": "tgi", "model": "a/b", "hfTokenSecretRef": {"name": "s"}}
    ref = LLMDeploymentSpec.model_validate(tgi).hf_token_secret_ref
    assert ref is not None
    assert key == ref.key


@pytest.mark.parametrize("example", list(_examples()), ids=lambda doc: doc["metadata"]["name"])
def test_examples_validate(example: dict[str, Any]) -> None:
    assert _schema_errors(example) == []
    resource = _apply_defaults(SCHEMA, example)
    for path, rule in _rules(SCHEMA):
        if path == ():
            assert _cel(rule["rule"], resource), rule["message"]
        elif path == ("spec",):
            assert _cel(rule["rule"], resource["spec"]), rule["message"]
    assert _python_accepts(example["spec"], example["metadata"]["name"])


def test_example_secret_is_a_placeholder() -> None:
    docs = list(yaml.safe_load_all((ROOT / "manifests/examples/hf-token-secret.yaml").read_text()))
    assert docs[0]["kind"] == "Secret"
    assert docs[0]["stringData"]["token"] == "REPLACE_WITH_YOUR_HF_TOKEN"


@pytest.mark.parametrize(
    "spec",
    [
        {"model": "m"},
        {"engine": "ollama"},
        {"engine": "sglang", "model": "m"},
        {"engine": "ollama", "model": ""},
        {"engine": "ollama", "model": "m", "replicas": -1},
        {"engine": "ollama", "model": "m", "gpu": {"count": -1}},
        {"engine": "ollama", "model": "m", "gpu": {"type": "NVIDIA L4"}},
        {"engine": "ollama", "model": "m", "storage": {"accessMode": "ReadOnlyMany"}},
        {"engine": "ollama", "model": "m", "storage": {"size": "lots"}},
        {"engine": "ollama", "model": "m", "resources": {"limits": {"memory": "much"}}},
        {"engine": "ollama", "model": "m", "requestLimits": {"maxTokens": 0}},
        {"engine": "ollama", "model": "m", "requestLimits": {"maxTokensPolicy": "Truncate"}},
        {"engine": "ollama", "model": "m", "requestLimits": {"maxSequencesPerRequest": 0}},
        {"engine": "ollama", "model": "m", "requestLimits": {"maxInputsPerRequest": 0}},
        {"engine": "ollama", "model": "m", "ollamaOptions": {"numCtx": 0}},
        {"engine": "ollama", "model": "m", "tolerations": [{"operator": "Maybe"}]},
        {"engine": "tgi", "model": "a/b", "hfTokenSecretRef": {"key": "k"}},
        {"engine": "ollama", "model": "m", "autoscaling": {"minReplicas": 1}},
        {"engine": "ollama", "model": "m", "autoscaling": {"maxReplicas": 0}},
        {"engine": "ollama", "model": "m", "autoscaling": {"maxReplicas": 2, "minReplicas": -1}},
        {"engine": "ollama", "model": "m", "autoscaling": {"maxReplicas": 2, "targetRequests": 0}},
        {
            "engine": "ollama",
            "model": "m",
            "autoscaling": {"maxReplicas": 2, "scaleDownDelaySeconds": -1},
        },
        {"engine": "ollama", "model": "m", "routing": {"strategy": "RoundRobin"}},
        {"engine": "ollama", "model": "m", "routing": {"prefixCharLength": 0}},
        {"engine": "ollama", "model": "m", "routing": {"loadFactor": 0.9}},
        {"engine": "vllm", "model": "a/b", "toolCallParser": "Hermes"},
        {"engine": "vllm", "model": "a/b", "reasoningParser": "--x"},
        {"engine": "vllm", "model": "a/b", "toolCallParser": "x" * 65},
        {
            "engine": "vllm",
            "model": "a/b",
            "lora": {},
            "adapters": [{"name": "Bot", "source": "a"}],
        },
        {"engine": "vllm", "model": "a/b", "lora": {}, "adapters": [{"name": "-b", "source": "a"}]},
        {
            "engine": "vllm",
            "model": "a/b",
            "lora": {},
            "adapters": [{"name": "a" * 64, "source": "a"}],
        },
        {"engine": "vllm", "model": "a/b", "lora": {}, "adapters": [{"name": "b"}]},
        {"engine": "vllm", "model": "a/b", "lora": {}, "adapters": [{"name": "b", "source": ""}]},
        {
            "engine": "vllm",
            "model": "a/b",
            "lora": {},
            "adapters": [{"name": f"a{i}", "source": "x"} for i in range(65)],
        },
        {"engine": "vllm", "model": "a/b", "lora": {"maxRank": 24}},
        {"engine": "vllm", "model": "a/b", "lora": {"maxAdapters": 0}},
        {"engine": "vllm", "model": "a/b", "lora": {"maxAdapters": 257}},
    ],
)
def test_schema_rejects_bad_specs(spec: dict[str, Any]) -> None:
    assert _schema_errors(_resource(spec)) != []


# --- CEL rules and their Python mirror ------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "ok"),
    [
        ({"engine": "tgi", "model": "google/gemma-2-2b-it", "revision": "main"}, True),
        ({"engine": "ollama", "model": "qwen2.5:0.5b", "revision": "main"}, False),
        ({"engine": "tgi", "model": "a/b", "hfTokenSecretRef": {"name": "s"}}, True),
        ({"engine": "ollama", "model": "qwen2.5:0.5b", "hfTokenSecretRef": {"name": "s"}}, False),
        ({"engine": "tgi", "model": "gemma-2-2b-it"}, False),
        ({"engine": "tgi", "model": "org/repo/extra"}, False),
        ({"engine": "ollama", "model": "hf.co/org/repo:Q4_K_M"}, True),
        ({"engine": "ollama", "model": "qwen 2.5"}, False),
        ({"engine": "vllm", "model": "Qwen/Qwen2.5-7B-Instruct", "revision": "v1"}, True),
        (
            {
                "engine": "vllm",
                "model": "meta-llama/Llama-3.1-8B",
                "hfTokenSecretRef": {"name": "s"},
            },
            True,
        ),
        ({"engine": "vllm", "model": "qwen2.5:7b-instruct"}, False),
        ({"engine": "vllm", "model": "Qwen2.5-7B-Instruct"}, False),
        ({"engine": "vllm", "model": "a/b/c", "revision": "main"}, False),
        ({"engine": "ollama", "model": "qwen2.5:0.5b", "ollamaOptions": {"numCtx": 8192}}, True),
        ({"engine": "vllm", "model": "a/b", "ollamaOptions": {"numCtx": 8192}}, False),
        ({"engine": "vllm", "model": "a/b", "toolCallParser": "hermes"}, True),
        ({"engine": "vllm", "model": "a/b", "reasoningParser": "none"}, True),
        ({"engine": "tgi", "model": "a/b", "toolCallParser": "hermes"}, False),
        ({"engine": "ollama", "model": "m", "reasoningParser": "qwen3"}, False),
    ],
)
def test_spec_rules_cel_and_python_agree(spec: dict[str, Any], ok: bool) -> None:
    assert _spec_rules_pass(spec) is ok
    assert _python_accepts(spec) is ok


@pytest.mark.parametrize(
    ("name", "ok"),
    [("qwen", True), ("a" * 52, True), ("a" * 53, False), ("9lives", False), ("a.b", False)],
)
def test_name_rule_cel_and_python_agree(name: str, ok: bool) -> None:
    [rule] = [rule for path, rule in _rules(SCHEMA) if path == ()]
    assert _cel(rule["rule"], _resource({}, name)) is ok
    assert _python_accepts({"engine": "ollama", "model": "m"}, name) is ok


def test_env_value_xor_value_from() -> None:
    [rule] = [rule for path, rule in _rules(SCHEMA) if path == ("spec", "env", "[]")]
    assert _cel(rule["rule"], {"name": "A", "value": "1"})
    assert _cel(
        rule["rule"], {"name": "A", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}
    )
    assert not _cel(rule["rule"], {"name": "A", "value": "1", "valueFrom": {}})


@pytest.mark.parametrize(
    ("autoscaling", "ok"),
    [
        ({"maxReplicas": 4}, True),
        ({"minReplicas": 0, "maxReplicas": 1}, True),
        ({"minReplicas": 4, "maxReplicas": 4}, True),
        ({"minReplicas": 5, "maxReplicas": 4}, False),
        ({"maxReplicas": 0}, False),  # the schema's minimum: defaulted minReplicas 1 > 0
    ],
)
def test_autoscaling_bounds_cel_and_python_agree(autoscaling: dict[str, Any], ok: bool) -> None:
    [rule] = [rule for path, rule in _rules(SCHEMA) if path == ("spec", "autoscaling")]
    defaulted = _apply_defaults(SPEC_SCHEMA["properties"]["autoscaling"], autoscaling)
    assert _cel(rule["rule"], defaulted) is ok
    assert _python_accepts({"engine": "ollama", "model": "m", "autoscaling": autoscaling}) is ok


def test_access_mode_cannot_change() -> None:
    [rule] = [rule for path, rule in _rules(SCHEMA) if path == ("spec", "storage")]
    rwo, rwx = {"accessMode": "ReadWriteOnce"}, {"accessMode": "ReadWriteMany"}
    assert _cel(rule["rule"], rwo, rwo)
    assert not _cel(rule["rule"], rwx, rwo)


# --- adapters and lora ---------------------------------------------------------------------------

_HF = {"name": "support-bot", "source": "hf://acme/qwen-support-lora", "revision": "main"}
_PATH = {"name": "sql", "source": "adapters/sql-writer"}
_VLLM = {"engine": "vllm", "model": "Qwen/Qwen2.5-7B-Instruct", "servedModelName": "qwen"}


@pytest.mark.parametrize(
    ("spec", "ok"),
    [
        ({**_VLLM, "lora": {}, "adapters": [_HF, _PATH]}, True),
        ({**_VLLM, "lora": {"maxAdapters": 8, "maxRank": 16}}, True),
        ({**_VLLM, "lora": {}, "adapters": []}, True),
        # lora only with vllm
        ({"engine": "tgi", "model": "a/b", "lora": {}}, False),
        ({"engine": "ollama", "model": "m", "lora": {}}, False),
        # vllm adapters need lora (the pod template must not change with the adapters)
        ({**_VLLM, "adapters": [_HF]}, False),
        # ollama: cache paths only
        ({"engine": "ollama", "model": "qwen2.5:0.5b", "adapters": [_PATH]}, True),
        ({"engine": "ollama", "model": "qwen2.5:0.5b", "adapters": [_HF]}, False),
        # TGI takes both
        ({"engine": "tgi", "model": "a/b", "adapters": [_HF, _PATH]}, True),
        # an adapter must not shadow the deployment's own served name
        ({**_VLLM, "lora": {}, "adapters": [{"name": "qwen", "source": "x"}]}, False),
        (
            {
                "engine": "ollama",
                "model": "llama3",
                "adapters": [{"name": "llama3", "source": "adapters/x"}],
            },
            False,
        ),
    ],
)
def test_adapter_spec_rules_cel_and_python_agree(spec: dict[str, Any], ok: bool) -> None:
    assert _schema_errors(_resource(spec)) == []
    assert _spec_rules_pass(spec) is ok
    assert _python_accepts(spec) is ok


_ADAPTER_RULES = ("spec", "adapters", "[]")


@pytest.mark.parametrize(
    ("adapter", "ok"),
    [
        ({"name": "a", "source": "hf://acme/repo"}, True),
        ({"name": "a", "source": "hf://acme/repo", "revision": "v1"}, True),
        ({"name": "a", "source": "adapters/support-bot"}, True),
        ({"name": "a", "source": "support_bot"}, True),
        ({"name": "a", "source": "/etc/passwd"}, False),
        ({"name": "a", "source": "adapters/../../etc"}, False),
        ({"name": "a", "source": ".."}, False),
        ({"name": "a", "source": "adapters/./x"}, False),
        ({"name": "a", "source": "adapters//x"}, False),
        ({"name": "a", "source": "adapters/x/"}, False),
        ({"name": "a", "source": "s3://bucket/x"}, False),
        ({"name": "a", "source": "hf://acme"}, False),
        ({"name": "a", "source": "hf://acme/repo/extra"}, False),
        ({"name": "a", "source": "a b"}, False),
        ({"name": "a", "source": "a,b=c"}, False),
        ({"name": "a", "source": "adapters/x", "revision": "main"}, False),
    ],
)
def test_adapter_rules_cel_and_python_agree(adapter: dict[str, Any], ok: bool) -> None:
    rules = [rule for path, rule in _rules(SCHEMA) if path == _ADAPTER_RULES]
    assert all(_cel(rule["rule"], adapter) for rule in rules) is ok
    spec = {"engine": "tgi", "model": "a/b", "adapters": [adapter]}
    assert _python_accepts(spec) is ok


def test_adapter_messages_are_readable() -> None:
    spec = {"engine": "ollama", "model": "m", "adapters": [{"name": "x", "source": "hf://a/b"}]}
    with pytest.raises(InvalidSpecError, match="with engine ollama, adapter sources must be"):
        LLMDeployment.from_body({"metadata": {"name": "m", "namespace": "d"}, "spec": spec})
    bad = {"engine": "tgi", "model": "a/b", "adapters": [{"name": "x", "source": "../up"}]}
    with pytest.raises(InvalidSpecError, match=r"spec.adapters.0: Value error|source must be"):
        LLMDeployment.from_body({"metadata": {"name": "m", "namespace": "d"}, "spec": bad})


def test_adapter_names_are_unique() -> None:
    """The CRD's list-map key (the API server enforces it); the Python mirror says so too."""
    adapters = SPEC_SCHEMA["properties"]["adapters"]
    assert adapters["x-kubernetes-list-type"] == "map"
    assert adapters["x-kubernetes-list-map-keys"] == ["name"]
    twice = [{"name": "a", "source": "x"}, {"name": "a", "source": "y"}]
    spec = {**_VLLM, "lora": {}, "adapters": twice}
    with pytest.raises(InvalidSpecError, match="duplicate name"):
        LLMDeployment.from_body({"metadata": {"name": "m", "namespace": "d"}, "spec": spec})


def test_adapter_schema_matches_the_python_model() -> None:
    props = SPEC_SCHEMA["properties"]
    name = props["adapters"]["items"]["properties"]["name"]
    assert name["pattern"] == api_module.ADAPTER_NAME_PATTERN
    assert props["adapters"]["maxItems"] == api_module.MAX_ADAPTERS
    lora = props["lora"]["properties"]
    assert tuple(lora["maxRank"]["enum"]) == api_module.LORA_RANKS
    literal = typing.get_args(api_module.LoRA.model_fields["max_rank"].annotation)
    assert literal == api_module.LORA_RANKS
    defaults = _apply_defaults(props["lora"], {})
    assert defaults == api_module.LoRA().model_dump(by_alias=True)
    states = SCHEMA["properties"]["status"]["properties"]["adapters"]["items"]["properties"]
    assert tuple(states["state"]["enum"]) == typing.get_args(api_module.AdapterState)


def test_every_rule_is_tested() -> None:
    """A new CEL rule needs a test here: this list is the set the tests above exercise."""
    tested = {
        (): 1,
        ("spec",): 11,
        ("spec", "adapters", "[]"): 2,
        ("spec", "storage"): 1,
        ("spec", "autoscaling"): 1,
        ("spec", "env", "[]"): 1,
    }
    found: dict[tuple[str, ...], int] = {}
    for path, _ in _rules(SCHEMA):
        found[path] = found.get(path, 0) + 1
    assert found == tested


def test_quantity_pattern_is_mirrored() -> None:
    resources = SPEC_SCHEMA["properties"]["resources"]["properties"]
    for kind in ("requests", "limits"):
        assert resources[kind]["additionalProperties"]["pattern"] == api_module._QUANTITY.pattern

"""The pure manifest builders: golden YAML, invariants (hypothesis), and API-schema validity.

Regenerate the goldens after an intended change: RELAIS_UPDATE_GOLDEN=1 pytest tests/operator.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import kubernetes_validate
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from relais_operator import parsers, resources
from relais_operator.engines import ENGINES, ollama_manifest_path
from relais_operator.settings import OperatorSettings
from relais_operator.spec import InvalidSpecError, LLMDeployment

from tests.operator.builders import CASES, make

GOLDEN = pathlib.Path(__file__).resolve().parents[1] / "data" / "operator"
UPDATE = os.environ.get("RELAIS_UPDATE_GOLDEN") == "1"
K8S_VERSION = "1.30.0"
SETTINGS = OperatorSettings()


class _Literal(yaml.SafeDumper):
    """Multi-line strings (the fetch scripts) as readable `|` blocks."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Literal.add_representer(str, _str)


def _render(children: list[dict[str, Any]]) -> str:
    return yaml.dump_all(children, Dumper=_Literal, sort_keys=False)


@pytest.mark.parametrize("case", sorted(CASES))
def test_children_match_golden(case: str) -> None:
    rendered = _render(resources.build_children(make(case, CASES[case]), SETTINGS))
    path = GOLDEN / f"{case}.yaml"
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(rendered)
    assert path.exists(), f"no golden {path}; run with RELAIS_UPDATE_GOLDEN=1"
    assert rendered == path.read_text()


@pytest.mark.parametrize("case", sorted(CASES))
def test_children_pass_kubernetes_validate_strict(case: str) -> None:
    for child in resources.build_children(make(case, CASES[case]), SETTINGS):
        kubernetes_validate.validate(child, K8S_VERSION, strict=True)


EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "manifests" / "examples"


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_examples_render_valid_children(path: pathlib.Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        if doc["kind"] != "LLMDeployment":
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
            continue
        doc["metadata"]["uid"] = "u"
        for child in resources.build_children(LLMDeployment.from_body(doc), SETTINGS):
            kubernetes_validate.validate(child, K8S_VERSION, strict=True)


def test_gke_gpu_scheduling() -> None:
    workload = resources.build_workload(make("qwen", CASES["ollama-l4"]), SETTINGS)
    pod = workload["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]


def test_tgi_shards_shm_and_token() -> None:
    workload = resources.build_workload(make("gemma", CASES["tgi-gated-2gpu"]), SETTINGS)
    pod = workload["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    assert args[args.index("--num-shard") + 1] == "2"
    assert args[args.index("--port") + 1] == "8080"
    assert {"name": "shm", "emptyDir": {"medium": "Memory"}} in pod["volumes"]
    fetch_env = {e["name"]: e for e in pod["initContainers"][0]["env"]}
    assert fetch_env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "hf-token",
        "key": "token",
    }
    server_env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert "HF_TOKEN" not in server_env  # only the fetch step goes to the Hub
    assert server_env["HF_HUB_OFFLINE"] == "1"  # a restarted pod downloads nothing


def test_vllm_flags_from_the_spec() -> None:
    workload = resources.build_workload(make("qwen", CASES["vllm-2gpu"]), SETTINGS)
    pod = workload["spec"]["template"]["spec"]
    [server] = pod["containers"]
    args = server["args"]
    assert server["command"] == ["vllm", "serve"]
    assert args[0] == "Qwen/Qwen2.5-7B-Instruct"
    flags = {flag: args[args.index(flag) + 1] for flag in args if flag.startswith("--")}
    assert flags["--served-model-name"] == "qwen-7b"
    assert flags["--tensor-parallel-size"] == "2"
    assert flags["--max-num-seqs"] == "64"
    assert flags["--max-model-len"] == "8192"  # only because the user set it in args
    assert flags["--port"] == "8000"
    assert server["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    assert server["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert server["startupProbe"]["failureThreshold"] * 10 >= 3600  # an hour to load
    assert {"name": "shm", "emptyDir": {"medium": "Memory"}} in pod["volumes"]
    env = {e["name"]: e.get("value") for e in server["env"]}
    assert env["HF_HUB_OFFLINE"] == "1"
    assert "HF_TOKEN" not in env


def test_vllm_sets_optional_flags_only_when_asked() -> None:
    spec = {"engine": "vllm", "model": "Qwen/Qwen2.5-0.5B", "gpu": {"count": 1}}
    args = resources.build_workload(make("q", spec), SETTINGS)["spec"]["template"]["spec"][
        "containers"
    ][0]["args"]
    assert "--served-model-name" in args
    assert args[args.index("--served-model-name") + 1] == "Qwen/Qwen2.5-0.5B"
    for flag in ("--tensor-parallel-size", "--max-num-seqs", "--max-model-len"):
        assert flag not in args


def _vllm_args(spec: dict[str, Any]) -> list[str]:
    workload = resources.build_workload(make("q", {"engine": "vllm", **spec}), SETTINGS)
    args: list[str] = workload["spec"]["template"]["spec"]["containers"][0]["args"]
    return args


def _flag(args: list[str], flag: str) -> str | None:
    return args[args.index(flag) + 1] if flag in args else None


@pytest.mark.parametrize(
    ("model", "tool", "reasoning"),
    [
        ("Qwen/Qwen2.5-7B-Instruct", "hermes", None),
        ("Qwen/Qwen3-8B", "hermes", "qwen3"),
        ("Qwen/Qwen3-Coder-30B-A3B-Instruct", "qwen3_coder", None),
        ("Qwen/Qwen3-4B-Instruct-2507", "hermes", None),
        ("meta-llama/Llama-3.1-8B-Instruct", "llama3_json", None),
        ("meta-llama/Llama-4-Scout-17B-16E-Instruct", "llama4_pythonic", None),
        ("mistralai/Mistral-7B-Instruct-v0.3", "mistral", None),
        ("openai/gpt-oss-20b", "openai", "openai_gptoss"),
        ("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", None, "deepseek_r1"),
        ("deepseek-ai/DeepSeek-V3.1", "deepseek_v31", "deepseek_v3"),
        ("google/gemma-3-4b-it", "pythonic", None),
        ("ibm-granite/granite-3.3-8b-instruct", "granite", "granite"),
        ("moonshotai/Kimi-K2-Instruct", "kimi_k2", None),
        ("sentence-transformers/all-MiniLM-L6-v2", None, None),
    ],
)
def test_vllm_parsers_follow_the_model_family(
    model: str, tool: str | None, reasoning: str | None
) -> None:
    args = _vllm_args({"model": model})
    assert _flag(args, "--tool-call-parser") == tool
    assert ("--enable-auto-tool-choice" in args) == (tool is not None)
    assert _flag(args, "--reasoning-parser") == reasoning


def test_vllm_parser_fields_override_the_table() -> None:
    spec = {"model": "acme/custom-7b", "toolCallParser": "hermes", "reasoningParser": "qwen3"}
    args = _vllm_args(spec)
    assert _flag(args, "--tool-call-parser") == "hermes"
    assert "--enable-auto-tool-choice" in args
    assert _flag(args, "--reasoning-parser") == "qwen3"
    off = _vllm_args(
        {"model": "Qwen/Qwen3-8B", "toolCallParser": "none", "reasoningParser": "none"}
    )
    for flag in ("--enable-auto-tool-choice", "--tool-call-parser", "--reasoning-parser"):
        assert flag not in off


def test_parser_table_keys_are_lowercase() -> None:
    # Matching lowercases the repo id; an upper-case key could never match.
    for key, _ in (*parsers.TOOL_CALL_PARSERS, *parsers.REASONING_PARSERS):
        assert key == key.lower(), key


@pytest.mark.parametrize(
    "arg",
    [
        "--served-model-name=x",
        "--tensor-parallel-size",
        "--max-num-seqs",
        "--port",
        "--enable-auto-tool-choice",
        "--tool-call-parser=hermes",
        "--reasoning-parser",
    ],
)
def test_vllm_rejects_flags_it_sets(arg: str) -> None:
    spec = {"engine": "vllm", "model": "Qwen/Qwen2.5-0.5B", "args": [arg, "2"]}
    with pytest.raises(InvalidSpecError, match="is set by the operator"):
        make("q", spec)


def test_builders_never_branch_on_engine_names() -> None:
    source = pathlib.Path(resources.__file__).read_text()
    for name in ENGINES:
        assert f'"{name}"' not in source, name


def test_rwo_cache_is_per_replica_and_retained() -> None:
    llm = make("qwen", {**CASES["ollama-l4"], "replicas": 3})
    workload = resources.build_workload(llm, SETTINGS)
    assert resources.build_cache(llm, SETTINGS) is None
    [template] = workload["spec"]["volumeClaimTemplates"]
    assert template["metadata"]["name"] == resources.CACHE_VOLUME
    assert template["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert workload["spec"]["persistentVolumeClaimRetentionPolicy"] == {
        "whenDeleted": "Retain",
        "whenScaled": "Retain",
    }
    assert resources.replica_claim_name(llm, 2) == "models-qwen-2"


def test_rwx_cache_is_shared_and_unowned_when_retained() -> None:
    spec = {**CASES["cpu-shared-cache"], "storage": {"accessMode": "ReadWriteMany"}}
    llm = make("tiny", spec)
    cache = resources.build_cache(llm, SETTINGS)
    assert cache is not None
    assert cache["metadata"]["name"] == "tiny-models"
    assert "ownerReferences" not in cache["metadata"]  # retainOnDelete (default): outlives us
    volumes = resources.build_workload(llm, SETTINGS)["spec"]["template"]["spec"]["volumes"]
    claim = {"claimName": "tiny-models", "readOnly": True}
    assert {"name": "models", "persistentVolumeClaim": claim} in volumes
    owned = resources.build_cache(make("tiny", CASES["cpu-shared-cache"]), SETTINGS)
    assert owned is not None
    assert owned["metadata"]["ownerReferences"][0]["uid"]


def test_fetch_steps_skip_a_present_cache() -> None:
    ollama = resources.build_workload(make("q", CASES["ollama-l4"]), SETTINGS)
    script = ollama["spec"]["template"]["spec"]["initContainers"][0]["command"][-1]
    manifest = "/models/manifests/registry.ollama.ai/library/qwen2.5/7b-instruct"
    assert f"if [ -f {manifest} ]; then" in script
    tgi = resources.build_workload(make("g", CASES["tgi-gated-2gpu"]), SETTINGS)
    code = tgi["spec"]["template"]["spec"]["initContainers"][0]["command"][-1]
    assert "local_files_only=True" in code


@pytest.mark.parametrize(
    ("model", "path"),
    [
        ("qwen2.5:7b-instruct", "manifests/registry.ollama.ai/library/qwen2.5/7b-instruct"),
        ("llama3", "manifests/registry.ollama.ai/library/llama3/latest"),
        ("user/model:q4", "manifests/registry.ollama.ai/user/model/q4"),
        ("hf.co/org/repo:Q4_K_M", "manifests/hf.co/org/repo/Q4_K_M"),
    ],
)
def test_ollama_manifest_path(model: str, path: str) -> None:
    assert ollama_manifest_path(model) == path


def test_image_override_order() -> None:
    llm = make("q", CASES["ollama-l4"])
    image = resources.build_workload(llm, OperatorSettings(ollama_image="mirror/ollama:1"))
    assert image["spec"]["template"]["spec"]["containers"][0]["image"] == "mirror/ollama:1"
    vllm = make("v", CASES["vllm-2gpu"])
    mirror = OperatorSettings(vllm_image="mirror/vllm:1")
    pod = resources.build_workload(vllm, mirror)["spec"]["template"]["spec"]
    assert {c["image"] for c in pod["containers"] + pod["initContainers"]} == {"mirror/vllm:1"}
    own = make("q", {**CASES["ollama-l4"], "image": "mine/ollama:2"})
    pod = resources.build_workload(own, SETTINGS)["spec"]["template"]["spec"]
    assert {c["image"] for c in pod["containers"] + pod["initContainers"]} == {"mine/ollama:2"}


# --- invariants ----------------------------------------------------------------------------------

_label = st.from_regex(r"[a-z][a-z0-9]{0,8}", fullmatch=True)
_tolerations = st.lists(
    st.fixed_dictionaries(
        {
            "key": _label,
            "operator": st.just("Exists"),
            "effect": st.sampled_from(["NoSchedule", "NoExecute"]),
        }
    ),
    max_size=3,
)
_MODELS = {"ollama": "qwen2.5:0.5b", "tgi": "google/gemma-2-2b-it", "vllm": "Qwen/Qwen2.5-0.5B"}
_specs = st.fixed_dictionaries(
    {
        "engine": st.sampled_from(sorted(ENGINES)),
        "replicas": st.integers(0, 8),
        "gpu": st.fixed_dictionaries(
            {"count": st.integers(0, 8), "type": st.one_of(st.none(), st.just("nvidia-l4"))}
        ),
        "storage": st.fixed_dictionaries(
            {
                "accessMode": st.sampled_from(["ReadWriteOnce", "ReadWriteMany"]),
                "retainOnDelete": st.booleans(),
            }
        ),
        "nodeSelector": st.dictionaries(_label, _label, max_size=3),
        "tolerations": _tolerations,
    }
)


def _llm(name: str, spec: dict[str, Any]) -> LLMDeployment:
    gpu = {k: v for k, v in spec["gpu"].items() if v is not None}
    spec = {**spec, "model": _MODELS[spec["engine"]], "gpu": gpu}
    return make(name, spec)


@settings(max_examples=150, deadline=None)
@given(name=st.from_regex(r"[a-z][a-z0-9-]{0,30}[a-z0-9]", fullmatch=True), spec=_specs)
def test_builder_invariants(name: str, spec: dict[str, Any]) -> None:
    llm = _llm(name, spec)
    children = resources.build_children(llm, SETTINGS)
    workload = resources.build_workload(llm, SETTINGS)
    pod = workload["spec"]["template"]["spec"]
    # Every child carries the contract labels; every child but a retained cache has an owner.
    for child in children:
        assert child["metadata"]["labels"] == resources.labels(llm)
        assert child["metadata"]["namespace"] == "models"
        retained_cache = (
            child["kind"] == "PersistentVolumeClaim" and spec["storage"]["retainOnDelete"]
        )
        assert ("ownerReferences" in child["metadata"]) != retained_cache
    # Names are stable and derived from the resource's name only.
    assert workload["metadata"]["name"] == name
    assert resources.build_service(llm, SETTINGS)["metadata"]["name"] == name
    assert resources.build_children(llm, SETTINGS) == children
    # The pods are selected by the Service and the StatefulSet, and labelled for the gateway.
    assert (
        workload["spec"]["selector"]["matchLabels"].items()
        <= workload["spec"]["template"]["metadata"]["labels"].items()
    )
    # The GPU limit is gpu.count, absent for CPU-only.
    limits = pod["containers"][0].get("resources", {}).get("limits", {})
    count = spec["gpu"]["count"]
    assert limits.get("nvidia.com/gpu") == (str(count) if count else None)
    # User node selectors and tolerations are merged, never lost.
    assert spec["nodeSelector"].items() <= pod.get("nodeSelector", {}).items()
    for toleration in spec["tolerations"]:
        assert toleration in pod.get("tolerations", [])
    if count:
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
            "tolerations"
        ]
    if spec["gpu"].get("type") and "cloud.google.com/gke-accelerator" not in spec["nodeSelector"]:
        assert pod["nodeSelector"]["cloud.google.com/gke-accelerator"] == "nvidia-l4"
    # The Service port named http is the engine's port.
    [port] = resources.build_service(llm, SETTINGS)["spec"]["ports"]
    assert (port["name"], port["port"]) == ("http", ENGINES[spec["engine"]].port)


# --- LoRA adapters -------------------------------------------------------------------------------


def _template(case: str, **changes: Any) -> dict[str, Any]:
    template: dict[str, Any] = resources.build_workload(
        make("llm", {**CASES[case], **changes}), SETTINGS
    )["spec"]["template"]
    return template


@pytest.mark.parametrize("case", ["vllm-adapters", "vllm-adapters-shared"])
def test_vllm_adapters_never_change_the_pod_template(case: str) -> None:
    """Adding, removing or changing adapters touches the ConfigMap (and Jobs) only."""
    before = _template(case)
    for adapters in (
        [],
        [{"name": "new", "source": "hf://acme/new-lora"}],
        [{"name": "support-bot", "source": "hf://acme/other", "revision": "v9"}],
    ):
        assert _template(case, adapters=adapters) == before
    configs = {
        json.dumps(
            resources.build_adapters_config(make("llm", {**CASES[case], "adapters": a}), SETTINGS)
        )
        for a in ([], [{"name": "new", "source": "x"}])
    }
    assert len(configs) == 2


def test_start_time_adapters_roll_the_replicas() -> None:
    for case in ("tgi-adapters", "ollama-adapters"):
        assert _template(case) != _template(case, adapters=[])


def test_adapters_config_and_agent() -> None:
    llm = make("qwen", CASES["vllm-adapters"])
    config = resources.build_adapters_config(llm, SETTINGS)
    assert config is not None
    assert config["metadata"]["name"] == "qwen-adapters"
    assert json.loads(config["data"]["adapters.json"]) == {
        "adapters": [
            {
                "name": "support-bot",
                "source": "hf://acme/qwen2.5-7b-support-lora",
                "revision": "v2",
            },
            {"name": "sql-writer", "source": "adapters/sql-writer", "revision": None},
        ]
    }
    pod = resources.build_workload(llm, SETTINGS)["spec"]["template"]["spec"]
    server, agent = pod["containers"]
    assert agent["name"] == "adapter-agent"
    assert agent["command"] == ["python", "-m", "relais_operator.adapter_agent"]
    assert agent["ports"] == [{"name": "agent", "containerPort": 8001, "protocol": "TCP"}]
    env = {e["name"]: e.get("value") for e in agent["env"]}
    assert env["RELAIS_ADAPTERS_FILE"] == "/etc/relais/adapters/adapters.json"
    assert env["RELAIS_ENGINE_URL"] == "http://127.0.0.1:8000"
    assert env["RELAIS_CACHE_PATH"] == "/data"
    assert "RELAIS_CACHE_READ_ONLY" not in env
    assert "HF_TOKEN" in env  # per-replica caches: the agent downloads
    mount = {"name": "adapters", "mountPath": "/etc/relais/adapters", "readOnly": True}
    assert mount in agent["volumeMounts"]
    assert {"name": "adapters", "configMap": {"name": "qwen-adapters"}} in pod["volumes"]
    args = server["args"]
    assert args[args.index("--max-loras") + 1] == "8"
    assert args[args.index("--max-lora-rank") + 1] == "32"
    assert "--enable-lora" in args
    server_env = {e["name"]: e.get("value") for e in server["env"]}
    assert server_env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"


def test_shared_cache_agent_reads_only_and_jobs_download() -> None:
    llm = make("qwen", CASES["vllm-adapters-shared"])
    agent = resources.build_workload(llm, SETTINGS)["spec"]["template"]["spec"]["containers"][1]
    env = {e["name"]: e.get("value") for e in agent["env"]}
    assert env["RELAIS_CACHE_READ_ONLY"] == "1"
    assert {"name": "models", "mountPath": "/data", "readOnly": True} in agent["volumeMounts"]
    [job] = resources.build_adapter_jobs(llm, SETTINGS)
    [adapter] = llm.spec.adapters
    assert job["metadata"]["name"] == resources.adapter_job_name(llm, adapter)
    assert job["metadata"]["name"].startswith("qwen-adapter-")
    job_env = {
        e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert job_env["RELAIS_MODEL"] == "acme/qwen2.5-7b-support-lora"
    assert job_env["RELAIS_REVISION"] == "main"
    # Adapter Jobs never gate the StatefulSet of run-time engines (only the model's Job does).
    rwo = make("qwen", {**CASES["vllm-adapters-shared"], "storage": {}})
    assert resources.build_adapter_jobs(rwo, SETTINGS) == []


def test_lora_off_means_no_agent_and_no_config() -> None:
    llm = make("qwen", CASES["vllm-2gpu"])
    assert resources.build_adapters_config(llm, SETTINGS) is None
    pod = resources.build_workload(llm, SETTINGS)["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["model-server"]
    assert "--enable-lora" not in pod["containers"][0]["args"]


def test_long_names_give_short_adapter_job_names() -> None:
    name = "a" * 52
    llm = make(name, CASES["vllm-adapters-shared"])
    [job] = resources.build_adapter_jobs(llm, SETTINGS)
    assert len(job["metadata"]["name"]) <= 63


@pytest.mark.parametrize("arg", ["--enable-lora", "--max-loras=2", "--max-lora-rank"])
def test_vllm_rejects_lora_flags_it_sets(arg: str) -> None:
    spec = {**CASES["vllm-adapters"], "args": [arg]}
    with pytest.raises(InvalidSpecError, match="is set by the operator"):
        make("q", spec)


@pytest.mark.parametrize(
    ("case", "var"),
    [
        ("vllm-adapters", "VLLM_ALLOW_RUNTIME_LORA_UPDATING"),
        ("tgi-adapters", "LORA_ADAPTERS"),
        ("ollama-adapters", "RELAIS_ADAPTERS"),
    ],
)
def test_adapter_env_is_managed(case: str, var: str) -> None:
    with pytest.raises(InvalidSpecError, match=f"{var} is set by the operator"):
        make("q", {**CASES[case], "env": [{"name": var, "value": "x"}]})


def test_agent_image_default_is_this_release() -> None:
    chart = yaml.safe_load((GOLDEN.parents[1] / ".." / "charts/relais/Chart.yaml").read_text())
    assert SETTINGS.agent_image.endswith(f":{chart['appVersion']}")
    assert OperatorSettings(agent_image="mirror/op:1").agent_image == "mirror/op:1"

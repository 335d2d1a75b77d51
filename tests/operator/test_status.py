"""Pure status computation: phases, conditions, and transition times."""

from __future__ import annotations

import pathlib
from typing import Any

import jsonschema
import yaml
from relais_operator import status
from relais_operator.settings import OperatorSettings
from relais_operator.status import PodState, WorkloadState

from tests.operator.builders import CASES, make

SETTINGS = OperatorSettings()
CRD = pathlib.Path(__file__).resolve().parents[2] / "manifests" / "crd.yaml"
T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"


def _compute(
    workload: WorkloadState | None,
    pods: list[PodState],
    previous: dict[str, Any] | None = None,
    replicas: int = 2,
) -> dict[str, Any]:
    llm = make("qwen", {**CASES["ollama-l4"], "replicas": replicas}, generation=3)
    return status.compute(llm, SETTINGS, workload, pods, previous or {}, T1 if previous else T0)


def _ready(result: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in result["conditions"] if c["type"] == "Ready")


def test_all_ready() -> None:
    result = _compute(WorkloadState(replicas=2, ready_replicas=2), [])
    assert result["phase"] == "Ready"
    assert _ready(result) | {"lastTransitionTime": None} == {
        "type": "Ready",
        "status": "True",
        "reason": "AllReplicasReady",
        "message": "2/2 replicas ready",
        "observedGeneration": 3,
        "lastTransitionTime": None,
    }
    assert result["endpoint"] == "http://qwen.models.svc.cluster.local:11434"
    assert result["selector"] == "relais.dev/llmdeployment=qwen"
    assert (result["servedModelName"], result["observedGeneration"]) == ("qwen2.5:7b-instruct", 3)


def test_unschedulable_reason_surfaces() -> None:
    message = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."
    pods = [PodState(name="qwen-0", unschedulable=message)]
    result = _compute(WorkloadState(replicas=1), pods)
    assert result["phase"] == "Pending"
    assert _ready(result)["reason"] == "Unschedulable"
    assert message in _ready(result)["message"]


def test_degraded_fetching_failed_and_zero() -> None:
    assert _compute(WorkloadState(replicas=2, ready_replicas=1), [])["phase"] == "Degraded"
    fetching = _compute(WorkloadState(replicas=1), [PodState(name="q-0", fetch="fetching")])
    assert (fetching["phase"], _ready(fetching)["reason"]) == ("Loading", "FetchingModel")
    failed = _compute(
        WorkloadState(replicas=1), [PodState(name="q-0", fetch="failed", fetch_message="401")]
    )
    assert failed["phase"] == "Failed"
    cache = next(c for c in failed["conditions"] if c["type"] == "ModelCacheReady")
    assert (cache["status"], cache["reason"]) == ("False", "FetchFailed")
    zero = _compute(WorkloadState(), [], replicas=0)
    assert (zero["phase"], _ready(zero)["reason"]) == ("ScaledToZero", "ScaledToZero")


def test_stale_workload_is_not_ready() -> None:
    stale = WorkloadState(replicas=2, ready_replicas=2, up_to_date=False)
    assert _compute(stale, [])["phase"] == "Degraded"


def test_transition_time_moves_only_on_flips() -> None:
    first = _compute(WorkloadState(replicas=2), [])
    same = _compute(WorkloadState(replicas=2), [], previous=first)
    assert _ready(same)["lastTransitionTime"] == T0
    assert not status.needs_update(first, same)
    flipped = _compute(WorkloadState(replicas=2, ready_replicas=2), [], previous=first)
    assert _ready(flipped)["lastTransitionTime"] == T1
    assert status.needs_update(first, flipped)


def test_pod_state_summary() -> None:
    pod: dict[str, Any] = {
        "metadata": {"name": "q-0"},
        "status": {
            "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "Ready", "status": "False"},
            ],
            "initContainerStatuses": [
                {
                    "name": "fetch-model",
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    "lastState": {"terminated": {"exitCode": 1, "message": "401 Unauthorized"}},
                }
            ],
        },
    }
    state = status.pod_state(pod)
    assert (state.fetch, state.fetch_message, state.unschedulable) == (
        "failed",
        "401 Unauthorized",
        None,
    )
    pod["status"]["initContainerStatuses"][0]["state"] = {"terminated": {"exitCode": 0}}
    assert status.pod_state(pod).fetch == "done"


def test_every_status_fits_the_crd_status_schema() -> None:
    schema = yaml.safe_load(CRD.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    validator = jsonschema.Draft7Validator(schema["properties"]["status"])
    samples = [
        _compute(None, []),
        _compute(WorkloadState(replicas=2, ready_replicas=2), []),
        _compute(
            WorkloadState(replicas=2, ready_replicas=1), [PodState(name="q-1", unschedulable="x")]
        ),
        _compute(WorkloadState(replicas=1), [PodState(name="q-0", fetch="failed")]),
        _compute(WorkloadState(), [], replicas=0),
        status.compute(make("v", CASES["vllm-2gpu"]), SETTINGS, None, [], {}, T0),
        status.invalid("spec: bad", 1, {}, T0),
    ]
    for sample in samples:
        assert list(validator.iter_errors(sample)) == []


def test_vllm_status_names_its_parsers() -> None:
    def parsers(spec: dict[str, Any]) -> tuple[str, str]:
        llm = make("q", {"engine": "vllm", **spec})
        result = status.compute(llm, SETTINGS, None, [], {}, T0)
        return result["toolCallParser"], result["reasoningParser"]

    assert parsers({"model": "Qwen/Qwen3-8B"}) == ("hermes", "qwen3")
    assert parsers({"model": "acme/unknown-7b"}) == ("none", "none")
    assert parsers({"model": "acme/unknown-7b", "toolCallParser": "pythonic"}) == (
        "pythonic",
        "none",
    )
    assert "toolCallParser" not in _compute(None, [])  # not vLLM: no parsers to report


def test_invalid_status() -> None:
    result = status.invalid("spec: bad", 4, {}, T0)
    assert result["phase"] == "Invalid"
    assert result["conditions"][0] | {"lastTransitionTime": T0} == {
        "type": "Ready",
        "status": "False",
        "reason": "InvalidSpec",
        "message": "spec: bad",
        "observedGeneration": 4,
        "lastTransitionTime": T0,
    }


def _shared(fetch: status.JobState | None, workload: WorkloadState | None) -> dict[str, Any]:
    llm = make("tiny", CASES["cpu-shared-cache"], generation=2)
    return status.compute(llm, SETTINGS, workload, [], {}, T0, fetch=fetch)


def _cache(result: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in result["conditions"] if c["type"] == "ModelCacheReady")


def test_shared_cache_follows_the_download_job() -> None:
    running = _shared(status.JobState(name="tiny-fetch-1"), WorkloadState())
    assert (running["phase"], _ready(running)["reason"]) == ("Loading", "FetchingModel")
    assert (_cache(running)["status"], _cache(running)["reason"]) == ("False", "Downloading")
    assert "tiny-fetch-1" in _cache(running)["message"]
    assert _cache(_shared(None, None))["reason"] == "Downloading"

    failed = _shared(
        status.JobState(name="tiny-fetch-1", phase="failed", message="401 Unauthorized"),
        WorkloadState(),
    )
    assert (failed["phase"], _ready(failed)["reason"]) == ("Failed", "ModelFetchFailed")
    assert (_cache(failed)["status"], _cache(failed)["reason"]) == ("False", "FetchFailed")
    assert "401 Unauthorized" in _cache(failed)["message"]

    done = status.JobState(name="tiny-fetch-1", phase="succeeded")
    starting = _shared(done, WorkloadState(replicas=3))
    assert (_cache(starting)["status"], _cache(starting)["reason"]) == ("True", "Cached")
    assert (starting["phase"], _ready(starting)["reason"]) == ("Pending", "ReplicasNotReady")
    ready = _shared(done, WorkloadState(replicas=3, ready_replicas=3))
    assert ready["phase"] == "Ready"


def test_job_state_summary() -> None:
    job: dict[str, Any] = {"metadata": {"name": "j"}, "status": {"active": 1}}
    assert status.job_state(job) == status.JobState(name="j", phase="running")
    job["status"] = {"succeeded": 1}
    assert status.job_state(job).succeeded
    job["status"] = {
        "failed": 4,
        "conditions": [
            {"type": "FailureTarget", "status": "True", "message": "early"},
            {
                "type": "Failed",
                "status": "True",
                "reason": "BackoffLimitExceeded",
                "message": "Job has reached the specified backoff limit",
            },
        ],
    }
    assert status.job_state(job) == status.JobState(
        name="j", phase="failed", message="Job has reached the specified backoff limit"
    )
    job["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
    assert status.job_state(job).phase == "succeeded"


def test_shared_statuses_fit_the_crd_status_schema() -> None:
    schema = yaml.safe_load(CRD.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    validator = jsonschema.Draft7Validator(schema["properties"]["status"])
    for fetch in (
        None,
        status.JobState(name="j"),
        status.JobState(name="j", phase="failed", message="x"),
        status.JobState(name="j", phase="succeeded"),
    ):
        assert list(validator.iter_errors(_shared(fetch, WorkloadState()))) == []


def _fetch_pod(state: dict[str, Any], name: str = "tiny-fetch-1-abcde") -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "labels": {"relais.dev/fetch-for": "tiny", "job-name": "tiny-fetch-1"},
            "ownerReferences": [{"kind": "Job", "name": "tiny-fetch-1"}],
        },
        "status": {"containerStatuses": [{"name": "fetch-model", "state": state}]},
    }


def test_fetch_pod_problems_reach_the_job_state() -> None:
    missing = 'secret "hf-token" not found'
    stuck = status.fetch_pod_state(
        _fetch_pod({"waiting": {"reason": "CreateContainerConfigError", "message": missing}})
    )
    assert stuck == status.FetchPodState(
        name="tiny-fetch-1-abcde",
        job="tiny-fetch-1",
        problem=f"CreateContainerConfigError: {missing}",
    )
    crashed = status.fetch_pod_state(
        _fetch_pod({"terminated": {"exitCode": 1, "message": "401 Client Error\n"}}, "p2")
    )
    assert crashed.problem == "exit code 1: 401 Client Error"
    fine = status.fetch_pod_state(_fetch_pod({"running": {}}, "p3"))
    assert fine.problem == ""

    job = status.JobState(name="tiny-fetch-1")
    told = status.with_pod_problems(job, [fine, stuck])
    assert told is not None
    assert told.problem == f"tiny-fetch-1-abcde: CreateContainerConfigError: {missing}"
    result = _shared(told, WorkloadState())
    assert missing in _cache(result)["message"]
    assert missing in _ready(result)["message"]
    other = status.FetchPodState(name="x", job="another-job", problem="old trouble")
    assert status.with_pod_problems(job, [other]) == job  # a superseded Job's pods say nothing
    done = status.JobState(name="tiny-fetch-1", phase="succeeded")
    assert status.with_pod_problems(done, [stuck]) == done
    assert status.with_pod_problems(None, [stuck]) is None


AUTOSCALED = {**CASES["ollama-l4"], "autoscaling": {"minReplicas": 0, "maxReplicas": 3}}
VIEW = {"demand": 1.33, "desiredReplicas": 1, "lastScaleTime": T0}


def test_the_autoscalers_view_is_shown_while_autoscaling_is_set() -> None:
    llm = make("qwen", AUTOSCALED)
    shown = status.compute(llm, SETTINGS, WorkloadState(), [], {}, T0, None, VIEW)
    assert shown["autoscaling"] == VIEW
    schema = yaml.safe_load(CRD.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    validator = jsonschema.Draft7Validator(schema["properties"]["status"])
    assert list(validator.iter_errors(shown)) == []
    # No view yet (the autoscaler has not looked): the status does not claim one.
    assert "autoscaling" not in status.compute(llm, SETTINGS, WorkloadState(), [], {}, T0)


def test_turning_autoscaling_off_removes_the_view() -> None:
    llm = make("qwen", CASES["ollama-l4"])
    gone = status.compute(llm, SETTINGS, None, [], {"autoscaling": VIEW}, T0, None, VIEW)
    assert gone["autoscaling"] is None  # a merge patch deletes the key
    assert "autoscaling" not in status.compute(llm, SETTINGS, None, [], {}, T0, None, VIEW)


# --- adapters ------------------------------------------------------------------------------------

_SCHEMA = yaml.safe_load(CRD.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
_STATUS = jsonschema.Draft7Validator(_SCHEMA["properties"]["status"])


def _adapters(
    case: str, inputs: status.AdapterInputs | None, ready: int = 2, **changes: Any
) -> dict[str, Any]:
    llm = make("qwen", {**CASES[case], **changes})
    workload = WorkloadState(replicas=2, ready_replicas=ready)
    result = status.compute(llm, SETTINGS, workload, [], {}, T0, adapters=inputs)
    _STATUS.validate(result)
    return result


def _cond(result: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in result["conditions"] if c["type"] == type_), None)


def test_agent_reports_make_adapter_states() -> None:
    ok = status.AgentReport("support-bot", "Ready")
    reports = {
        "qwen-0": [ok, status.AgentReport("sql-writer", "Failed", "adapter_config.json missing")],
        "qwen-1": [ok, status.AgentReport("sql-writer", "Loading")],
    }
    result = _adapters("vllm-adapters", status.AdapterInputs(reports=reports))
    assert result["adapters"] == [
        {
            "name": "support-bot",
            "state": "Ready",
            "message": "loaded on 2 of 2 reporting replica(s)",
            "readyReplicas": 2,
        },
        {
            "name": "sql-writer",
            "state": "Failed",
            "message": "qwen-0: adapter_config.json missing",
            "readyReplicas": 0,
        },
    ]
    cond = _cond(result, "AdaptersReady")
    assert cond is not None
    assert (cond["status"], cond["reason"]) == ("False", "AdapterFailed")
    assert "sql-writer: Failed: qwen-0: adapter_config.json missing" in cond["message"]
    # The deployment itself is unaffected.
    assert (result["phase"], _ready(result)["status"]) == ("Ready", "True")


def test_all_adapters_ready_and_none_declared() -> None:
    ready = [status.AgentReport("support-bot", "Ready"), status.AgentReport("sql-writer", "Ready")]
    result = _adapters("vllm-adapters", status.AdapterInputs(reports={"qwen-0": ready}))
    cond = _cond(result, "AdaptersReady")
    assert cond is not None
    assert (cond["status"], cond["reason"], cond["message"]) == (
        "True",
        "AllAdaptersReady",
        "2/2 adapters ready",
    )
    none = _adapters("vllm-2gpu", None)
    assert _cond(none, "AdaptersReady") is None
    assert "adapters" not in none
    llm = make("qwen", CASES["vllm-adapters"])
    removed = status.compute(
        make("qwen", {**CASES["vllm-adapters"], "adapters": []}),
        SETTINGS,
        None,
        [],
        {"adapters": status.adapter_statuses(llm, None, status.AdapterInputs())},
        T0,
    )
    assert removed["adapters"] is None  # a merge patch drops the list


def test_no_report_yet_is_pending() -> None:
    result = _adapters("vllm-adapters", status.AdapterInputs())
    assert [a["state"] for a in result["adapters"]] == ["Pending", "Pending"]
    cond = _cond(result, "AdaptersReady")
    assert cond is not None
    assert cond["reason"] == "AdaptersLoading"


def test_adapter_jobs_on_a_shared_cache() -> None:
    failed = status.JobState(name="qwen-adapter-1", phase="failed", message="401 Unauthorized")
    result = _adapters("vllm-adapters-shared", status.AdapterInputs(jobs={"support-bot": failed}))
    [entry] = result["adapters"]
    assert entry["state"] == "Failed"
    assert "qwen-adapter-1 failed: 401 Unauthorized" in entry["message"]
    running = status.JobState(name="qwen-adapter-1")
    result = _adapters("vllm-adapters-shared", status.AdapterInputs(jobs={"support-bot": running}))
    assert result["adapters"][0]["state"] == "Downloading"


def test_start_time_adapters_follow_the_replicas() -> None:
    result = _adapters("ollama-adapters", status.AdapterInputs())
    assert {a["state"] for a in result["adapters"]} == {"Ready"}
    assert result["adapters"][0]["readyReplicas"] == 2
    assert "loaded at start" in result["adapters"][0]["message"]
    cold = _adapters("tgi-adapters", status.AdapterInputs(), ready=0)
    assert {a["state"] for a in cold["adapters"]} == {"Pending"}


def test_name_clashes_are_conflicts() -> None:
    llm = make("qwen", CASES["vllm-adapters"])
    other = make("other", {**CASES["ollama-l4"], "model": "support-bot"})
    third = make("third", CASES["tgi-adapters"])  # declares sql-writer and support-bot too
    conflicts = status.adapter_conflicts(llm, [llm, other, third])
    assert set(conflicts) == {"support-bot", "sql-writer"}
    assert "served model name of LLMDeployment models/other" in conflicts["support-bot"]
    assert "LLMDeployment models/third declares an adapter" in conflicts["sql-writer"]
    result = _adapters("vllm-adapters", status.AdapterInputs(conflicts=conflicts))
    assert {a["state"] for a in result["adapters"]} == {"Conflict"}
    cond = _cond(result, "AdaptersReady")
    assert cond is not None
    assert cond["reason"] == "AdapterConflict"
    assert status.adapter_conflicts(llm, [llm]) == {}


def test_agent_reports_parse_defensively() -> None:
    assert status.parse_reports({"adapters": [{"name": "a", "state": "Ready"}]}) == [
        status.AgentReport("a", "Ready")
    ]
    junks: list[Any] = [None, [], {"adapters": "x"}, {"adapters": [1, {"state": "Ready"}]}]
    for junk in junks:
        assert status.parse_reports(junk) == []


def test_pod_state_finds_the_agent() -> None:
    pod = {
        "metadata": {"name": "qwen-0"},
        "spec": {
            "containers": [
                {"name": "model-server"},
                {"name": "adapter-agent", "ports": [{"name": "agent", "containerPort": 8001}]},
            ]
        },
        "status": {"podIP": "10.0.0.7", "conditions": [{"type": "Ready", "status": "True"}]},
    }
    state = status.pod_state(pod)
    assert state.agent_url == "http://10.0.0.7:8001/adapters"
    unready = status.pod_state({**pod, "status": {"podIP": "10.0.0.7"}})
    assert unready.agent_url is None


def test_agent_messages_are_bounded() -> None:
    [report] = status.parse_reports(
        {"adapters": [{"name": "a", "state": "Failed", "message": "x" * 5000}]}
    )
    assert len(report.message) == status.MAX_MESSAGE


def test_a_stuck_adapter_job_says_why() -> None:
    stuck = status.JobState(
        name="qwen-adapter-1",
        problem='qwen-adapter-1-x: CreateContainerConfigError: secret "hf" not found',
    )
    result = _adapters("vllm-adapters-shared", status.AdapterInputs(jobs={"support-bot": stuck}))
    [entry] = result["adapters"]
    assert entry["state"] == "Downloading"
    assert 'secret "hf" not found' in entry["message"]

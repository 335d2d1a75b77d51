"""Every gcloud command line the deploy/gke scripts run is accepted by the real gcloud CLI.

The scripts run in DRY_RUN=1 mode, which prints each command as a JSON argv; each gcloud command
then runs for real with no credentials and must stop at "no active account", after parsing.
The negative tests prove the check catches a bad flag, a bad value and a bad command group.
"""

from __future__ import annotations

import re
import shlex
import subprocess

import pytest

from tests.gke.conftest import FAKE_PROJECT, GKE_DIR, REPO_ROOT
from tests.gke.gcloud_cli import Verdict, check, check_all, dry_run

# (script, extra environment): together they reach every branch that runs gcloud.
SCENARIOS: list[tuple[str, dict[str, str]]] = [
    ("up.sh", {}),
    ("up.sh", {"SPOT": "1", "HF_TOKEN": "hf_not_a_real_token"}),
    ("down.sh", {"DELETE_REGISTRY": "1"}),
]


def commands_of(script: str, script_env: dict[str, str], **extra: str) -> list[list[str]]:
    return dry_run(GKE_DIR / script, {**script_env, **extra})


def gcloud_commands(script_env: dict[str, str]) -> list[list[str]]:
    """Every distinct gcloud command line of every scenario, in first-seen order."""
    seen: dict[tuple[str, ...], list[str]] = {}
    for script, extra in SCENARIOS:
        for argv in commands_of(script, script_env, **extra):
            if argv[0] == "gcloud":
                seen.setdefault(tuple(argv), argv)
    return list(seen.values())


def find(commands: list[list[str]], *words: str) -> list[str]:
    """The one command that starts with `gcloud <words>`."""
    matches = [argv for argv in commands if argv[1 : 1 + len(words)] == list(words)]
    assert len(matches) == 1, f"expected one `gcloud {' '.join(words)}`, got {matches}"
    return matches[0]


def test_every_gcloud_command_line_parses(
    gcloud_env: dict[str, str], script_env: dict[str, str]
) -> None:
    commands = gcloud_commands(script_env)
    assert len(commands) >= 20, commands
    verdicts = check_all(commands, gcloud_env)
    rejected = [verdict.explain() for verdict in verdicts if not verdict.accepted]
    assert not rejected, "gcloud rejected:\n" + "\n".join(rejected)


def test_gpu_pool_command(script_env: dict[str, str]) -> None:
    on_demand = find(commands_of("up.sh", script_env), "container", "node-pools", "create")
    spot = find(commands_of("up.sh", script_env, SPOT="1"), "container", "node-pools", "create")
    for argv in (on_demand, spot):
        assert "--accelerator=type=nvidia-l4,count=1,gpu-driver-version=latest" in argv
        assert {"--enable-autoscaling", "--min-nodes=0", "--num-nodes=0"} <= set(argv)
        assert "--machine-type=g2-standard-8" in argv
        assert f"--project={FAKE_PROJECT}" in argv
    assert "--spot" in spot
    assert "--spot" not in on_demand


def test_cluster_has_workload_identity_and_least_privilege_nodes(
    script_env: dict[str, str],
) -> None:
    commands = commands_of("up.sh", script_env)
    cluster = find(commands, "container", "clusters", "create")
    node_sa = f"relais-nodes@{FAKE_PROJECT}.iam.gserviceaccount.com"
    assert f"--workload-pool={FAKE_PROJECT}.svc.id.goog" in cluster
    assert f"--service-account={node_sa}" in cluster
    assert f"--service-account={node_sa}" in find(commands, "container", "node-pools", "create")
    grants = {
        (arg_of(argv, "--member"), arg_of(argv, "--role"))
        for argv in commands
        if argv[0] == "gcloud" and "add-iam-policy-binding" in argv
    }
    build_sa = f"relais-build@{FAKE_PROJECT}.iam.gserviceaccount.com"
    assert grants == {
        (f"serviceAccount:{node_sa}", "roles/container.defaultNodeServiceAccount"),
        (f"serviceAccount:{node_sa}", "roles/artifactregistry.reader"),
        (f"serviceAccount:{build_sa}", "roles/container.developer"),
        (f"serviceAccount:{build_sa}", "roles/logging.logWriter"),
        (f"serviceAccount:{build_sa}", "roles/artifactregistry.writer"),
        (f"serviceAccount:{build_sa}", "roles/storage.objectViewer"),
    }, "no broad roles (editor, owner, admin) and nothing else"
    registry = find(commands, "artifacts", "repositories", "create")
    assert "--repository-format=docker" in registry


def arg_of(argv: list[str], flag: str) -> str:
    return next(arg.split("=", 1)[1] for arg in argv if arg.startswith(f"{flag}="))


def test_settings_come_from_the_environment(script_env: dict[str, str]) -> None:
    commands = commands_of(
        "up.sh", script_env, CLUSTER="c2", ZONE="europe-west4-a", GPU_MAX_NODES="5"
    )
    pool = find(commands, "container", "node-pools", "create")
    assert {"--cluster=c2", "--zone=europe-west4-a", "--max-nodes=5"} <= set(pool)


# --- the check itself catches bad command lines ------------------------------------------------


def mutate(argv: list[str], old: str, new: str) -> list[str]:
    assert old in argv, argv
    return [new if arg == old else arg for arg in argv]


@pytest.fixture
def pool_create(script_env: dict[str, str]) -> list[str]:
    return find(commands_of("up.sh", script_env), "container", "node-pools", "create")


def test_the_real_pool_command_is_accepted(
    gcloud_env: dict[str, str], pool_create: list[str]
) -> None:
    verdict = check(pool_create, gcloud_env)
    assert verdict.accepted, verdict.explain()
    assert "You do not currently have an active account selected" in verdict.stderr


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("--enable-autoscaling", "--enable-autoscailing", "unrecognized arguments"),
        (
            "--accelerator=type=nvidia-l4,count=1,gpu-driver-version=latest",
            "--accelerator=type=nvidia-l4,countt=1,gpu-driver-version=latest",
            "valid keys are",
        ),
        ("--num-nodes=0", "--num-nodes=zero", "invalid int value"),
        ("node-pools", "nodepools", "Invalid choice"),
    ],
    ids=["unknown-flag", "unknown-accelerator-key", "bad-int", "bad-command-group"],
)
def test_a_bad_command_line_is_rejected(
    gcloud_env: dict[str, str], pool_create: list[str], old: str, new: str, message: str
) -> None:
    verdict = check(mutate(pool_create, old, new), gcloud_env)
    assert not verdict.accepted, verdict.explain()
    assert verdict.returncode == 2
    assert message in verdict.stderr


def test_a_bad_choice_and_a_crash_are_rejected(
    gcloud_env: dict[str, str], script_env: dict[str, str]
) -> None:
    commands = commands_of("up.sh", script_env)
    cluster = find(commands, "container", "clusters", "create")
    bad_channel = check(
        mutate(cluster, "--release-channel=regular", "--release-channel=x"), gcloud_env
    )
    assert not bad_channel.accepted, bad_channel.explain()
    registry = find(commands, "artifacts", "repositories", "create")
    # gcloud parses this flag only after the command started; it crashes rather than asking for
    # credentials, and the check treats that as a rejection too.
    bad_format = check(
        mutate(registry, "--repository-format=docker", "--repository-format=dockr"), gcloud_env
    )
    assert not bad_format.accepted, bad_format.explain()


def test_verdict_needs_the_credentials_error() -> None:
    argv = ("gcloud", "x")
    no_account = "ERROR: (gcloud.x) You do not currently have an active account selected."
    assert Verdict(argv, 1, no_account).accepted
    assert not Verdict(argv, 0, "").accepted
    assert not Verdict(argv, 2, "ERROR: (gcloud.x) unrecognized arguments: --y").accepted
    assert not Verdict(argv, 1, "ERROR: gcloud crashed (TypeError): ...").accepted


def test_gpu_driver_version_is_a_documented_choice(
    gcloud_env: dict[str, str], pool_create: list[str]
) -> None:
    """gcloud checks the accelerator's keys while parsing but its values only server-side."""
    help_text = subprocess.run(
        ["gcloud", "container", "node-pools", "create", "--help"],
        env=gcloud_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    plain = re.sub(r"\x1b\[[0-9;]*m", "", help_text)
    section = plain.split("GPU_DRIVER_VERSION\n", 1)[-1]
    section = re.split(r"must be one of:", section, maxsplit=1)[1].split("gpu-partition-size")[0]
    choices = set(re.findall(r"`([a-z]+)`:", section))
    assert {"default", "latest", "disabled"} <= choices, section
    accelerator = dict(
        item.split("=", 1) for item in arg_of(pool_create, "--accelerator").split(",")
    )
    assert accelerator["gpu-driver-version"] in choices
    assert accelerator["type"] == "nvidia-l4"


def readme_gcloud_commands() -> list[list[str]]:
    """The gcloud commands of the README's shell blocks, with the quickstart's variables set."""
    values = {"PROJECT_ID": FAKE_PROJECT, "REGION": "us-central1", "ZONE": "us-central1-a"}
    blocks = re.findall(r"```sh\n(.*?)```", (GKE_DIR / "README.md").read_text(), re.S)
    commands = []
    for line in re.sub(r"\\\n\s*", " ", "\n".join(blocks)).splitlines():
        if line.strip().startswith("gcloud "):
            expanded = re.sub(r"\$\{(\w+)\}", lambda m: values[m.group(1)], line)
            commands.append([*shlex.split(expanded), f"--project={FAKE_PROJECT}"])
    return commands


def test_readme_gcloud_commands_parse(gcloud_env: dict[str, str]) -> None:
    commands = readme_gcloud_commands()
    assert [argv[1:3] for argv in commands] == [
        ["compute", "accelerator-types"],
        ["builds", "submit"],
    ]
    # `gcloud builds submit` reads deploy/gke/cloudbuild.yaml relative to the repository root.
    verdicts = [check(argv, gcloud_env, cwd=REPO_ROOT) for argv in commands]
    rejected = [verdict.explain() for verdict in verdicts if not verdict.accepted]
    assert not rejected, "gcloud rejected:\n" + "\n".join(rejected)

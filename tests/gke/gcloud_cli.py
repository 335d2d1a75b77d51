"""Check gcloud command lines against the real gcloud CLI without credentials or network.

gcloud parses the whole command line (unknown flags, bad choices, bad ints, unknown ArgDict keys)
before it looks for credentials. With an empty config directory it therefore exits 1 with
"You do not currently have an active account selected" for a well-formed command, and exits 2
with "unrecognized arguments" / "Invalid choice" / "argument --x: ..." for a malformed one.
`check` runs one command line that way; the scripts' dry-run mode supplies the command lines.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

# What gcloud prints when it got past argument parsing and wants an account.
AUTH_ERROR = re.compile(
    r"You do not currently have an active account selected"
    r"|Reauthentication (failed|required)"
    r"|gcloud auth login"
)
# What gcloud prints when it rejects the command line itself (or crashes on a bad value).
PARSE_ERROR = re.compile(
    r"unrecognized arguments|Invalid choice|argument [-\w]+:|must be one of|gcloud crashed"
)
DRY_RUN_PREFIX = "DRY-RUN "
TIMEOUT_S = 120


@dataclass(frozen=True)
class Verdict:
    """What gcloud made of one command line."""

    argv: tuple[str, ...]
    returncode: int
    stderr: str

    @property
    def accepted(self) -> bool:
        """Parsed fine and stopped only for lack of credentials."""
        return (
            self.returncode == 1
            and AUTH_ERROR.search(self.stderr) is not None
            and PARSE_ERROR.search(self.stderr) is None
        )

    def explain(self) -> str:
        return f"{' '.join(self.argv)}\n  -> exit {self.returncode}: {self.stderr.strip()[:600]}"


def isolated_env(config_dir: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """An environment in which gcloud has no account, no prompts and no metadata server."""
    env = {
        key: value
        for key, value in (os.environ if base is None else base).items()
        if not key.startswith(("CLOUDSDK_", "GOOGLE_", "GCE_", "BOTO_"))
    }
    env.update(
        CLOUDSDK_CONFIG=str(config_dir),
        CLOUDSDK_CORE_DISABLE_PROMPTS="1",
        CLOUDSDK_CORE_CHECK_GCE_METADATA="false",
        CLOUDSDK_CORE_DISABLE_USAGE_REPORTING="true",
        CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK="true",
        CLOUDSDK_CORE_DISABLE_COLOR="true",
        # Should anything still probe the metadata server, it fails at once on a closed port.
        GCE_METADATA_HOST="127.0.0.1:9",
        GCE_METADATA_IP="127.0.0.1:9",
        NO_GCE_CHECK="True",
    )
    return env


def check(argv: Sequence[str], env: Mapping[str, str], cwd: Path | None = None) -> Verdict:
    """Run one gcloud command line with no credentials and report how it ended."""
    if list(argv[:1]) != ["gcloud"]:
        raise ValueError(f"not a gcloud command: {argv!r}")
    args = list(argv)
    if "--quiet" not in args:
        args.append("--quiet")
    result = subprocess.run(
        args,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        stdin=subprocess.DEVNULL,
        cwd=cwd,
        check=False,
    )
    return Verdict(tuple(argv), result.returncode, result.stderr)


def check_all(commands: Sequence[Sequence[str]], env: Mapping[str, str]) -> list[Verdict]:
    """`check` each command, a few at a time (each gcloud start costs about a CPU second)."""
    with ThreadPoolExecutor(max_workers=3) as pool:
        return list(pool.map(lambda argv: check(argv, env), commands))


def parse_dry_run(stderr: str) -> list[list[str]]:
    """The command lines a script printed in DRY_RUN=1 mode, in order."""
    commands: list[list[str]] = []
    for line in stderr.splitlines():
        if line.startswith(DRY_RUN_PREFIX):
            argv = json.loads(line.removeprefix(DRY_RUN_PREFIX))
            assert isinstance(argv, list)
            commands.append([str(arg) for arg in argv])
    return commands


def dry_run(script: Path, env: Mapping[str, str]) -> list[list[str]]:
    """Run a deploy/gke script in dry-run mode and return every command it would run."""
    result = subprocess.run(
        ["bash", str(script)],
        env={**env, "DRY_RUN": "1"},
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if result.returncode != 0:
        raise AssertionError(f"{script} failed in dry-run mode:\n{result.stderr}")
    return parse_dry_run(result.stderr)

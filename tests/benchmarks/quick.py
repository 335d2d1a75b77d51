"""Running a benchmark's `--quick` mode from a smoke test, and reading its PASS/FAIL verdicts.

The smoke tests check the output's shape only: the figures are the benchmark's business.
"""

from __future__ import annotations

import subprocess
import sys

from tests.fakes.servers import REPO_ROOT


def run_quick(script: str, *flags: str, timeout_s: float = 240) -> str:
    """`benchmarks/<script> --quick [flags]`'s output; it must exit 0."""
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / script), "--quick", *flags],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def verdicts(out: str, heading: str) -> list[str]:
    """The first word (PASS or FAIL) of each indented line after `heading`."""
    assert heading in out
    rest = out.split(heading, 1)[1]
    return [line.split()[0] for line in rest.splitlines() if line.startswith("  ")]

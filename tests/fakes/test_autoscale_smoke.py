"""`benchmarks/autoscale.py --quick` runs end to end on the simulated cluster and prints its report.

No figure is asserted: the benchmark prints them with PASS/FAIL; this checks the plumbing only.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.fakes.servers import REPO_ROOT

pytestmark = pytest.mark.timeout(600)


def test_autoscale_benchmark_quick_run() -> None:
    script = REPO_ROOT / "benchmarks" / "autoscale.py"
    done = subprocess.run(
        [sys.executable, str(script), "--quick"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "cold-start overhead (first token - start delay):" in out
    assert "replica-seconds used" in out
    targets = out.split("targets (issue 8):", 1)[1]
    verdicts = [line.split()[0] for line in targets.splitlines() if line.startswith("  ")]
    assert len(verdicts) == 3
    assert set(verdicts) <= {"PASS", "FAIL"}

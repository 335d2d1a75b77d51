"""`benchmarks/routing.py --quick` runs end to end and prints its tables and verdicts.

Only the output's shape is checked: the figures are the benchmark's business.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.fakes.servers import REPO_ROOT

pytestmark = pytest.mark.timeout(300)


def test_routing_quick_run() -> None:
    script = REPO_ROOT / "benchmarks" / "routing.py"
    done = subprocess.run(
        [sys.executable, str(script), "--quick"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    for trace in ("multi-turn:", "uniform:", "hot prefix:"):
        assert trace in out
    assert out.count("TTFT p50 ms") == 3
    for strategy in ("round-robin", "LeastLoad", "PrefixHash"):
        assert out.count(f"  {strategy} ") >= 3  # a row in each table
    assert "two gateways, same config:" in out
    verdicts = [
        line.split()[0] for line in out.split("targets (issue #10):", 1)[1].splitlines() if line
    ]
    assert len(verdicts) == 5
    assert set(verdicts) <= {"PASS", "FAIL"}

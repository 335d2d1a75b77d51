"""`benchmarks/autoscale.py --quick` runs end to end on the simulated cluster and prints its report.

No figure is asserted: the benchmark prints them with PASS/FAIL; this checks the plumbing only.
"""

from __future__ import annotations

import pytest

from tests.benchmarks.quick import run_quick, verdicts

pytestmark = pytest.mark.timeout(600)


def test_autoscale_benchmark_quick_run() -> None:
    out = run_quick("autoscale.py", timeout_s=540)
    assert "cold-start overhead (first token - start delay):" in out
    assert "replica-seconds used" in out
    found = verdicts(out, "targets (issue 8):")
    assert len(found) == 3
    assert set(found) <= {"PASS", "FAIL"}

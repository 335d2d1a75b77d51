"""`benchmarks/routing.py --quick` runs end to end and prints its tables and verdicts.

Only the output's shape is checked: the figures are the benchmark's business.
"""

from __future__ import annotations

import pytest

from tests.benchmarks.quick import run_quick, verdicts

pytestmark = pytest.mark.timeout(300)


def test_routing_quick_run() -> None:
    out = run_quick("routing.py")
    for trace in ("multi-turn:", "uniform:", "hot prefix:"):
        assert trace in out
    assert out.count("TTFT p50 ms") == 3
    for strategy in ("round-robin", "LeastLoad", "PrefixHash"):
        assert out.count(f"  {strategy} ") >= 3  # a row in each table
    assert "two gateways, same config:" in out
    found = verdicts(out, "targets (issue #10):")
    assert len(found) == 5
    assert set(found) <= {"PASS", "FAIL"}

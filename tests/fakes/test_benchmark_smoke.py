"""`benchmarks/gateway_overhead.py --quick --reference` runs end to end and prints its table.

No timing is asserted here: the figures are the benchmark's business, printed side by side.
"""

from __future__ import annotations

import pytest

from tests.benchmarks.quick import run_quick, verdicts

pytestmark = pytest.mark.timeout(600)


def test_gateway_overhead_quick_run() -> None:
    out = run_quick("gateway_overhead.py", "--reference", timeout_s=540)
    for case in ("c=1   plain", "c=32  plain", "c=128 plain", "c=1   stream", "c=128 stream"):
        assert case in out
    assert "p50 x" in out
    assert out.count("bare proxy|") == 6  # the reference proxy, measured for every case
    assert "time to first token the bare proxy adds" in out
    found = verdicts(out, "targets (issue 3):")
    assert len(found) >= 9
    assert set(found) <= {"PASS", "FAIL"}

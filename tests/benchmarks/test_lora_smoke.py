"""`benchmarks/lora.py --quick` runs end to end and prints its table and verdicts.

Only the output's shape is checked: the figures are the benchmark's business.
"""

from __future__ import annotations

import pytest

from tests.benchmarks.quick import run_quick, verdicts

pytestmark = pytest.mark.timeout(300)


def test_lora_quick_run() -> None:
    out = run_quick("lora.py")
    assert "loads/1000" in out
    for strategy in ("PrefixHash", "LeastLoad"):
        assert f"  {strategy} " in out
    found = verdicts(out, "targets (issue #16):")
    assert len(found) == 3
    assert set(found) <= {"PASS", "FAIL"}

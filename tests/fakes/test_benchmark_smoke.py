"""`benchmarks/gateway_overhead.py --quick --reference` runs end to end and prints its table.

No timing is asserted here: the figures are the benchmark's business, printed side by side.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.fakes.servers import REPO_ROOT

pytestmark = pytest.mark.timeout(600)


def test_gateway_overhead_quick_run() -> None:
    script = REPO_ROOT / "benchmarks" / "gateway_overhead.py"
    done = subprocess.run(
        [sys.executable, str(script), "--quick", "--reference"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    for case in ("c=1   plain", "c=32  plain", "c=128 plain", "c=1   stream", "c=128 stream"):
        assert case in out
    assert "p50 x" in out
    assert out.count("bare proxy|") == 6  # the reference proxy, measured for every case
    assert "time to first token the bare proxy adds" in out
    assert "targets (issue 3):" in out
    targets = out.split("targets (issue 3):", 1)[1]
    verdicts = [line.split()[0] for line in targets.splitlines() if line.startswith("  ")]
    assert len(verdicts) >= 9
    assert set(verdicts) <= {"PASS", "FAIL"}

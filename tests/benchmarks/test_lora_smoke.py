"""`benchmarks/lora.py --quick` runs end to end and prints its table and verdicts.

Only the output's shape is checked: the figures are the benchmark's business.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.fakes.servers import REPO_ROOT

pytestmark = pytest.mark.timeout(300)


def test_lora_quick_run() -> None:
    script = REPO_ROOT / "benchmarks" / "lora.py"
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
    assert "loads/1000" in out
    for strategy in ("PrefixHash", "LeastLoad"):
        assert f"  {strategy} " in out
    verdicts = [
        line.split()[0] for line in out.split("targets (issue #16):", 1)[1].splitlines() if line
    ]
    assert len(verdicts) == 3
    assert set(verdicts) <= {"PASS", "FAIL"}

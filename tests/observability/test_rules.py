"""The alert rules: promtool checks the rule file and runs its unit tests (each alert firing and
not firing); the README has a runbook line for every alert."""

from __future__ import annotations

from tests.observability.prom import RULE_TESTS, RULES, alert_rules, promtool
from tests.packaging.conftest import ROOT


def test_promtool_checks_the_rules() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    result = promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    tested = RULE_TESTS.read_text()
    for rule in alert_rules():
        assert f"alertname: {rule['alert']}" in tested, f"{rule['alert']} has no unit test"


def test_every_alert_has_a_runbook_line() -> None:
    readme = ROOT.joinpath("README.md").read_text()
    section = readme[readme.index("### Alerts") :]
    for rule in alert_rules():
        assert f"`{rule['alert']}`" in section, f"{rule['alert']} has no runbook line"
        assert rule["annotations"]["runbook"] == "README.md#alerts"

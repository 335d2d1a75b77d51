"""A real Prometheus for the observability tests: started on loopback with a scrape config the
test writes, queried over its HTTP API; and the PromQL found in the chart's dashboards and rules.

Prometheus and promtool come from Debian's `prometheus` package (hack/install-tools.sh installs
it); a missing binary fails the test, as any tool `make install` provides.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import re
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import yaml

from tests.fakes.servers import free_port, run_server
from tests.packaging.conftest import CHART, require_tool

DASHBOARDS = CHART / "dashboards"
RULES = CHART / "rules" / "relais.rules.yaml"
RULE_TESTS = CHART / "rules" / "relais.rules.test.yaml"
# A panel whose expressions cannot have data here says why in its description, after this.
NO_DATA = "relais: no data in tests: "
# A panel reading series a parallel change adds says which selector, after this and before ":".
PENDING = "relais: pending: "
# Grafana's variables, as the tests substitute them (the load runs ~20 s, scraped every second).
VARIABLES = {"$__rate_interval": "15s", "$__range": "60s", "$model": ".*"}


@dataclass(frozen=True)
class Expression:
    """One PromQL expression of a dashboard panel or an alert, and where it comes from."""

    where: str
    expr: str
    description: str = ""

    @property
    def no_data_reason(self) -> str | None:
        return _after(self.description, NO_DATA)

    @property
    def pending_selector(self) -> str | None:
        rest = _after(self.description, PENDING)
        return rest.split(": ", 1)[0] if rest else None

    def promql(self) -> str:
        """The expression with Grafana's variables replaced."""
        text = self.expr
        for name, value in VARIABLES.items():
            text = text.replace(name, value)
        return text


def _after(text: str, marker: str) -> str | None:
    index = text.find(marker)
    return text[index + len(marker) :] if index >= 0 else None


def dashboards() -> dict[str, dict[str, Any]]:
    """The chart's dashboards by file stem."""
    return {path.stem: json.loads(path.read_text()) for path in sorted(DASHBOARDS.glob("*.json"))}


def panel_expressions() -> list[Expression]:
    found = []
    for name, board in dashboards().items():
        for panel in board["panels"]:
            for target in panel["targets"]:
                where = f"{name}: {panel['title']} [{target['refId']}]"
                found.append(Expression(where, target["expr"], panel.get("description", "")))
    return found


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


_THRESHOLD = re.compile(r"\s*(?:>|<|==|!=|>=|<=)\s*[0-9.]+\s*$")


def signal(expr: str) -> str:
    """An alert's expression without its final threshold: the series it compares."""
    return _THRESHOLD.sub("", expr.strip())


class Prometheus:
    """A running Prometheus: `query()` evaluates PromQL now, `api()` reads any endpoint."""

    def __init__(self, url: str) -> None:
        self.url = url

    def api(self, path: str, **params: str) -> Any:
        import urllib.error
        import urllib.parse
        import urllib.request

        query = urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=30) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as exc:  # a bad query: 400 with the parser's error
            body = json.loads(exc.read())
        return body

    def query(self, promql: str, at: float | None = None) -> dict[str, Any]:
        """The API's whole answer (status, and data.result or error), now or at time `at`."""
        params = {"query": promql} if at is None else {"query": promql, "time": f"{at:.3f}"}
        answer: dict[str, Any] = self.api("/api/v1/query", **params)
        return answer


@contextlib.contextmanager
def prometheus(
    targets: dict[str, list[str]], rule_files: list[pathlib.Path]
) -> Iterator[Prometheus]:
    """Prometheus scraping `targets` (job -> host:port list) every second, with `rule_files`
    evaluated every second; stopped and its data removed on exit."""
    binary = require_tool("prometheus")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="relais-prom-") as tmp:
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(path) for path in rule_files],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": hosts}]}
                for job, hosts in targets.items()
            ],
        }
        path = pathlib.Path(tmp) / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        command = [
            binary,
            f"--config.file={path}",
            f"--storage.tsdb.path={tmp}/data",
            f"--web.listen-address=127.0.0.1:{port}",
        ]
        url = f"http://127.0.0.1:{port}"
        with run_server(command, url + "/-/ready", 60, pathlib.Path(tmp) / "prometheus.log"):
            yield Prometheus(url)


def promtool(*args: str, cwd: pathlib.Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_tool("promtool"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=cwd,
    )

"""The Grafana dashboards: valid JSON, unique panel ids, every panel and target on the
datasource variable, a `model` variable, and descriptions that say what a panel shows."""

from __future__ import annotations

from typing import Any

import pytest

from tests.observability.prom import dashboards

VARIABLE = {"type": "prometheus", "uid": "${datasource}"}
BOARDS = dashboards()


def test_the_three_dashboards_are_there() -> None:
    assert set(BOARDS) == {"overview", "engines", "keys"}
    assert len({board["uid"] for board in BOARDS.values()}) == len(BOARDS)


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_dashboard_shape(name: str) -> None:
    board: dict[str, Any] = BOARDS[name]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["model"]["datasource"] == VARIABLE
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids)), f"duplicate panel ids in {name}"
    for panel in board["panels"]:
        assert panel["datasource"] == VARIABLE, panel["title"]
        assert panel["description"], panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target.get("datasource", VARIABLE) == VARIABLE, panel["title"]
            assert target["expr"].strip(), panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


def test_model_variable_filters_the_gateway_series() -> None:
    overview = BOARDS["overview"]
    gateway_exprs = [
        t["expr"]
        for p in overview["panels"]
        for t in p["targets"]
        if "relais_gateway_requests_total" in t["expr"]
    ]
    assert gateway_exprs
    assert all('model=~"$model"' in expr for expr in gateway_exprs)

"""The `sim` fixture: a SimCluster with the operator running, stopped after the test."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.sim.cluster import SimCluster


@pytest.fixture
async def sim() -> AsyncIterator[SimCluster]:
    async with SimCluster(start_delay_s=0.5) as cluster:
        yield cluster

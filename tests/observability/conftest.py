"""Fixtures for the observability tests: the operator tests' KMock API server and kubeconfig,
reused so the real operator runs here exactly as it does there."""

from tests.operator.conftest import api, kmock_options, kubeconfig, server

__all__ = ["api", "kmock_options", "kubeconfig", "server"]

"""Relais test suite."""

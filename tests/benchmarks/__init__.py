"""Tests of the benchmarks' own machinery: the simulated engine, the traces, smoke runs."""

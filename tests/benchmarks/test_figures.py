"""The benchmarks' figures draw from plain data (no benchmark run): a PNG each, and a --quick
run draws none by default, so smoke tests never overwrite the committed figures."""

from __future__ import annotations

from pathlib import Path

from benchmarks import figures

PNG = b"\x89PNG\r\n\x1a\n"


def test_quick_runs_draw_nothing_by_default() -> None:
    assert figures.default_path("routing", quick=True) is None
    assert figures.default_path("routing", quick=False) == figures.FIGURES / "routing.png"


def test_autoscale_figure(tmp_path: Path) -> None:
    samples = [figures.AutoscaleSample(t * 0.5, t % 7, max(0, 3 - t), t // 4) for t in range(40)]
    path = figures.autoscale(samples, [0.1 * i for i in range(100)], tmp_path / "a.png")
    assert path.read_bytes().startswith(PNG)


def test_ttft_figure(tmp_path: Path) -> None:
    runs = {
        "multi-turn": {"LeastLoad": [0.05, 0.06, 0.2], "PrefixHash": [0.02, 0.03, 0.1]},
        "uniform": {"LeastLoad": [0.07], "PrefixHash": []},
    }
    path = figures.ttft_distributions(runs, tmp_path / "r.png")
    assert path.read_bytes().startswith(PNG)


def test_latency_figure(tmp_path: Path) -> None:
    points = [
        figures.LatencyPoint(target, c, stream, 0.05 + c / 1e4, 0.06 + c / 1e3)
        for target in ("direct", "gateway", "bare")
        for c in (1, 32, 128)
        for stream in (False, True)
    ]
    path = figures.latency_vs_concurrency(points, tmp_path / "g.png")
    assert path.read_bytes().startswith(PNG)

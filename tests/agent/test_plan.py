"""The agent's pure parts: the desired file, the engine's LoRAs, the plan, back-off, messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from relais_operator.adapter_agent import (
    Adapter,
    AgentSettings,
    Load,
    Unload,
    backoff_s,
    engine_loras,
    error_message,
    parse_desired,
    plan,
    snapshot,
)


def test_plan_loads_missing_unloads_undeclared_and_reloads_a_moved_path() -> None:
    wanted: list[tuple[str, str | None]] = [("a", "/c/a"), ("b", "/c/b2"), ("c", "/c/c")]
    loaded = {"b": "/c/b1", "c": "/c/c", "gone": "/c/gone"}
    assert plan(wanted, loaded, set()) == [
        Unload("gone"),
        Load("a", "/c/a"),
        Unload("b"),
        Load("b", "/c/b2"),
    ]


def test_plan_leaves_downloading_and_backing_off_adapters_alone() -> None:
    wanted: list[tuple[str, str | None]] = [("a", None), ("b", "/c/b"), ("c", "/c/c")]
    assert plan(wanted, {"c": "/c/old"}, {"b", "c"}) == []


def test_plan_of_an_engine_that_restarted_loads_everything_again() -> None:
    wanted: list[tuple[str, str | None]] = [("a", "/c/a"), ("b", "/c/b")]
    assert plan(wanted, {}, set()) == [Load("a", "/c/a"), Load("b", "/c/b")]


def test_engine_loras_are_the_cards_with_a_parent() -> None:
    models = {
        "data": [
            {"id": "base", "root": "org/base", "parent": None},
            {"id": "a", "root": "/c/a", "parent": "base"},
        ]
    }
    assert engine_loras(models) == {"a": "/c/a"}
    with pytest.raises(ValueError, match="data"):
        engine_loras({"object": "list"})


def test_parse_desired_reads_the_operators_file() -> None:
    raw = json.dumps(
        {
            "adapters": [
                {"name": "a", "source": "adapters/a", "revision": None},
                {"name": "b", "source": "hf://org/b", "revision": "v1"},
            ]
        }
    ).encode()
    a, b = parse_desired(raw)
    assert (a, a.hf_repo) == (Adapter("a", "adapters/a"), None)
    assert (b, b.hf_repo) == (Adapter("b", "hf://org/b", "v1"), "org/b")
    for broken in (b"[]", b'{"adapters": [{"name": "x"}]}', b"not json"):
        with pytest.raises(ValueError, match=r"adapters|name|Expecting"):
            parse_desired(broken)


def test_backoff_doubles_from_the_interval_up_to_30_s() -> None:
    assert [backoff_s(n, 5) for n in (1, 2, 3, 4, 5)] == [5, 10, 20, 30, 30]
    assert backoff_s(1, 0.2) == pytest.approx(0.2)


def test_error_message_is_the_engines_own() -> None:
    body = {"error": {"message": "The lora adapter 'a' cannot be found.", "code": 404}}
    assert error_message(404, json.dumps(body)) == "The lora adapter 'a' cannot be found."
    assert error_message(500, "Internal Server Error") == (
        "the engine answered 500: Internal Server Error"
    )


def test_settings_come_from_the_contracts_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "RELAIS_ADAPTERS_FILE": "/etc/relais/adapters/adapters.json",
        "RELAIS_ENGINE_URL": "http://127.0.0.1:8000",
        "RELAIS_AGENT_PORT": "8001",
        "RELAIS_CACHE_PATH": "/data",
        "RELAIS_CACHE_READ_ONLY": "1",
        "RELAIS_AGENT_INTERVAL_S": "0.5",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = AgentSettings()
    assert settings.adapters_file == Path("/etc/relais/adapters/adapters.json")
    assert (settings.agent_port, settings.cache_read_only, settings.agent_interval_s) == (
        8001,
        True,
        0.5,
    )


def hf_cache(root: Path, repo: str, revision: str = "main") -> Path:
    """A Hugging Face cache holding repo@revision (one snapshot with an adapter config)."""
    commit = "0" * 39 + "1"
    folder = root / f"models--{repo.replace('/', '--')}"
    snapshot_dir = folder / "snapshots" / commit
    snapshot_dir.mkdir(parents=True)
    (snapshot_dir / "adapter_config.json").write_text("{}")
    (folder / "refs").mkdir()
    (folder / "refs" / revision).write_text(commit)
    return snapshot_dir


def test_snapshot_finds_a_cached_repo_and_waits_on_a_read_only_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants
    from relais_operator.adapter_agent import Waiting

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    expected = hf_cache(tmp_path, "org/cached")
    assert snapshot("org/cached", "main", read_only=True) == str(expected)
    with pytest.raises(Waiting, match="waiting for org/absent@main"):
        snapshot("org/absent", "main", read_only=True)

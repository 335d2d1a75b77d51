"""The fetch steps really run: a present cache is found and nothing is downloaded.

The Ollama step is the shell script the init container runs, with `ollama` replaced by a
recording stand-in and the cache path pointed at a temp dir. The Hugging Face step (one script
for TGI and vLLM) is the Python the init container runs, against a cache laid out as the Hub
client leaves it, with the network disabled (HF_HUB_OFFLINE): finding it must not need it.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import pytest
from relais_operator.engines import OLLAMA, TGI, VLLM, Engine, ollama_manifest_path
from relais_operator.spec import LLMDeploymentSpec

FAKE_OLLAMA = """#!/bin/sh
echo "$@" >> "{log}"
case "$1" in
  serve) exec sleep 30 ;;
  pull) mkdir -p "$(dirname "{manifest}")" && touch "{manifest}" ;;
esac
"""


def _ollama_script(tmp: pathlib.Path, model: str) -> tuple[list[str], pathlib.Path, pathlib.Path]:
    cache, log = tmp / "models", tmp / "calls.log"
    manifest = cache / ollama_manifest_path(model)
    fake = tmp / "ollama"
    fake.write_text(FAKE_OLLAMA.format(log=log, manifest=manifest))
    fake.chmod(0o755)
    command = OLLAMA.fetch_command(LLMDeploymentSpec(engine="ollama", model=model))
    script = command[-1].replace("/bin/ollama", str(fake)).replace(OLLAMA.cache_path, str(cache))
    return [*command[:-1], script], manifest, log


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX shell")
def test_ollama_fetch_pulls_once(tmp_path: pathlib.Path) -> None:
    command, manifest, log = _ollama_script(tmp_path, "qwen2.5:0.5b")
    subprocess.run(command, check=True, timeout=120, capture_output=True)
    assert manifest.exists()
    calls = log.read_text().splitlines()
    assert "serve" in calls
    assert "pull qwen2.5:0.5b" in calls

    log.unlink()  # a restarted pod: the cache is there, ollama is not even started
    result = subprocess.run(command, check=True, timeout=60, capture_output=True, text=True)
    assert not log.exists()
    assert "already cached" in result.stdout


def _hf_cache(home: pathlib.Path, repo: str, revision: str) -> None:
    """A cache as huggingface_hub leaves it after a download of repo@revision."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    root = home / "hub" / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / revision).write_text(commit)
    snapshot = root / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")


def _hf_fetch(engine: Engine, home: pathlib.Path, repo: str) -> subprocess.CompletedProcess[str]:
    command = engine.fetch_command(LLMDeploymentSpec(engine=engine.name, model=repo))  # type: ignore[arg-type]
    cache_env = {
        key: value.replace(engine.cache_path, str(home)) for key, value in engine.cache_env.items()
    }
    env = {
        **os.environ,
        **cache_env,
        "HOME": str(home),
        "RELAIS_MODEL": repo,
        "HF_HUB_OFFLINE": "1",  # any network access fails the step
    }
    return subprocess.run(
        [sys.executable, *command[1:]], env=env, timeout=120, capture_output=True, text=True
    )


HF = pytest.mark.parametrize("engine", [TGI, VLLM], ids=lambda engine: engine.name)


@HF
def test_hf_fetch_finds_the_cache_offline(engine: Engine, tmp_path: pathlib.Path) -> None:
    _hf_cache(tmp_path, "google/gemma-2-2b-it", "main")
    result = _hf_fetch(engine, tmp_path, "google/gemma-2-2b-it")
    assert result.returncode == 0, result.stderr
    assert "already cached" in result.stdout


@HF
def test_hf_fetch_downloads_when_absent(engine: Engine, tmp_path: pathlib.Path) -> None:
    result = _hf_fetch(engine, tmp_path, "google/gemma-2-2b-it")
    assert result.returncode != 0  # it went for the network (offline here): no cache, no skip
    assert "already cached" not in result.stdout


def test_each_hf_engine_runs_the_step_with_its_own_python() -> None:
    spec = LLMDeploymentSpec(engine="vllm", model="a/b")
    assert VLLM.fetch_command(spec)[0] == "python3"  # the vLLM image has no `python`
    assert TGI.fetch_command(spec)[0] == "python"
    assert VLLM.fetch_command(spec)[1:] == TGI.fetch_command(spec)[1:]  # one script

"""The fetch steps really run: a present cache is found and nothing is downloaded.

The Ollama step is the shell script the init container runs, with `ollama` replaced by a
recording stand-in and the cache path pointed at a temp dir. The Hugging Face step (one script
for TGI and vLLM) is the Python the init container runs, against a cache laid out as the Hub
client leaves it, with the network disabled (HF_HUB_OFFLINE): finding it must not need it.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import pytest
from relais_operator.engines import (
    _HF_FETCH_ADAPTERS,
    OLLAMA,
    TGI,
    VLLM,
    Engine,
    ollama_manifest_path,
)
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


# --- Ollama's start path: serve, load the model, then (only then) mark the replica ready -----

FAKE_OLLAMA_SERVER = """#!/bin/sh
echo "$@" >> "{log}"
case "$1" in
  serve) trap 'echo stopped >> "{log}"; exit 0' TERM; while :; do sleep 0.1; done ;;
  list) [ -f "{up}" ] ;;
  show) printf '  Model\\n    architecture    qwen2\\n\\n' &&
        printf '  Capabilities\\n    {capability}    \\n\\n' ;;
  run) [ -f "{loaded}" ] && [ ! -f "{ready}" ] || exit 1 ;;
  create) cat "$4" >> "{log}"; [ "$2" != broken ] ;;
esac
"""


class OllamaStart:
    """The server container's command, with a recording `ollama` and the ready file in tmp."""

    def __init__(
        self, tmp: pathlib.Path, capability: str = "completion", adapters: str = ""
    ) -> None:
        self.log, self.up, self.loaded = tmp / "calls.log", tmp / "up", tmp / "loadable"
        self.ready = tmp / "ready"
        fake = tmp / "ollama"
        fake.write_text(
            FAKE_OLLAMA_SERVER.format(
                log=self.log,
                up=self.up,
                loaded=self.loaded,
                ready=self.ready,
                capability=capability,
            )
        )
        fake.chmod(0o755)
        spec = LLMDeploymentSpec(engine="ollama", model="qwen2.5:0.5b")
        command = list(OLLAMA.command)
        assert OLLAMA.ready_file is not None
        command[2] = command[2].replace("/bin/ollama", str(fake))
        command[2] = command[2].replace(OLLAMA.ready_file, str(self.ready))
        self.stderr = tmp / "stderr"
        with self.stderr.open("w") as err:
            env = {**os.environ, "RELAIS_ADAPTERS": adapters}
            self.process = subprocess.Popen([*command, *OLLAMA.args(spec)], stderr=err, env=env)

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)


def _wait_for(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 60
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


SH = pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX shell")


@SH
def test_ollama_is_ready_only_after_its_model_is_loaded(tmp_path: pathlib.Path) -> None:
    start = OllamaStart(tmp_path)
    try:
        _wait_for(lambda: "serve" in start.calls(), "ollama serve")
        assert not start.ready.exists()  # the server does not answer yet
        start.loaded.touch()  # from now on a load succeeds
        start.up.touch()
        _wait_for(start.ready.exists, "the ready mark")
        calls = start.calls()
        assert "run qwen2.5:0.5b " in calls  # ollama run MODEL "": an empty, loading request
        assert calls.index("show qwen2.5:0.5b") < calls.index("run qwen2.5:0.5b ")
    finally:
        code = start.stop()
    assert code == 0
    assert "stopped" in start.calls()  # SIGTERM reached the server, which exited on it


@SH
def test_a_failed_load_does_not_mark_ready(tmp_path: pathlib.Path) -> None:
    start = OllamaStart(tmp_path)
    start.up.touch()  # the server answers, but every load fails
    code = start.process.wait(timeout=60)  # it stops by itself: the kubelet restarts it
    assert code == 1
    assert any(call.startswith("run") for call in start.calls())
    assert not start.ready.exists()
    assert "stopped" in start.calls()  # the server was stopped, not left behind
    assert "loading qwen2.5:0.5b failed" in start.stderr.read_text()


@SH
def test_a_stale_mark_from_a_previous_run_is_removed(tmp_path: pathlib.Path) -> None:
    (tmp_path / "ready").touch()  # /tmp is an emptyDir: it outlives a container restart
    start = OllamaStart(tmp_path)
    try:
        _wait_for(lambda: "serve" in start.calls(), "ollama serve")
        assert not start.ready.exists()
    finally:
        start.stop()


@SH
def test_an_embedding_model_is_ready_without_a_load(tmp_path: pathlib.Path) -> None:
    start = OllamaStart(tmp_path, capability="embedding")
    try:
        start.up.touch()
        _wait_for(start.ready.exists, "the ready mark")
        assert not any(call.startswith("run") for call in start.calls())
    finally:
        start.stop()


def test_the_engine_shell_scripts_pass_shellcheck(tmp_path: pathlib.Path) -> None:
    from tests.packaging.conftest import require_tool

    spec = LLMDeploymentSpec(engine="ollama", model="qwen2.5:0.5b")
    scripts = {"serve.sh": OLLAMA.command[2], "fetch.sh": OLLAMA.fetch_command(spec)[-1]}
    for name, text in scripts.items():
        (tmp_path / name).write_text(text)
    paths = [str(tmp_path / name) for name in scripts]
    result = subprocess.run(
        [require_tool("shellcheck"), "-s", "sh", *paths], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout


@SH
def test_ollama_adapters_become_derived_models_before_ready(tmp_path: pathlib.Path) -> None:
    adapters = "support-bot\t/models/adapters/support-bot\nbroken\t/models/adapters/missing"
    start = OllamaStart(tmp_path, adapters=adapters)
    try:
        start.loaded.touch()
        start.up.touch()
        _wait_for(start.ready.exists, "the ready mark")  # a failed adapter does not stop it
        calls = start.calls()
        create = "create support-bot -f /tmp/relais-adapter-support-bot.Modelfile"
        assert create in calls
        assert calls.index("run qwen2.5:0.5b ") < calls.index(create)  # after the base loaded
        assert "FROM qwen2.5:0.5b" in calls
        assert "ADAPTER /models/adapters/support-bot" in calls
        assert "adapter broken: ollama create failed" in start.stderr.read_text()
    finally:
        assert start.stop() == 0


def _hf_adapters(home: pathlib.Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    cache_env = {"HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub"), "HOME": str(home)}
    full = {**os.environ, **cache_env, "HF_HUB_OFFLINE": "1", **env}
    return subprocess.run(
        [sys.executable, "-c", _HF_FETCH_ADAPTERS],
        env=full,
        timeout=120,
        capture_output=True,
        text=True,
    )


def test_hf_fetch_links_each_adapter_at_a_known_path(tmp_path: pathlib.Path) -> None:
    """TGI's fetch step: the model, then each hf:// adapter, linked where LORA_ADAPTERS says."""
    _hf_cache(tmp_path, "google/gemma-2-2b-it", "main")
    _hf_cache(tmp_path, "acme/support-lora", "v2")
    link = tmp_path / "relais-adapters" / "ee0515f6"
    wanted = [{"repo": "acme/support-lora", "revision": "v2", "link": str(link)}]
    env = {"RELAIS_MODEL": "google/gemma-2-2b-it", "RELAIS_ADAPTERS": json.dumps(wanted)}
    for _ in range(2):  # a restarted pod: the same, offline, and the link is replaced in place
        result = _hf_adapters(tmp_path, env)
        assert result.returncode == 0, result.stderr
        assert link.is_symlink()
        assert not os.readlink(link).startswith("/")  # relative: any mount path works
        assert (link / "config.json").exists()
        assert "models--acme--support-lora/snapshots" in str(link.resolve())


def test_an_adapter_job_links_its_one_repo(tmp_path: pathlib.Path) -> None:
    _hf_cache(tmp_path, "acme/sql-lora", "main")
    link = tmp_path / "relais-adapters" / "abcd1234"
    result = _hf_adapters(tmp_path, {"RELAIS_MODEL": "acme/sql-lora", "RELAIS_LINK": str(link)})
    assert result.returncode == 0, result.stderr
    assert "already cached" in result.stdout
    assert (link / "config.json").exists()
    missing = _hf_adapters(tmp_path, {"RELAIS_MODEL": "acme/absent", "RELAIS_LINK": str(link)})
    assert missing.returncode != 0  # it went for the network (offline here)

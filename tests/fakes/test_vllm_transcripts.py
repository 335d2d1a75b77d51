"""The fake vLLM answers as real vLLM did: held to the transcripts in tests/data/vllm/.

`hack/record-vllm.py` records what real vLLM 0.32 (CPU) answered to a fixed set of requests;
this test sends the same requests to the fake and compares shapes, not generated text: status,
content type, the keys and JSON types of every body (errors: also type, param and code), and for
streams the framing and the sequence of chunk kinds (role, content, finish, usage, [DONE]) with
each kind's keys. A drifting fake fails here; re-record after a vLLM upgrade.

The `lora_*` transcripts are stateful: each was recorded from a clean server after its `setup`
requests, so the fake is reset and given the same setup first. Their adapter directory is
`{adapter}` (here a directory with an `adapter_config.json`, all the fake reads), and the LoRA
routes' messages and bare-text answers must match word for word: the adapter agent shows them.
"""

from __future__ import annotations

import json
import pathlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from tests.fakes.process import FakeEngine
from tests.fakes.servers import free_port
from tests.real_engine.vllm import sse_events

TRANSCRIPTS = pathlib.Path(__file__).resolve().parents[1] / "data" / "vllm"
CASES = sorted(p.stem for p in TRANSCRIPTS.glob("*.json") if p.stem != "loading")
# Generated text decides whether the tiny model called a tool: only the status is comparable.
STATUS_ONLY = {"chat_tools_auto"}
ADAPTER = "{adapter}"  # hack/record-vllm.py writes the generated adapter's directory so


def load(name: str) -> dict[str, Any]:
    transcript: dict[str, Any] = json.loads((TRANSCRIPTS / f"{name}.json").read_text())
    return transcript


def shape(value: Any) -> Any:
    """Keys and JSON types, recursively; a list is the set of its items' shapes."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in sorted(value.items())}
    if isinstance(value, list):
        shapes = {json.dumps(shape(item), sort_keys=True) for item in value}
        return ["list", *sorted(shapes)]
    if isinstance(value, bool) or value is None:
        return type(value).__name__
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__


def chunk_kind(event: Any) -> str:
    """What one SSE event is: role / content / finish / usage chunk, or [DONE]."""
    if event == "[DONE]":
        return "done"
    if not event["choices"]:
        return "usage"
    choice = event["choices"][0]
    if choice.get("finish_reason") is not None:
        return "finish"
    return "role" if "role" in choice.get("delta", {}) else "content"


def stream_outline(events: list[Any]) -> list[tuple[str, Any]]:
    """The kinds in order (runs of content chunks as one), each with its first chunk's shape."""
    outline: list[tuple[str, Any]] = []
    for event in events:
        kind = chunk_kind(event)
        if outline and outline[-1][0] == kind:
            continue
        outline.append((kind, shape(without_text_keys(event))))
    return outline


def without_text_keys(value: Any) -> Any:
    """The completions API keys `top_logprobs` by token text: one placeholder key instead."""
    if isinstance(value, dict):
        return {
            key: _placeholder_keys(item) if key == "top_logprobs" else without_text_keys(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [without_text_keys(item) for item in value]
    return value


def _placeholder_keys(value: Any) -> Any:
    if isinstance(value, list) and all(
        isinstance(d, dict) and all(isinstance(v, float | int) for v in d.values()) for d in value
    ):
        return [{"<token>": 0.0} for _ in value]
    return without_text_keys(value)


@pytest.fixture(scope="module")
def fakes() -> Iterator[dict[str, FakeEngine]]:
    """The fake as each recorded server: chat and embed (with a tool parser), no_parser."""
    models = ["gemma-3-270m", "all-minilm"]
    with (
        FakeEngine("vllm", models=models) as engine,
        FakeEngine("vllm", models=models, tool_parser=False) as plain,
    ):
        yield {"chat": engine, "embed": engine, "no_parser": plain}


@pytest.fixture(scope="module")
def adapter(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """An adapter directory as the fake checks it (real vLLM got a generated adapter)."""
    path = tmp_path_factory.mktemp("adapter")
    (path / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 8}')
    return path


def placed(value: Any, adapter: pathlib.Path) -> Any:
    return json.loads(json.dumps(value).replace(ADAPTER, str(adapter)))


def unplaced(value: Any, adapter: pathlib.Path) -> Any:
    return json.loads(json.dumps(value).replace(str(adapter), ADAPTER))


async def replay(fake: FakeEngine, request: dict[str, Any]) -> dict[str, Any]:
    """Send a recorded request to the fake; its answer in the transcript's form."""
    async with (
        aiohttp.ClientSession() as http,
        http.request(request["method"], fake.url + request["path"], json=request["body"]) as got,
    ):
        raw = await got.text()
        answer: dict[str, Any] = {"status": got.status, "type": got.content_type}
    if got.content_type == "text/event-stream":
        answer["sse"] = sse_events(raw)
    elif raw and got.content_type != "application/json":
        answer["text"] = raw
    else:
        answer["body"] = json.loads(raw) if raw else None
    return answer


async def replay_case(
    fake: FakeEngine, recorded: dict[str, Any], adapter: pathlib.Path
) -> dict[str, Any]:
    """A stateful (LoRA) case from a reset fake after its setup; others as they are."""
    if "setup" not in recorded:
        return await replay(fake, recorded["request"])
    await fake.reset()
    for step in recorded["setup"]:
        done = await replay(fake, placed(step, adapter))
        assert done["status"] == 200, done
    got: dict[str, Any] = unplaced(
        await replay(fake, placed(recorded["request"], adapter)), adapter
    )
    return got


@pytest.mark.parametrize("name", CASES)
async def test_fake_answers_in_the_recorded_shape(
    name: str, fakes: dict[str, FakeEngine], adapter: pathlib.Path
) -> None:
    recorded = load(name)
    got = await replay_case(fakes[recorded["request"]["server"]], recorded, adapter)
    assert got["status"] == recorded["status"]
    if name in STATUS_ONLY:
        return
    media = recorded["headers"].get("content-type", "").split(";")[0] or "application/octet-stream"
    assert got["type"] == media
    if "sse" in recorded:
        assert got["sse"]["framing"] == recorded["sse"]["framing"]
        assert stream_outline(got["sse"]["events"]) == stream_outline(recorded["sse"]["events"])
        return
    if "text" in recorded:  # vLLM's LoRA routes: 200 with bare text
        assert got.get("text") == recorded["text"]
        return
    assert shape(without_text_keys(got["body"])) == shape(without_text_keys(recorded["body"]))
    if "error" in (recorded["body"] or {}):
        keys = ("type", "param", "code")
        assert [got["body"]["error"][k] for k in keys] == [
            recorded["body"]["error"][k] for k in keys
        ]
        if recorded["request"]["path"].endswith("_lora_adapter"):
            assert got["body"]["error"]["message"] == recorded["body"]["error"]["message"]
    if name == "lora_models":  # the adapter's card: its name, its directory, the base
        cards = {card["id"]: card for card in got["body"]["data"]}
        for card in (c for c in recorded["body"]["data"] if c["parent"] is not None):
            assert {k: cards[card["id"]][k] for k in ("root", "parent")} == {
                k: card[k] for k in ("root", "parent")
            }


def test_every_recorded_case_is_replayed() -> None:
    # A transcript this test cannot replay would silently hold the fake to nothing.
    assert len(CASES) >= 14
    for name in CASES:
        assert set(load(name)["request"]) == {"server", "method", "path", "body"}
    assert len([name for name in CASES if name.startswith("lora_")]) >= 12


def test_fake_refuses_connections_while_loading() -> None:
    """Recorded: vLLM refuses connections until the model is loaded, then /health is 200."""
    port = free_port()
    command = [sys.executable, "-m", "tests.fakes.vllm", "--port", str(port)]
    proc = subprocess.Popen([*command, "--load-delay-s", "1.5"], stdout=subprocess.DEVNULL)
    observed: list[str] = []
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and observed[-1:] != ["200"]:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                    sock.sendall(b"GET /health HTTP/1.0\r\n\r\n")
                    seen = sock.recv(64).split(b" ")[1].decode()
            except ConnectionRefusedError:
                seen = "connection refused"
            if observed[-1:] != [seen]:
                observed.append(seen)
            time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert observed == load("loading")["observed"]

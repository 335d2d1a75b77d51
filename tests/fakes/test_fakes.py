"""The fake engines are faithful enough for the official `ollama` and `openai` clients.

Each fake runs as a real subprocess (one per engine for the module, reset before every test);
raw shapes (NDJSON, SSE without a space after `data:`) are checked with aiohttp.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import struct
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aiohttp
import jsonschema
import ollama
import openai
import pytest
from openai.types.chat import ChatCompletionMessageFunctionToolCall, ChatCompletionMessageParam
from openai.types.chat.chat_completion_message_function_tool_call import Function

from tests.fakes.core import DEFAULT_TEXT, REASONING_TEXT
from tests.fakes.process import FakeEngine, FakeEngineError, switch_flags
from tests.fakes.servers import free_port

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "say something nice"}]
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 3},
        "tags": {"type": "array", "items": {"type": "string"}},
        "pet": {"$ref": "#/$defs/Pet"},
        "mood": {"enum": ["happy", "sad"]},
    },
    "required": ["name", "age", "pet"],
    "$defs": {
        "Pet": {
            "type": "object",
            "properties": {"kind": {"type": "string"}, "legs": {"type": "number"}},
            "required": ["kind"],
        }
    },
}
WORDS = DEFAULT_TEXT.split()


@pytest.fixture(scope="module")
def ollama_proc() -> Iterator[FakeEngine]:
    with FakeEngine("ollama") as fake:
        yield fake


@pytest.fixture(scope="module")
def tgi_proc() -> Iterator[FakeEngine]:
    with FakeEngine("tgi") as fake:
        yield fake


@pytest.fixture(scope="module")
def vllm_proc() -> Iterator[FakeEngine]:
    with FakeEngine("vllm") as fake:
        yield fake


@pytest.fixture
def fake_vllm(vllm_proc: FakeEngine) -> FakeEngine:
    vllm_proc.reset_sync()
    return vllm_proc


@pytest.fixture
def fake_ollama(ollama_proc: FakeEngine) -> FakeEngine:
    ollama_proc.reset_sync()
    return ollama_proc


@pytest.fixture
def fake_tgi(tgi_proc: FakeEngine) -> FakeEngine:
    tgi_proc.reset_sync()
    return tgi_proc


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session


def oai(fake: FakeEngine) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=fake.url + "/v1", api_key="sk-fake", max_retries=0)


async def lines_with_times(response: aiohttp.ClientResponse) -> list[tuple[float, bytes]]:
    """Non-empty lines of a streamed body, each with its arrival time."""
    out = []
    async for raw in response.content:
        if raw.strip():
            out.append((time.perf_counter(), raw.rstrip(b"\n")))
    return out


async def poll(fake: FakeEngine, done: Callable[[dict[str, int]], bool]) -> dict[str, int]:
    """The fake's stats once `done(stats)` holds (fails after 10 s)."""
    for _ in range(200):
        stats = await fake.stats()
        if done(stats):
            return stats
        await asyncio.sleep(0.05)
    raise AssertionError(f"stats never matched: {stats}")


# ---------------------------------------------------------------- Ollama native, official client


async def test_ollama_chat_stream_with_official_client(fake_ollama: FakeEngine) -> None:
    client = ollama.AsyncClient(host=fake_ollama.url)
    parts = [part async for part in await client.chat("m:1b", MESSAGES, stream=True)]
    assert [p.done for p in parts] == [False] * 8 + [True]
    assert "".join(p.message.content or "" for p in parts) == " ".join(WORDS[:8])
    final = parts[-1]
    assert final.done_reason == "stop"
    assert final.eval_count == 8
    assert final.prompt_eval_count == 3
    assert final.total_duration is not None
    assert final.total_duration > 0


async def test_ollama_non_stream_chat_and_generate(fake_ollama: FakeEngine) -> None:
    client = ollama.AsyncClient(host=fake_ollama.url)
    chat = await client.chat("m", MESSAGES, options={"num_predict": 3})
    assert chat.message.content == " ".join(WORDS[:3])
    assert chat.done_reason == "length"
    assert chat.eval_count == 3
    generated = await client.generate("m", "hello", system="be brief")
    assert generated.response == " ".join(WORDS[:8])
    assert generated.context
    bodies = [r["json"] for r in await fake_ollama.requests()]
    assert bodies[0]["options"] == {"num_predict": 3}
    assert bodies[1]["system"] == "be brief"


async def test_ollama_ndjson_stream_shape(
    fake_ollama: FakeEngine, http: aiohttp.ClientSession
) -> None:
    body = {"model": "m", "prompt": "hi", "options": {"num_predict": 2}}
    async with http.post(fake_ollama.url + "/api/generate", json=body) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "application/x-ndjson"
        chunks = [json.loads(line) for _, line in await lines_with_times(response)]
    assert [c["response"] for c in chunks] == [WORDS[0], " " + WORDS[1], ""]
    for chunk in chunks[:-1]:
        assert set(chunk) == {"model", "created_at", "response", "done"}
    final = chunks[-1]
    assert final["done"] is True
    assert final["done_reason"] == "length"
    expected = {"context", "total_duration", "load_duration", "prompt_eval_count"}
    expected |= {"prompt_eval_duration", "eval_count", "eval_duration"}
    assert expected <= set(final)
    assert final["created_at"].endswith("Z")


async def test_stop_sequences_and_seed(fake_ollama: FakeEngine) -> None:
    client = ollama.AsyncClient(host=fake_ollama.url)
    stopped = await client.generate("m", "x", options={"stop": [" engine"]})
    assert stopped.response == "Relais fake"
    assert stopped.done_reason == "stop"
    seeded = [await client.generate("m", "x", options={"seed": 2}) for _ in range(2)]
    assert seeded[0].response == seeded[1].response
    assert (seeded[0].response or "").startswith(WORDS[2])
    assert seeded[0].response != (await client.generate("m", "x")).response


async def test_ollama_structured_output(fake_ollama: FakeEngine) -> None:
    client = ollama.AsyncClient(host=fake_ollama.url)
    answer = await client.chat("m", MESSAGES, format=SCHEMA)
    jsonschema.validate(json.loads(answer.message.content or ""), SCHEMA)
    as_json = await client.generate("m", "x", format="json")
    assert isinstance(json.loads(as_json.response or ""), dict)
    streamed = [p async for p in await client.chat("m", MESSAGES, format=SCHEMA, stream=True)]
    assert len(streamed) > 3
    jsonschema.validate(json.loads("".join(p.message.content or "" for p in streamed)), SCHEMA)
    await fake_ollama.configure(invalid_json=True)
    broken = await client.chat("m", MESSAGES, format=SCHEMA)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(json.loads(broken.message.content or ""), SCHEMA)
    with pytest.raises(ValueError, match=r"Expecting|Unterminated"):
        json.loads((await client.generate("m", "x", format="json")).response or "")


async def test_ollama_model_routes(fake_ollama: FakeEngine, http: aiohttp.ClientSession) -> None:
    await fake_ollama.configure(models=["qwen:7b", "gemma3:270m"])
    client = ollama.AsyncClient(host=fake_ollama.url)
    assert [m.model for m in (await client.list()).models] == ["qwen:7b", "gemma3:270m"]
    assert [m.model for m in (await client.ps()).models] == ["qwen:7b", "gemma3:270m"]
    shown = await client.show("qwen:7b")
    assert shown.details is not None
    assert shown.details.quantization_level == "Q4_K_M"
    with pytest.raises(ollama.ResponseError) as missing:
        await client.show("nope")
    assert missing.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as unknown:
        await client.chat("nope", MESSAGES)
    assert unknown.value.status_code == 404
    assert "not found" in unknown.value.error
    async with http.get(fake_ollama.url + "/api/version") as response:
        assert (await response.json())["version"].count(".") == 2
    async with http.get(fake_ollama.url + "/") as response:
        assert await response.text() == "Ollama is running"


async def test_ollama_bad_requests(fake_ollama: FakeEngine, http: aiohttp.ClientSession) -> None:
    url = fake_ollama.url + "/api/chat"
    cases: list[tuple[Any, int]] = [
        (b"{not json", 400),
        ({"messages": MESSAGES}, 400),
        ({"model": "m", "messages": MESSAGES, "format": "xml"}, 400),
        ({"model": "m", "messages": MESSAGES, "options": {"num_predict": "x"}}, 400),
    ]
    for body, status in cases:
        kwargs: dict[str, Any] = {"data": body} if isinstance(body, bytes) else {"json": body}
        async with http.post(url, **kwargs) as response:
            assert response.status == status
            assert set(await response.json()) == {"error"}


async def test_ollama_empty_messages_load_the_model(fake_ollama: FakeEngine) -> None:
    client = ollama.AsyncClient(host=fake_ollama.url)
    loaded = await client.chat("m", [])
    assert loaded.done_reason == "load"
    unloaded = await client.generate("m", "", keep_alive=0)
    assert unloaded.done_reason == "unload"


# ---------------------------------------------------------------- OpenAI-compatible routes


@pytest.mark.parametrize("engine", ["ollama", "tgi"])
async def test_openai_client_chat_and_completions(
    engine: str, fake_ollama: FakeEngine, fake_tgi: FakeEngine
) -> None:
    fake = fake_ollama if engine == "ollama" else fake_tgi
    client = oai(fake)
    chat = await client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=4)
    assert chat.choices[0].message.content == " ".join(WORDS[:4])
    assert chat.choices[0].finish_reason == "length"
    assert chat.usage is not None
    assert chat.usage.completion_tokens == 4
    stream = await client.chat.completions.create(
        model="m",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == " ".join(WORDS[:8])
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 8
    completion = await client.completions.create(model="m", prompt="hi", stop=[" engine"])
    assert completion.choices[0].text == "Relais fake"
    streamed = await client.completions.create(model="m", prompt="hi", stream=True, max_tokens=2)
    assert "".join([c.choices[0].text async for c in streamed]) == " ".join(WORDS[:2])
    assert [m.id async for m in client.models.list()]


@pytest.mark.parametrize(
    "response_format",
    [
        {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA}},
        {"type": "json", "value": SCHEMA},  # TGI's own form
        {"type": "json_object", "value": json.dumps(SCHEMA)},
    ],
)
@pytest.mark.parametrize("engine", ["ollama", "tgi"])
async def test_openai_structured_output(
    engine: str,
    response_format: dict[str, Any],
    fake_ollama: FakeEngine,
    fake_tgi: FakeEngine,
) -> None:
    fake = fake_ollama if engine == "ollama" else fake_tgi
    answer = await oai(fake).chat.completions.create(
        model="m",
        messages=MESSAGES,
        extra_body={"response_format": response_format},  # TGI's forms are not in the SDK types
    )
    jsonschema.validate(json.loads(answer.choices[0].message.content or ""), SCHEMA)
    await fake.configure(invalid_json=True)
    broken = await oai(fake).chat.completions.create(
        model="m",
        messages=MESSAGES,
        extra_body={"response_format": response_format},  # TGI's forms are not in the SDK types
    )
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(json.loads(broken.choices[0].message.content or ""), SCHEMA)


async def test_sse_prefixes_differ_per_engine(
    fake_ollama: FakeEngine, fake_tgi: FakeEngine, http: aiohttp.ClientSession
) -> None:
    body = {"model": "m", "messages": MESSAGES, "stream": True, "max_tokens": 1}
    for fake, prefix in ((fake_ollama, b"data: "), (fake_tgi, b"data:{")):
        async with http.post(fake.url + "/v1/chat/completions", json=body) as response:
            assert response.headers["Content-Type"] == "text/event-stream"
            lines = [line for _, line in await lines_with_times(response)]
        assert all(line.startswith(prefix[:5]) for line in lines)
        assert lines[0].startswith(prefix)
        assert lines[-1].replace(b" ", b"") == b"data:[DONE]"


async def test_openai_errors_have_each_engine_shape(
    fake_ollama: FakeEngine, fake_tgi: FakeEngine
) -> None:
    await fake_ollama.configure(models=["known"])
    with pytest.raises(openai.NotFoundError) as missing:
        await oai(fake_ollama).chat.completions.create(model="other", messages=MESSAGES)
    assert isinstance(missing.value.body, dict)
    assert missing.value.body["type"] == "not_found_error"
    with pytest.raises(openai.BadRequestError):
        await oai(fake_ollama).chat.completions.create(model="known", messages=[], max_tokens=2)
    with pytest.raises(openai.UnprocessableEntityError) as invalid:
        await oai(fake_tgi).chat.completions.create(model="m", messages=MESSAGES, max_tokens=0)
    assert invalid.value.body == "max_tokens must be an integer >= 1"  # the client unwraps `error`
    assert invalid.value.response.json()["error_type"] == "validation"


# ---------------------------------------------------------------- TGI native


async def test_tgi_generate(fake_tgi: FakeEngine, http: aiohttp.ClientSession) -> None:
    body = {"inputs": "hi there", "parameters": {"max_new_tokens": 3, "details": True}}
    async with http.post(fake_tgi.url + "/generate", json=body) as response:
        answer = await response.json()
    assert answer["generated_text"] == " ".join(WORDS[:3])
    assert answer["details"]["finish_reason"] == "length"
    assert answer["details"]["generated_tokens"] == 3
    full = {"inputs": "hi", "parameters": {"return_full_text": True, "stop": [" fake"]}}
    async with http.post(fake_tgi.url + "/generate", json=full) as response:
        answer = await response.json()
    assert answer == {"generated_text": "hiRelais fake"}  # TGI keeps the stop sequence


@pytest.mark.parametrize(
    ("parameters", "inputs", "message"),
    [
        ({"temperature": 0}, "hi", "temperature"),
        ({"top_p": 1.0}, "hi", "top_p"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "hi", "stop"),
        ({}, "", "inputs"),
        ({"max_new_tokens": 5000}, "hi", "max_new_tokens"),
    ],
)
async def test_tgi_validation_errors(
    parameters: dict[str, Any],
    inputs: str,
    message: str,
    fake_tgi: FakeEngine,
    http: aiohttp.ClientSession,
) -> None:
    body = {"inputs": inputs, "parameters": parameters}
    async with http.post(fake_tgi.url + "/generate", json=body) as response:
        assert response.status == 422
        error = await response.json()
    assert error["error_type"] == "validation"
    assert error["error"].startswith("Input validation error")
    assert message in error["error"]


async def test_tgi_generate_stream_sse(fake_tgi: FakeEngine, http: aiohttp.ClientSession) -> None:
    events = []
    for parameters in ({}, {"max_new_tokens": 2}, {"stop": [" engine"]}):
        body = {"inputs": "hi", "parameters": parameters}
        async with http.post(fake_tgi.url + "/generate_stream", json=body) as response:
            assert response.headers["Content-Type"] == "text/event-stream"
            lines = [line for _, line in await lines_with_times(response)]
        assert all(line.startswith(b"data:{") for line in lines)
        events.append([json.loads(line[5:]) for line in lines])
    natural, cut, stopped = events
    assert [e["index"] for e in natural] == list(range(1, 10))
    assert natural[-1]["token"]["special"] is True  # EOS ends a natural stop
    assert natural[-1]["details"]["finish_reason"] == "eos_token"
    assert natural[-1]["generated_text"] == " ".join(WORDS[:8])
    assert all(e["generated_text"] is None and e["details"] is None for e in natural[:-1])
    assert cut[-1]["details"] == {
        "finish_reason": "length",
        "generated_tokens": 2,
        "seed": None,
        "input_length": 1,
    }
    assert stopped[-1]["details"]["finish_reason"] == "stop_sequence"
    assert stopped[-1]["generated_text"] == "Relais fake engine"


@pytest.mark.parametrize(
    "grammar",
    [
        {"type": "json", "value": SCHEMA},
        {"type": "json_schema", "value": {"name": "person", "schema": SCHEMA}},
    ],
)
async def test_tgi_grammar(
    grammar: dict[str, Any], fake_tgi: FakeEngine, http: aiohttp.ClientSession
) -> None:
    body = {"inputs": "hi", "parameters": {"grammar": grammar}}
    async with http.post(fake_tgi.url + "/generate", json=body) as response:
        jsonschema.validate(json.loads((await response.json())["generated_text"]), SCHEMA)
    body = {"inputs": "hi", "parameters": {"grammar": {"type": "json_schema", "value": {}}}}
    async with http.post(fake_tgi.url + "/generate", json=body) as response:
        assert response.status == 422


async def test_tgi_service_routes(fake_tgi: FakeEngine, http: aiohttp.ClientSession) -> None:
    await fake_tgi.configure(models=["google/gemma-3-270m"])
    async with http.get(fake_tgi.url + "/info") as response:
        info = await response.json()
    assert info["model_id"] == "google/gemma-3-270m"
    assert info["max_total_tokens"] == 4096
    async with http.post(fake_tgi.url + "/generate", json={"inputs": "x"}) as response:
        assert response.status == 200
    async with http.get(fake_tgi.url + "/metrics") as response:
        assert "tgi_request_success 1" in await response.text()
    async with http.get(fake_tgi.url + "/health") as response:
        assert response.status == 200
    await fake_tgi.configure(healthy=False)
    async with http.get(fake_tgi.url + "/health") as response:
        assert response.status == 503
        assert (await response.json())["error_type"] == "healthcheck"
    chat = await oai(fake_tgi).chat.completions.create(model="tgi", messages=MESSAGES)
    assert chat.model == "google/gemma-3-270m"  # TGI reports the model it serves


# ---------------------------------------------------------------- failure switches


@pytest.mark.parametrize(
    ("status", "error_type"),
    [(422, "validation"), (424, "generation"), (429, "overloaded"), (500, "incomplete_generation")],
)
async def test_status_switch_tgi(
    status: int, error_type: str, fake_tgi: FakeEngine, http: aiohttp.ClientSession
) -> None:
    await fake_tgi.configure(status=status)
    for path in ("/generate", "/generate_stream", "/v1/chat/completions"):
        body = {"inputs": "x", "model": "m", "messages": MESSAGES, "stream": True}
        async with http.post(fake_tgi.url + path, json=body) as response:
            assert response.status == status
            assert (await response.json())["error_type"] == error_type
    with pytest.raises(openai.APIStatusError) as raised:
        await oai(fake_tgi).chat.completions.create(model="m", messages=MESSAGES)
    assert raised.value.status_code == status


async def test_status_switch_ollama(fake_ollama: FakeEngine) -> None:
    await fake_ollama.configure(status=503)
    with pytest.raises(ollama.ResponseError) as raised:
        await ollama.AsyncClient(host=fake_ollama.url).chat("m", MESSAGES, stream=False)
    assert raised.value.status_code == 503
    with pytest.raises(openai.InternalServerError) as oai_raised:
        await oai(fake_ollama).chat.completions.create(model="m", messages=MESSAGES)
    assert isinstance(oai_raised.value.body, dict)
    assert oai_raised.value.body["type"] == "api_error"
    await fake_ollama.configure(status=None)
    assert (await ollama.AsyncClient(host=fake_ollama.url).chat("m", MESSAGES)).done


async def test_delays_shape_the_timeline(
    fake_ollama: FakeEngine, fake_tgi: FakeEngine, http: aiohttp.ClientSession
) -> None:
    """Lower bounds only: a loaded machine may be slower, never faster than a sleep."""
    switches = {"first_token_delay_ms": 300, "token_delay_ms": 100, "tokens": 3, "delay_ms": 250}
    for fake in (fake_ollama, fake_tgi):
        await fake.configure(**switches)
    body = {"model": "m", "messages": MESSAGES, "stream": True}
    for fake, headers_early in ((fake_ollama, False), (fake_tgi, True)):
        start = time.perf_counter()
        async with http.post(fake.url + "/v1/chat/completions", json=body) as response:
            headers_at = time.perf_counter()
            lines = await lines_with_times(response)
        first = lines[0][0]
        assert first - start >= 0.29
        assert lines[2][0] - first >= 0.19  # two token gaps of 100 ms
        assert (first - headers_at >= 0.2) is headers_early  # TGI sends headers before token 1
    start = time.perf_counter()
    await oai(fake_tgi).completions.create(model="m", prompt="hi")
    assert time.perf_counter() - start >= 0.24


@pytest.mark.parametrize("engine", ["ollama", "tgi"])
async def test_drop_after_chunks(
    engine: str, fake_ollama: FakeEngine, fake_tgi: FakeEngine, http: aiohttp.ClientSession
) -> None:
    fake = fake_ollama if engine == "ollama" else fake_tgi
    await fake.configure(drop_after_chunks=2)
    body = {"model": "m", "messages": MESSAGES, "stream": True}
    received: list[bytes] = []

    async def read_raw() -> None:
        async with http.post(fake.url + "/v1/chat/completions", json=body) as response:
            assert response.status == 200
            async for line in response.content:
                received.append(line)

    with pytest.raises(aiohttp.ClientPayloadError):
        await read_raw()
    assert len([line for line in received if line.strip()]) == 2

    async def read_with_client() -> None:
        stream = await oai(fake).chat.completions.create(model="m", messages=MESSAGES, stream=True)
        async for _ in stream:
            pass

    with pytest.raises(openai.APIError):  # the official client sees the broken stream too
        await read_with_client()


async def test_drop_before_any_chunk_ollama(
    fake_ollama: FakeEngine, http: aiohttp.ClientSession
) -> None:
    """Ollama sends headers with the first chunk: dropping at 0 leaves the client nothing."""
    await fake_ollama.configure(drop_after_chunks=0)
    body = {"model": "m", "messages": MESSAGES}
    with pytest.raises(aiohttp.ClientConnectionError):  # reset or disconnected, no status line
        async with http.post(fake_ollama.url + "/api/chat", json=body) as response:
            await response.read()
    assert [r["path"] for r in await fake_ollama.requests()] == ["/api/chat"]


@pytest.mark.parametrize("engine", ["ollama", "tgi"])
async def test_hang_until_the_client_leaves(
    engine: str, fake_ollama: FakeEngine, fake_tgi: FakeEngine, http: aiohttp.ClientSession
) -> None:
    fake = fake_ollama if engine == "ollama" else fake_tgi
    await fake.configure(hang=True)
    body = {"model": "m", "messages": MESSAGES, "stream": False}
    pending = asyncio.create_task(http.post(fake.url + "/v1/chat/completions", json=body))
    stats = await poll(fake, lambda s: s["in_flight"] == 1)
    assert not pending.done()
    pending.cancel()  # the client gives up: the fake sees the connection close
    stats = await poll(fake, lambda s: s["in_flight"] == 0)
    assert stats["disconnects"] == 1
    assert (await fake.requests())[-1]["disconnected"] is True
    await fake.configure(hang=False)
    chat = await oai(fake).chat.completions.create(model="m", messages=MESSAGES)
    assert chat.choices[0].message.content


# ---------------------------------------------------------------- control plane and process


async def test_control_routes(fake_ollama: FakeEngine, http: aiohttp.ClientSession) -> None:
    await ollama.AsyncClient(host=fake_ollama.url, headers={"X-Request-ID": "r-1"}).chat(
        "m", MESSAGES
    )
    [entry] = await fake_ollama.requests()
    assert entry["path"] == "/api/chat"
    assert entry["method"] == "POST"
    assert entry["headers"]["X-Request-ID"] == "r-1"
    assert entry["json"]["messages"] == MESSAGES
    config = await fake_ollama.configure(tokens=2, text="a b c")
    assert (config["tokens"], config["text"], config["status"]) == (2, "a b c", None)
    chat = await ollama.AsyncClient(host=fake_ollama.url).chat("m", MESSAGES)
    assert chat.message.content == "a b"
    assert chat.eval_count == 2
    stats = await fake_ollama.stats()
    assert (stats["requests"], stats["successes"], stats["failures"]) == (2, 2, 0)
    with pytest.raises(FakeEngineError, match="400"):
        await fake_ollama.configure(no_such_switch=1)
    with pytest.raises(FakeEngineError, match="400"):
        await fake_ollama.configure(tokens="many")
    await fake_ollama.reset()
    assert await fake_ollama.requests() == []
    async with http.get(fake_ollama.url + "/_fake/config") as response:
        assert (await response.json())["tokens"] == 8


def test_cli_flags_set_startup_switches() -> None:
    assert switch_flags({"hang": False, "tokens": 3, "models": ["a", "b"], "status": None}) == [
        "--no-hang",
        "--tokens",
        "3",
        "--models",
        "a,b",
    ]
    with FakeEngine("tgi", tokens=2, first_token_delay_ms=5.5, models=["x/y"], hang=False) as fake:
        config = fake.configure_sync()
        assert (config["tokens"], config["first_token_delay_ms"]) == (2, 5.5)
        assert config["models"] == ["x/y"]
        fake.configure_sync(tokens=5)
        fake.reset_sync()  # back to the CLI's values, not the defaults
        assert fake.configure_sync()["tokens"] == 2
        pid = fake.pid
    with pytest.raises(FakeEngineError):
        _ = fake.url
    assert pid > 0


# ---------------------------------------------------------------- features real apps use

VLLM_MODEL = "fake-org/fake-model"
WEATHER: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "days": {"type": "integer", "minimum": 2},
        "unit": {"enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "days"],
}
TOOLS: list[Any] = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}},
]
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n fake image").decode()
ENGINE_MODEL = {"ollama": "m", "tgi": "m", "vllm": VLLM_MODEL}


@pytest.fixture
def fakes(
    fake_ollama: FakeEngine, fake_tgi: FakeEngine, fake_vllm: FakeEngine
) -> dict[str, FakeEngine]:
    return {"ollama": fake_ollama, "tgi": fake_tgi, "vllm": fake_vllm}


def image_part(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


async def sse_payloads(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> list[Any]:
    """The JSON payloads of an SSE answer, `[DONE]` excluded (and checked to end it)."""
    async with http.post(url, json=body) as response:
        assert response.status == 200
        lines = [line for _, line in await lines_with_times(response)]
    assert lines[-1].replace(b" ", b"") == b"data:[DONE]"
    return [json.loads(line.split(b":", 1)[1]) for line in lines[:-1]]


def function_call(call: Any) -> Function:
    """The function of a tool call the SDK parsed (never a custom tool call here)."""
    assert isinstance(call, ChatCompletionMessageFunctionToolCall)
    return call.function


def assert_unit(vector: list[float], size: int) -> None:
    assert len(vector) == size
    assert math.isclose(math.fsum(v * v for v in vector), 1.0, rel_tol=1e-5)


# ---------------------------------------------------------------- vLLM


async def test_vllm_n_choices_and_chat_logprobs(fake_vllm: FakeEngine) -> None:
    answer = await oai(fake_vllm).chat.completions.create(
        model=VLLM_MODEL, messages=MESSAGES, n=2, logprobs=True, top_logprobs=3, max_tokens=3
    )
    assert [c.index for c in answer.choices] == [0, 1]
    texts = [c.message.content for c in answer.choices]
    assert texts == [" ".join(WORDS[:3]), " ".join(WORDS[1:4])]  # choice i is seeded i
    for choice in answer.choices:
        assert choice.logprobs is not None
        content = choice.logprobs.content or []
        assert "".join(t.token for t in content) == choice.message.content
        for entry in content:
            assert entry.bytes == list(entry.token.encode())
            assert len(entry.top_logprobs) == 3
            assert entry.top_logprobs[0].token == entry.token
            assert [t.logprob for t in entry.top_logprobs] == sorted(
                [t.logprob for t in entry.top_logprobs], reverse=True
            )
    assert answer.usage is not None
    assert answer.usage.completion_tokens == 6
    plain = await oai(fake_vllm).chat.completions.create(
        model=VLLM_MODEL, messages=MESSAGES, stop=[" engine"]
    )
    assert plain.choices[0].logprobs is None
    stopped = plain.choices[0]
    assert (stopped.message.content, stopped.finish_reason) == (WORDS[0] + " fake", "stop")
    assert (stopped.model_extra or {})["stop_reason"] == " engine"


async def test_vllm_stream_usage_chunks_and_role_delta(
    fake_vllm: FakeEngine, http: aiohttp.ClientSession
) -> None:
    url = fake_vllm.url + "/v1/chat/completions"
    body: dict[str, Any] = {"model": VLLM_MODEL, "messages": MESSAGES, "stream": True}
    body |= {"max_tokens": 2, "stream_options": {"include_usage": True}}
    chunks = await sse_payloads(http, url, body)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["delta"].get("content") for c in chunks[1:3]] == [WORDS[0], " fake"]
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-2]["choices"][0]["delta"] == {"content": " fake"}  # the last token finishes
    assert all("usage" not in c for c in chunks[:-1])  # real vLLM 0.32: no "usage": null
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    without = await sse_payloads(http, url, {**body, "stream_options": None})
    assert all("usage" not in c for c in without)
    both = await sse_payloads(http, url, {**body, "n": 2})
    assert {c["choices"][0]["index"] for c in both if c["choices"]} == {0, 1}


async def test_vllm_completions_logprobs_batches_and_token_ids(fake_vllm: FakeEngine) -> None:
    client = oai(fake_vllm)
    answer = await client.completions.create(
        model=VLLM_MODEL, prompt="hi", logprobs=2, max_tokens=3
    )
    logprobs = answer.choices[0].logprobs
    assert logprobs is not None
    assert logprobs.tokens == [WORDS[0], " " + WORDS[1], " " + WORDS[2]]
    assert logprobs.text_offset == [0, 6, 11]
    assert len(logprobs.token_logprobs or []) == 3
    assert all(len(top) == 2 for top in logprobs.top_logprobs or [])
    batch = await client.completions.create(model=VLLM_MODEL, prompt=["a", "b c"], n=2)
    assert [c.index for c in batch.choices] == [0, 1, 2, 3]
    assert batch.usage is not None
    assert batch.usage.prompt_tokens == 3
    ids = await client.completions.create(model=VLLM_MODEL, prompt=[1, 2, 3], max_tokens=1)
    assert ids.choices[0].text == WORDS[0]
    streamed = await client.completions.create(
        model=VLLM_MODEL, prompt="hi", stream=True, logprobs=1, max_tokens=2
    )
    chunks = [c async for c in streamed]
    assert [c.choices[0].logprobs.tokens for c in chunks[:2] if c.choices[0].logprobs] == [
        [WORDS[0]],
        [" " + WORDS[1]],
    ]


@pytest.mark.parametrize("engine", ["vllm", "ollama"])
async def test_openai_tool_call_round_trip(engine: str, fakes: dict[str, FakeEngine]) -> None:
    client, model = oai(fakes[engine]), ENGINE_MODEL[engine]
    answer = await client.chat.completions.create(model=model, messages=MESSAGES, tools=TOOLS)
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == (None if engine == "vllm" else "")
    [call] = choice.message.tool_calls or []
    assert isinstance(call, ChatCompletionMessageFunctionToolCall)
    assert call.type == "function"
    assert call.id.startswith("chatcmpl-tool-" if engine == "vllm" else "call_")
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER)
    history: list[Any] = [
        *MESSAGES,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "22C and sunny"},
    ]
    reply = await client.chat.completions.create(model=model, messages=history, tools=TOOLS)
    assert reply.choices[0].finish_reason == "stop"
    assert (reply.choices[0].message.content or "").startswith("The tool returned 22C and sunny.")
    named = await client.chat.completions.create(
        model=model,
        messages=MESSAGES,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )
    [time_call] = [function_call(c) for c in named.choices[0].message.tool_calls or []]
    assert (time_call.name, json.loads(time_call.arguments)) == ("get_time", {})
    none = await client.chat.completions.create(
        model=model, messages=MESSAGES, tools=TOOLS, tool_choice="none"
    )
    assert none.choices[0].message.tool_calls is None
    assert none.choices[0].message.content == " ".join(WORDS[:8])
    with pytest.raises(openai.BadRequestError, match="not one of the tools"):
        await client.chat.completions.create(
            model=model,
            messages=MESSAGES,
            tools=TOOLS,
            tool_choice={"type": "function", "function": {"name": "nope"}},
        )


@pytest.mark.parametrize("engine", ["vllm", "ollama", "tgi"])
async def test_streamed_tool_calls_assemble_in_the_official_client(
    engine: str, fakes: dict[str, FakeEngine]
) -> None:
    stream = await oai(fakes[engine]).chat.completions.create(
        model=ENGINE_MODEL[engine], messages=MESSAGES, tools=TOOLS, stream=True
    )
    chunks = [c async for c in stream]
    deltas = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or []]
    assert deltas[0].function is not None
    assert deltas[0].function.name == "get_weather"
    assert deltas[0].id
    arguments = "".join(d.function.arguments or "" for d in deltas if d.function)
    jsonschema.validate(json.loads(arguments), WEATHER)
    expected = {"vllm": (len(deltas) > 2, "tool_calls"), "ollama": (True, "tool_calls")}
    fragmented, finish = expected.get(engine, (len(deltas) > 2, "stop"))
    assert fragmented
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == finish
    if engine == "vllm":
        assert deltas[0].function.arguments == ""  # name first, then argument fragments
    if engine == "ollama":
        assert len(deltas) == 1  # Ollama sends the whole call in one delta


async def test_tgi_tool_call_shape(fake_tgi: FakeEngine, http: aiohttp.ClientSession) -> None:
    body = {"model": "tgi", "messages": MESSAGES, "tools": TOOLS, "tool_choice": "get_time"}
    async with http.post(fake_tgi.url + "/v1/chat/completions", json=body) as response:
        choice = (await response.json())["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["message"] == {
        "role": "assistant",
        "tool_calls": [
            {
                "id": "0",
                "type": "function",
                "function": {"description": None, "name": "get_time", "arguments": "{}"},
            }
        ],
    }
    replay: list[Any] = [
        *MESSAGES,
        {"role": "assistant", "tool_calls": choice["message"]["tool_calls"]},
        {"role": "tool", "content": "noon"},
    ]
    reply = await oai(fake_tgi).chat.completions.create(model="m", messages=replay, tools=TOOLS)
    assert (reply.choices[0].message.content or "").startswith("The tool returned noon.")


async def test_vllm_structured_output(fake_vllm: FakeEngine) -> None:
    forms: list[dict[str, Any]] = [
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "p", "schema": SCHEMA},
            }
        },
        {"structured_outputs": {"json": SCHEMA}},
        {"guided_json": SCHEMA},
    ]
    client = oai(fake_vllm)
    for extra in forms:
        answer = await client.chat.completions.create(
            model=VLLM_MODEL, messages=MESSAGES, extra_body=extra
        )
        jsonschema.validate(json.loads(answer.choices[0].message.content or ""), SCHEMA)
    as_object = await client.chat.completions.create(
        model=VLLM_MODEL, messages=MESSAGES, response_format={"type": "json_object"}
    )
    assert isinstance(json.loads(as_object.choices[0].message.content or ""), dict)
    await fake_vllm.configure(invalid_json=True)
    broken = await client.chat.completions.create(
        model=VLLM_MODEL, messages=MESSAGES, extra_body=forms[0]
    )
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(json.loads(broken.choices[0].message.content or ""), SCHEMA)
    tools = await client.chat.completions.create(model=VLLM_MODEL, messages=MESSAGES, tools=TOOLS)
    arguments = function_call((tools.choices[0].message.tool_calls or [])[0]).arguments
    with pytest.raises(jsonschema.ValidationError):  # invalid_json breaks tool arguments too
        jsonschema.validate(json.loads(arguments), WEATHER)


async def test_vllm_reasoning_switch(fake_vllm: FakeEngine, http: aiohttp.ClientSession) -> None:
    plain = await oai(fake_vllm).chat.completions.create(model=VLLM_MODEL, messages=MESSAGES)
    # vLLM 0.32 names it `reasoning` (older releases: `reasoning`), null without it.
    assert plain.choices[0].message.model_extra == {"reasoning": None}
    await fake_vllm.configure(reasoning=True)
    answer = await oai(fake_vllm).chat.completions.create(model=VLLM_MODEL, messages=MESSAGES)
    extra = answer.choices[0].message.model_extra or {}
    assert extra["reasoning"] == REASONING_TEXT
    assert answer.choices[0].message.content == " ".join(WORDS[:8])
    body = {"model": VLLM_MODEL, "messages": MESSAGES, "stream": True, "max_tokens": 1}
    chunks = await sse_payloads(http, fake_vllm.url + "/v1/chat/completions", body)
    deltas = [c["choices"][0]["delta"] for c in chunks]
    thought = "".join(d.get("reasoning", "") for d in deltas)
    assert thought == REASONING_TEXT
    assert "".join(d.get("content") or "" for d in deltas) == WORDS[0]
    first_content = next(i for i, d in enumerate(deltas) if d.get("content"))
    assert all("reasoning" not in d for d in deltas[first_content:])
    hidden = await oai(fake_vllm).chat.completions.create(
        model=VLLM_MODEL, messages=MESSAGES, extra_body={"include_reasoning": False}
    )
    assert (hidden.choices[0].message.model_extra or {})["reasoning"] is None


@pytest.mark.parametrize("engine", ["vllm", "ollama"])
async def test_openai_embeddings(engine: str, fakes: dict[str, FakeEngine]) -> None:
    client, model = oai(fakes[engine]), ENGINE_MODEL[engine]
    answer = await client.embeddings.create(model=model, input=["hello", "world"])  # base64
    vectors = [d.embedding for d in answer.data]
    for vector in vectors:
        assert_unit(vector, 8)
    assert vectors[0] != vectors[1]
    assert [d.index for d in answer.data] == [0, 1]
    assert answer.usage.prompt_tokens == 2
    as_floats = await client.embeddings.create(
        model=model, input="hello", encoding_format="float", dimensions=4
    )
    assert_unit(as_floats.data[0].embedding, 4)
    assert as_floats.data[0].embedding == pytest.approx(
        [v / math.sqrt(math.fsum(x * x for x in vectors[0][:4])) for v in vectors[0][:4]], 1e-5
    )
    await fakes[engine].configure(embedding_dim=16)
    again = await client.embeddings.create(model=model, input="hello", encoding_format="float")
    assert_unit(again.data[0].embedding, 16)


async def test_vllm_embeddings_inputs_and_errors(
    fake_vllm: FakeEngine, http: aiohttp.ClientSession
) -> None:
    url = fake_vllm.url + "/v1/embeddings"
    body = {"model": VLLM_MODEL, "input": [[1, 2, 3], [4, 5]], "encoding_format": "base64"}
    async with http.post(url, json=body) as response:
        answer = await response.json()
    assert answer["object"] == "list"
    assert answer["usage"]["prompt_tokens"] == 5  # one token per id
    decoded = struct.unpack("<8f", base64.b64decode(answer["data"][0]["embedding"]))
    assert_unit(list(decoded), 8)
    for bad in (
        {"input": ""},
        {"input": "x", "dimensions": 9},
        {"input": "x", "encoding_format": "hex"},
    ):
        async with http.post(url, json={"model": VLLM_MODEL, **bad}) as response:
            assert response.status == 400
            assert (await response.json())["error"]["type"] == "BadRequestError"


async def test_vllm_models_health_version_and_errors(
    fake_vllm: FakeEngine, http: aiohttp.ClientSession
) -> None:
    client = oai(fake_vllm)
    [card] = [m async for m in client.models.list()]
    assert (card.id, card.owned_by) == (VLLM_MODEL, "vllm")
    assert (card.model_extra or {})["max_model_len"] == 4096
    answer = await client.chat.completions.create(
        model=VLLM_MODEL,
        messages=MESSAGES,
        extra_body={"top_k": 5, "min_p": 0.1, "repetition_penalty": 1.1, "made_up": [1]},
    )
    assert answer.model == VLLM_MODEL
    [logged] = await fake_vllm.requests()
    assert logged["json"]["made_up"] == [1]
    assert logged["json"]["top_k"] == 5
    async with http.post(
        fake_vllm.url + "/v1/chat/completions", json={"messages": MESSAGES}
    ) as response:
        assert (await response.json())["model"] == VLLM_MODEL  # no model: the served one
    with pytest.raises(openai.NotFoundError) as missing:
        await client.chat.completions.create(model="other", messages=MESSAGES)
    assert missing.value.response.json() == {
        "error": {
            "message": "The model `other` does not exist. Valid aliases: fake-org/fake-model.",
            "type": "NotFoundError",
            "param": "model",
            "code": 404,
        }
    }
    for extra in ({"temperature": -1}, {"top_k": -2}, {"max_tokens": 5000}, {"n": 0}):
        with pytest.raises(openai.BadRequestError) as invalid:
            await client.chat.completions.create(
                model=VLLM_MODEL, messages=MESSAGES, extra_body=extra
            )
        assert invalid.value.response.json()["error"]["code"] == 400
    await fake_vllm.configure(models=["org/a", "org/b"])
    assert [m.id async for m in client.models.list()] == ["org/a", "org/b"]
    assert (await client.completions.create(model="org/b", prompt="x")).model == "org/b"
    async with http.get(fake_vllm.url + "/version") as response:
        assert (await response.json())["version"].count(".") == 2
    async with http.get(fake_vllm.url + "/health") as response:
        assert (response.status, await response.read()) == (200, b"")
    await fake_vllm.configure(healthy=False)
    async with http.get(fake_vllm.url + "/health") as response:
        assert response.status == 503
    async with http.get(fake_vllm.url + "/metrics") as response:
        assert "vllm:num_requests_running" in await response.text()


async def test_vllm_failure_switches(fake_vllm: FakeEngine, http: aiohttp.ClientSession) -> None:
    client = oai(fake_vllm)
    await fake_vllm.configure(status=503)
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
        body = {"model": VLLM_MODEL, "messages": MESSAGES, "prompt": "x", "input": "x"}
        async with http.post(fake_vllm.url + path, json=body) as response:
            assert response.status == 503
            error = (await response.json())["error"]
        assert (error["type"], error["code"]) == ("InternalServerError", 503)
    await fake_vllm.configure(status=None, drop_after_chunks=2)
    stream = await client.chat.completions.create(model=VLLM_MODEL, messages=MESSAGES, stream=True)
    with pytest.raises(openai.APIError):
        async for _ in stream:
            pass
    await fake_vllm.configure(drop_after_chunks=None, hang=True)
    body = {"model": VLLM_MODEL, "messages": MESSAGES}
    pending = asyncio.create_task(http.post(fake_vllm.url + "/v1/chat/completions", json=body))
    await poll(fake_vllm, lambda s: s["in_flight"] == 1)
    pending.cancel()
    stats = await poll(fake_vllm, lambda s: s["in_flight"] == 0)
    assert stats["disconnects"] == 1
    await fake_vllm.configure(hang=False, tokens=2, text="x y z")
    answer = await client.chat.completions.create(model=VLLM_MODEL, messages=MESSAGES)
    assert answer.choices[0].message.content == "x y"


async def test_vllm_delays_shape_the_timeline(
    fake_vllm: FakeEngine, http: aiohttp.ClientSession
) -> None:
    """Lower bounds only, as in `test_delays_shape_the_timeline`."""
    await fake_vllm.configure(first_token_delay_ms=300, token_delay_ms=100, tokens=3)
    body = {"model": VLLM_MODEL, "messages": MESSAGES, "stream": True}
    start = time.perf_counter()
    async with http.post(fake_vllm.url + "/v1/chat/completions", json=body) as response:
        lines = await lines_with_times(response)
    assert lines[0][0] - start >= 0.29  # the role delta comes with the first token
    assert lines[3][0] - lines[1][0] >= 0.19  # two token gaps


# ---------------------------------------------------------------- images


@pytest.mark.parametrize("engine", ["vllm", "ollama", "tgi"])
async def test_openai_image_parts(
    engine: str, fakes: dict[str, FakeEngine], http: aiohttp.ClientSession
) -> None:
    client, model = oai(fakes[engine]), ENGINE_MODEL[engine]
    url = "data:image/png;base64," + PNG
    content: list[Any] = [{"type": "text", "text": "what is this"}, image_part(url)]
    message: Any = {"role": "user", "content": content}
    one = await client.chat.completions.create(model=model, messages=[message])
    assert (one.choices[0].message.content or "").startswith("I see 1 image. Relais")
    message = {"role": "user", "content": [*content, image_part(url)]}
    two = await client.chat.completions.create(model=model, messages=[message])
    assert (two.choices[0].message.content or "").startswith("I see 2 images.")
    status = 422 if engine == "tgi" else 400
    for bad in ("data:image/png;base64,!!!", "https://example.com/cat.png", "cat.png"):
        body = {"model": model, "messages": [{"role": "user", "content": [image_part(bad)]}]}
        async with http.post(fakes[engine].url + "/v1/chat/completions", json=body) as response:
            assert response.status == status
            assert "image" in json.dumps(await response.json())


async def test_ollama_native_images(fake_ollama: FakeEngine, http: aiohttp.ClientSession) -> None:
    client = ollama.AsyncClient(host=fake_ollama.url)
    chat = await client.chat("m", [{"role": "user", "content": "what", "images": [PNG]}])
    assert (chat.message.content or "").startswith("I see 1 image. Relais")
    generated = await client.generate("m", "what", images=[PNG, PNG], stream=False)
    assert (generated.response or "").startswith("I see 2 images.")
    bad = {"model": "m", "messages": [{"role": "user", "content": "x", "images": ["%%%"]}]}
    async with http.post(fake_ollama.url + "/api/chat", json=bad) as response:
        assert response.status == 400
        assert "base64" in (await response.json())["error"]


# ---------------------------------------------------------------- Ollama native completeness


async def test_ollama_native_tools(fake_ollama: FakeEngine, http: aiohttp.ClientSession) -> None:
    client = ollama.AsyncClient(host=fake_ollama.url)
    answer = await client.chat("m", MESSAGES, tools=TOOLS)
    assert answer.done_reason == "stop"
    [call] = answer.message.tool_calls or []
    assert call.function.name == "get_weather"
    [logged] = await fake_ollama.requests()  # the client keeps only the keys its model knows
    sent = logged["json"]["tools"][0]["function"]["parameters"]
    jsonschema.validate(dict(call.function.arguments), sent)
    assert set(call.function.arguments) == {"city", "days", "unit"}
    parts = [p async for p in await client.chat("m", MESSAGES, tools=TOOLS, stream=True)]
    assert [bool(p.message.tool_calls) for p in parts] == [True, False]
    assert parts[-1].done
    history: list[Any] = [
        *MESSAGES,
        answer.message,
        {"role": "tool", "content": "22C", "tool_name": "get_weather"},
    ]
    reply = await client.chat("m", history, tools=TOOLS)
    assert (reply.message.content or "").startswith("The tool returned 22C.")
    body = {"model": "m", "messages": MESSAGES, "tools": TOOLS, "stream": False}
    async with http.post(fake_ollama.url + "/api/chat", json=body) as response:
        raw = (await response.json())["message"]["tool_calls"][0]
    assert raw["id"].startswith("call_")
    assert raw["function"]["index"] == 0
    assert isinstance(raw["function"]["arguments"], dict)
    stringly = {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}],
    }
    async with http.post(
        fake_ollama.url + "/api/chat", json={**body, "messages": [*MESSAGES, stringly]}
    ) as response:
        assert response.status == 400


async def test_ollama_think(fake_ollama: FakeEngine, http: aiohttp.ClientSession) -> None:
    client = ollama.AsyncClient(host=fake_ollama.url)
    plain = await client.chat("m", MESSAGES)
    assert plain.message.thinking is None
    for think in (True, "low", "high"):
        answer = await client.chat("m", MESSAGES, think=think, options={"num_predict": 2})
        assert answer.message.thinking == REASONING_TEXT
        assert answer.message.content == " ".join(WORDS[:2])
    generated = await client.generate("m", "x", think=True)
    assert generated.thinking == REASONING_TEXT
    parts = [p async for p in await client.chat("m", MESSAGES, think=True, stream=True)]
    assert "".join(p.message.thinking or "" for p in parts) == REASONING_TEXT
    assert "".join(p.message.content or "" for p in parts) == " ".join(WORDS[:8])
    await fake_ollama.configure(reasoning=True)  # a thinking model thinks unless told not to
    assert (await client.chat("m", MESSAGES)).message.thinking == REASONING_TEXT
    assert (await client.chat("m", MESSAGES, think=False)).message.thinking is None
    body = {"model": "m", "messages": MESSAGES, "think": "extreme"}
    async with http.post(fake_ollama.url + "/api/chat", json=body) as response:
        assert response.status == 400


async def test_ollama_embed_routes(fake_ollama: FakeEngine, http: aiohttp.ClientSession) -> None:
    client = ollama.AsyncClient(host=fake_ollama.url)
    answer = await client.embed("m", ["hello", "big world"])
    assert len(answer.embeddings) == 2
    for vector in answer.embeddings:
        assert_unit(list(vector), 8)
    assert answer.prompt_eval_count == 3
    assert answer.total_duration
    assert list((await client.embed("m", "hello")).embeddings[0]) == list(answer.embeddings[0])
    short = await client.embed("m", "hello", dimensions=3)
    assert_unit(list(short.embeddings[0]), 3)
    legacy = await client.embeddings("m", "hello")
    assert list(legacy.embedding) == pytest.approx(list(answer.embeddings[0]))
    long_text = "word " * 5000
    async with http.post(
        fake_ollama.url + "/api/embed", json={"model": "m", "input": long_text, "truncate": False}
    ) as response:
        assert response.status == 400
        assert "context length" in (await response.json())["error"]
    truncated = await client.embed("m", long_text)
    assert truncated.prompt_eval_count == 4096
    async with http.post(
        fake_ollama.url + "/api/embed", json={"model": "m", "input": [1]}
    ) as response:
        assert response.status == 400


async def test_ollama_show_capabilities_and_head(
    fake_ollama: FakeEngine, http: aiohttp.ClientSession
) -> None:
    await fake_ollama.configure(embedding_dim=32)
    shown = await ollama.AsyncClient(host=fake_ollama.url).show("fake:latest")
    assert set(shown.capabilities or []) >= {"completion", "tools", "vision", "thinking"}
    assert (shown.modelinfo or {})["gemma3.embedding_length"] == 32
    async with http.head(fake_ollama.url + "/") as response:
        assert response.status == 200
    answer = await ollama.AsyncClient(host=fake_ollama.url).chat(
        "m", MESSAGES, options={"top_k": 20, "repeat_penalty": 1.1, "num_ctx": 8192}
    )
    assert answer.done


# ---------------------------------------------------------------- TGI


async def test_tgi_logprobs_grammar_forms_and_no_embeddings(
    fake_tgi: FakeEngine, http: aiohttp.ClientSession
) -> None:
    client = oai(fake_tgi)
    answer = await client.chat.completions.create(
        model="m", messages=MESSAGES, logprobs=True, top_logprobs=2, max_tokens=2
    )
    assert answer.choices[0].logprobs is not None
    content = answer.choices[0].logprobs.content or []
    assert [t.token for t in content] == [WORDS[0], " " + WORDS[1]]
    assert all(t.bytes is None and len(t.top_logprobs) == 2 for t in content)
    with pytest.raises(openai.UnprocessableEntityError):
        await client.chat.completions.create(
            model="m", messages=MESSAGES, logprobs=True, top_logprobs=6
        )
    value_form = {"type": "json_schema", "value": {"name": "person", "schema": SCHEMA}}
    shaped = await client.chat.completions.create(
        model="m", messages=MESSAGES, extra_body={"response_format": value_form}
    )
    jsonschema.validate(json.loads(shaped.choices[0].message.content or ""), SCHEMA)
    async with http.post(fake_tgi.url + "/v1/embeddings", json={"input": "x"}) as response:
        assert response.status == 404


def test_fake_engine_binds_a_chosen_address() -> None:
    port = free_port("127.0.0.2")
    with FakeEngine("vllm", host="127.0.0.2", port=port, reasoning=True, embedding_dim=4) as fake:
        assert fake.url == f"http://127.0.0.2:{port}"
        config = fake.configure_sync()
        assert (config["reasoning"], config["embedding_dim"]) == (True, 4)
    with pytest.raises(ValueError, match="port"):
        FakeEngine("ollama", port=70000)
    with pytest.raises(ValueError, match="engine"):
        FakeEngine("llamacpp")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("engine", "arguments", "status"),
    [
        ("vllm", '{"city": "Paris"}', 200),
        ("vllm", {"city": "Paris"}, 200),  # vLLM's templates take an object too
        ("vllm", "", 200),  # read as {}
        ("vllm", "{not json", 400),
        ("ollama", {"city": "Paris"}, 400),  # Ollama's /v1 wants OpenAI's JSON string
        ("ollama", "{not json", 400),
        ("tgi", {"city": "Paris"}, 200),
    ],
)
async def test_replayed_tool_calls_are_checked_as_each_engine_does(
    engine: str,
    arguments: Any,
    status: int,
    fakes: dict[str, FakeEngine],
    http: aiohttp.ClientSession,
) -> None:
    function = {"name": "get_weather", "arguments": arguments}
    call: dict[str, Any] = {"id": "call_1", "type": "function", "function": function}
    messages = [
        *MESSAGES,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "content": "sunny"},  # no tool_call_id: accepted by these engines
    ]
    body = {"model": ENGINE_MODEL[engine], "messages": messages, "tools": TOOLS}
    async with http.post(fakes[engine].url + "/v1/chat/completions", json=body) as response:
        expected = 422 if engine == "tgi" and status == 400 else status
        assert response.status == expected
        answer = await response.json()
    if status == 200:
        assert answer["choices"][0]["message"]["content"].startswith("The tool returned sunny.")


async def test_ollama_v1_reasoning(fake_ollama: FakeEngine, http: aiohttp.ClientSession) -> None:
    url = fake_ollama.url + "/v1/chat/completions"
    body: dict[str, Any] = {"model": "m", "messages": MESSAGES, "max_tokens": 1}

    async def message(**extra: Any) -> dict[str, Any]:
        async with http.post(url, json={**body, **extra}) as response:
            assert response.status == 200
            answer: dict[str, Any] = (await response.json())["choices"][0]["message"]
            return answer

    assert await message() == {"role": "assistant", "content": WORDS[0]}  # no reasoning key
    assert (await message(reasoning_effort="low"))["reasoning"] == REASONING_TEXT
    await fake_ollama.configure(reasoning=True)
    assert (await message())["reasoning"] == REASONING_TEXT
    assert "reasoning" not in await message(reasoning={"effort": "none"})
    chunks = await sse_payloads(http, url, {**body, "stream": True})
    thought = "".join(c["choices"][0]["delta"].get("reasoning", "") for c in chunks)
    assert thought == REASONING_TEXT
    async with http.post(url, json={**body, "reasoning_effort": "galaxy-brain"}) as response:
        assert response.status == 400


async def test_ollama_native_logprobs(fake_ollama: FakeEngine, http: aiohttp.ClientSession) -> None:
    client = ollama.AsyncClient(host=fake_ollama.url)
    answer = await client.chat(
        "m", MESSAGES, logprobs=True, top_logprobs=2, options={"num_predict": 2}
    )
    assert [lp.token for lp in answer.logprobs or []] == [WORDS[0], " " + WORDS[1]]
    assert all(len(lp.top_logprobs or []) == 2 for lp in answer.logprobs or [])
    parts = [p async for p in await client.generate("m", "x", logprobs=True, stream=True)]
    assert [len(p.logprobs or []) for p in parts] == [1] * 8 + [0]
    assert (await client.chat("m", MESSAGES)).logprobs is None
    body = {"model": "m", "messages": MESSAGES, "top_logprobs": 21}
    async with http.post(fake_ollama.url + "/api/chat", json=body) as response:
        assert response.status == 400

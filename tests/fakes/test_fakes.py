"""The fake engines are faithful enough for the official `ollama` and `openai` clients.

Each fake runs as a real subprocess (one per engine for the module, reset before every test);
raw shapes (NDJSON, SSE without a space after `data:`) are checked with aiohttp.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aiohttp
import jsonschema
import ollama
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.fakes.core import DEFAULT_TEXT
from tests.fakes.process import FakeEngine, FakeEngineError, switch_flags

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


async def test_tgi_grammar(fake_tgi: FakeEngine, http: aiohttp.ClientSession) -> None:
    body = {"inputs": "hi", "parameters": {"grammar": {"type": "json", "value": SCHEMA}}}
    async with http.post(fake_tgi.url + "/generate", json=body) as response:
        jsonschema.validate(json.loads((await response.json())["generated_text"]), SCHEMA)


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

"""Record what real vLLM answers to a fixed set of requests, as transcripts for the fake to follow.

Starts real vLLM (CPU) servers exactly as the operator would (tests/real_engine/vllm.py): the
chat model with a tool parser, the same without one, and the embedding model. Sends every
request in CASES and writes one JSON transcript per case into tests/data/vllm/: status, the
headers that matter, the JSON body or the SSE events (with their framing), and, for the
no-parser server, what a client sees while the model loads. The chat server runs with LoRA on
(tests/real_engine/vllm.py `with_lora`): the `lora_*` cases load a tiny adapter generated here
(tests/real_engine/lora.py), each from a clean state (every loaded LoRA unloaded first) after its
`setup` requests; the adapter's directory is written `{adapter}` in the transcripts.
tests/fakes/test_vllm_transcripts.py holds the fake vLLM to their shape. Re-run after a vLLM
upgrade:

    .venv/bin/python hack/record-vllm.py      (needs `make install`: .venv-vllm and the models)
"""

from __future__ import annotations

import http.client
import json
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fakes.servers import stop
from tests.real_engine import lora, vllm
from tests.real_engine.vllm import sse_events

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "vllm"
KEPT_HEADERS = ("content-type", "content-length", "transfer-encoding")
CHAT = str(vllm.CHAT_SPEC["servedModelName"])
EMBED = str(vllm.EMBED_SPEC["servedModelName"])
NO_PARSER_SPEC = {**vllm.CHAT_SPEC, "toolCallParser": "none"}
HELLO = [{"role": "user", "content": "Say hello."}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
TOOLS = {"tools": [WEATHER], "tool_choice": "auto", "max_tokens": 4}
USAGE = {"stream": True, "stream_options": {"include_usage": True}}

Case = tuple[str, str, str, dict[str, Any] | None]


def chat(server: str = "chat", **body: Any) -> Case:
    return (server, "POST", "/v1/chat/completions", {"messages": HELLO, "max_tokens": 3, **body})


def completion(**body: Any) -> Case:
    return ("chat", "POST", "/v1/completions", {"prompt": "Once", "max_tokens": 3, **body})


# name -> (server, method, path, body). Bodies name `model` as clients do (added per server).
CASES: dict[str, Case] = {
    "models": ("chat", "GET", "/v1/models", None),
    "health": ("chat", "GET", "/health", None),
    "chat": chat(),
    "chat_stream": chat(stream=True),
    "chat_stream_usage": chat(**USAGE),
    "chat_n_logprobs": chat(max_tokens=2, n=2, logprobs=True, top_logprobs=2),
    "completions": completion(logprobs=1),
    "completions_stream_usage": completion(**USAGE),
    "chat_tools_auto": chat(**TOOLS),
    "chat_tools_auto_no_parser": chat("no_parser", **TOOLS),
    "error_unknown_model": chat(model="no-such-model"),
    "error_temperature": chat(temperature=-1),
    "error_max_tokens": chat(max_tokens=100000),
    "error_top_logprobs": chat(logprobs=True, top_logprobs=50),
    "embeddings": ("embed", "POST", "/v1/embeddings", {"input": ["one", "two words"]}),
}
MODELS = {"chat": CHAT, "no_parser": CHAT, "embed": EMBED}

ADAPTER = "{adapter}"  # the generated adapter's directory, in requests and transcripts alike
LORA = "lora-a"
LOAD: Case = ("chat", "POST", "/v1/load_lora_adapter", {"lora_name": LORA, "lora_path": ADAPTER})
UNLOAD: Case = ("chat", "POST", "/v1/unload_lora_adapter", {"lora_name": LORA})


def lora_chat(**body: Any) -> Case:
    return chat(model=LORA, **body)


# name -> (setup cases, the recorded case). Each starts with no LoRA loaded.
LORA_CASES: dict[str, tuple[list[Case], Case]] = {
    "lora_load": ([], LOAD),
    "lora_load_twice": ([LOAD], LOAD),
    "lora_load_missing_path": (
        [],
        ("chat", "POST", "/v1/load_lora_adapter", {"lora_name": "lora-b", "lora_path": "/no/such"}),
    ),
    "lora_load_base_name": (
        [],
        ("chat", "POST", "/v1/load_lora_adapter", {"lora_name": CHAT, "lora_path": ADAPTER}),
    ),
    "lora_load_no_path": ([], ("chat", "POST", "/v1/load_lora_adapter", {"lora_name": LORA})),
    "lora_unload": ([LOAD], UNLOAD),
    "lora_unload_unknown": ([], UNLOAD),
    "lora_models": ([LOAD], ("chat", "GET", "/v1/models", None)),
    "lora_chat": ([LOAD], lora_chat()),
    "lora_chat_stream": ([LOAD], lora_chat(stream=True)),
    "lora_completions": (
        [LOAD],
        ("chat", "POST", "/v1/completions", {**completion()[3], "model": LORA}),
    ),
    "lora_chat_unloaded": ([LOAD, UNLOAD], lora_chat()),
    "lora_chat_stream_unloaded": ([LOAD, UNLOAD], lora_chat(stream=True)),
}


def exchange(base: str, method: str, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
    """One request; the answer as a transcript (JSON body, or SSE events and their framing)."""
    url = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=300)
    payload = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} if payload else {}
    conn.request(method, path, body=payload, headers=headers)
    response = conn.getresponse()
    raw = response.read().decode()
    conn.close()
    kept = {k.lower(): v for k, v in response.getheaders() if k.lower() in KEPT_HEADERS}
    record: dict[str, Any] = {"status": response.status, "headers": kept}
    content_type = kept.get("content-type", "")
    if content_type.startswith("text/event-stream"):
        record["sse"] = sse_events(raw)
    elif raw and not content_type.startswith("application/json"):
        record["text"] = raw  # vLLM's LoRA routes answer 200 with bare text, no content type
    elif raw:
        record["body"] = json.loads(raw)
    else:
        record["body"] = None
    return record


def with_model(server: str, body: dict[str, Any] | None) -> dict[str, Any] | None:
    """A case's body as sent: `model` added per server unless the case names one."""
    if body is None or "lora_name" in body:
        return body
    return {"model": MODELS[server], **body}


def record_lora_cases(url: str, adapter: Path) -> None:
    """Each LoRA case from a clean state: unload what is loaded, run its setup, record it."""
    for name, (setup, case) in LORA_CASES.items():
        for model in exchange(url, "GET", "/v1/models", None)["body"]["data"]:
            if model["parent"] is not None:
                exchange(url, "POST", "/v1/unload_lora_adapter", {"lora_name": model["id"]})
        for _, method, path, body in setup:
            exchange(url, method, path, placed(with_model("chat", body), adapter))
        server, method, path, body = case
        body = with_model(server, body)
        started = time.perf_counter()
        record = exchange(url, method, path, placed(body, adapter))
        elapsed_ms = round((time.perf_counter() - started) * 1000, 1)
        request = {"server": server, "method": method, "path": path, "body": body}
        steps = [{"method": m, "path": p, "body": with_model(s, b)} for s, m, p, b in setup]
        transcript = {"request": request, "setup": steps, **record, "elapsed_ms": elapsed_ms}
        write(name, json.loads(json.dumps(transcript).replace(str(adapter), ADAPTER)))


def placed(body: dict[str, Any] | None, adapter: Path) -> dict[str, Any] | None:
    """The body with the adapter's real directory in place of `{adapter}`."""
    if body is None:
        return None
    return json.loads(json.dumps(body).replace(ADAPTER, str(adapter)))


def watch_loading(server: vllm.VllmServer) -> list[str]:
    """What a client sees from launch until /health answers 200 (distinct, in order)."""
    seen: list[str] = []
    deadline = time.monotonic() + vllm.START_TIMEOUT_S
    while time.monotonic() < deadline and server.proc.poll() is None:
        try:
            observed = str(exchange(server.url, "GET", "/health", None)["status"])
        except ConnectionRefusedError:
            observed = "connection refused"
        if not seen or seen[-1] != observed:
            seen.append(observed)
        if observed == "200":
            return seen
        time.sleep(0.5)
    raise RuntimeError(f"vLLM did not become healthy:\n{server.tail()}")


def main() -> None:
    reason = vllm.missing()
    if reason is not None:
        sys.exit(f"record-vllm: {reason}")
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="relais-record-") as tmp:
        specs = {"chat": vllm.CHAT_SPEC, "no_parser": NO_PARSER_SPEC, "embed": vllm.EMBED_SPEC}
        launched = {name: vllm.launch(spec, Path(tmp)) for name, spec in specs.items()}
        try:
            loading = watch_loading(launched["no_parser"])
            for server in launched.values():
                vllm.wait_healthy(server)
            write("loading", {"observed": loading})
            for name, (server, method, path, body) in CASES.items():
                body = with_model(server, body)  # a case may name another model
                record = exchange(launched[server].url, method, path, body)
                request = {"server": server, "method": method, "path": path, "body": body}
                write(name, {"request": request, **record})
            record_lora_cases(launched["chat"].url, lora.write_adapter(Path(tmp) / "adapter"))
        finally:
            for server in launched.values():
                stop(server.proc, grace_s=30)


def write(name: str, transcript: dict[str, Any]) -> None:
    path = OUT / f"{name}.json"
    path.write_text(json.dumps(transcript, indent=1, ensure_ascii=False) + "\n")
    print(f"record-vllm: {path.relative_to(OUT.parents[2])}")


if __name__ == "__main__":
    main()

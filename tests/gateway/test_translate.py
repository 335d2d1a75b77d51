"""Pure tests of the one translation (Ollama wire <-> OpenAI wire) and of the stream relays."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from relais_gateway.dialects import translate_ollama as translate
from relais_gateway.errors import InvalidRequest, UpstreamError
from relais_gateway.forward.relay import NdjsonRelay, SseRelay, renamer

PNG = (  # a 1x1 PNG, base64 as Ollama clients send images
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


def sse(*events: Any) -> bytes:
    return b"".join(
        b"data: " + (e if isinstance(e, bytes) else orjson.dumps(e)) + b"\n\n" for e in events
    )


# ---------------------------------------------------------------- requests


def test_chat_request_carries_images_tools_and_options() -> None:
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {}}}]
    body = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "what is this?", "images": [PNG]},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"function": {"name": "weather", "arguments": {"city": "Paris"}}}],
            },
            {"role": "tool", "content": "sunny", "tool_name": "weather"},
        ],
        "tools": tools,
        "format": {"type": "object"},
        "options": {
            "num_predict": 5,
            "temperature": 0.2,
            "top_k": 3,
            "repeat_penalty": 1.1,
            "num_ctx": 4096,
        },
        "think": False,
        "keep_alive": "5m",
    }
    out = translate.chat_request(body, stream=True, max_tokens=5)
    assert "model" not in out  # the gateway writes it last (owned.own_openai)
    assert out["stream_options"] == {"include_usage": True}
    assert out["tools"] == tools
    assert out["response_format"]["json_schema"]["schema"] == {"type": "object"}
    assert (out["max_tokens"], out["temperature"], out["top_k"]) == (5, 0.2, 3)
    assert out["repetition_penalty"] == 1.1
    assert "num_ctx" not in out  # a runtime option: the engine is managed by Relais
    assert "keep_alive" not in out
    assert out["chat_template_kwargs"] == {"enable_thinking": False}
    user = out["messages"][1]
    assert user["content"][0] == {"type": "text", "text": "what is this?"}
    assert user["content"][1]["image_url"]["url"] == f"data:image/png;base64,{PNG}"
    call = out["messages"][2]["tool_calls"][0]
    assert call["type"] == "function"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    assert out["messages"][2]["content"] is None
    assert out["messages"][3] == {"role": "tool", "content": "sunny", "tool_call_id": call["id"]}


def test_generate_is_a_chat_turn_unless_raw() -> None:
    is_chat, out = translate.generate_request(
        {"prompt": "hi", "system": "s", "images": [PNG]}, stream=False, max_tokens=None
    )
    assert is_chat
    assert out["messages"][0] == {"role": "system", "content": "s"}
    assert out["messages"][1]["content"][1]["type"] == "image_url"
    is_chat, out = translate.generate_request(
        {"prompt": "hi", "raw": True}, stream=False, max_tokens=None
    )
    assert not is_chat
    assert out["prompt"] == "hi"
    assert "stream_options" not in out


def test_options_never_name_a_model_a_stream_or_a_limit() -> None:
    hostile = {
        "model": "secret",
        "stream": True,
        "stream_options": {"include_usage": False},
        "max_tokens": 10**6,
        "max_completion_tokens": 10**6,
        "n": 500,
        "num_gpu": 99,
        "temperature": 0.5,
    }
    out = translate.chat_request(
        {"messages": [{"role": "user", "content": "x"}], "options": hostile},
        stream=False,
        max_tokens=64,
    )
    assert out["stream"] is False
    assert out["max_tokens"] == 64
    assert out["temperature"] == 0.5
    for name in ("model", "stream_options", "max_completion_tokens", "n", "num_gpu"):
        assert name not in out


def test_format_and_think_forms() -> None:
    assert translate.response_format("json") == {"type": "json_object"}
    assert translate.response_format("") is None
    with pytest.raises(InvalidRequest):
        translate.response_format(7)
    _, out = translate.generate_request(
        {"prompt": "x", "think": "high"}, stream=False, max_tokens=None
    )
    assert out["reasoning_effort"] == "high"


def test_embed_requests() -> None:
    assert translate.embed_request({"input": ["a", "b"]}, "m", legacy=False)["input"] == ["a", "b"]
    assert translate.embed_request({"prompt": "a"}, "m", legacy=True)["input"] == "a"


# ---------------------------------------------------------------- answers


def test_whole_chat_answer_with_tool_calls_and_thinking() -> None:
    data = {
        "choices": [
            {
                "message": {
                    "role": "assistant",
                    "content": None,
                    "reasoning_content": "let me think",
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
                        }
                    ],
                },
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {"prompt_tokens": 4, "completion_tokens": 2},
    }
    answer = translate.whole_answer(data, "served", chat=True, started=0.0)
    assert answer["model"] == "served"
    assert answer["done"] is True
    assert answer["done_reason"] == "stop"
    assert answer["message"]["thinking"] == "let me think"
    call = answer["message"]["tool_calls"][0]
    assert call["function"]["name"] == "weather"
    assert call["function"]["arguments"] == {"city": "Paris"}
    assert (answer["prompt_eval_count"], answer["eval_count"]) == (4, 2)


def test_generate_answer_from_a_chat_completion() -> None:
    data = {"choices": [{"message": {"content": "hello"}, "finish_reason": "length"}]}
    answer = translate.whole_answer(data, "m", chat=False, started=0.0)
    assert (answer["response"], answer["done_reason"]) == ("hello", "length")


def test_tool_call_with_broken_arguments_is_an_upstream_error() -> None:
    with pytest.raises(UpstreamError, match="invalid JSON"):
        translate.ollama_tool_calls([{"function": {"name": "f", "arguments": "{nope"}}])


def test_embed_answers() -> None:
    data = {
        "data": [{"index": 1, "embedding": [2.0]}, {"index": 0, "embedding": [1.0]}],
        "usage": {"prompt_tokens": 3},
    }
    answer = translate.embed_answer(data, "m", 0.0, legacy=False)
    assert answer["embeddings"] == [[1.0], [2.0]]
    assert answer["prompt_eval_count"] == 3
    assert translate.embed_answer(data, "m", 0.0, legacy=True) == {"embedding": [1.0]}


def test_stream_translation_merges_tool_call_fragments() -> None:
    reader = translate.StreamTranslator("served", chat=True, started=0.0)
    head = {"id": "x", "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi"}}]}
    call1 = {
        "choices": [
            {
                "index": 0,
                "delta": {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_9",
                            "type": "function",
                            "function": {"name": "weather", "arguments": ""},
                        }
                    ]
                },
            }
        ]
    }
    call2 = {
        "choices": [
            {
                "index": 0,
                "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]},
            }
        ]
    }
    call3 = {
        "choices": [
            {
                "index": 0,
                "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]},
            }
        ]
    }
    end = {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}
    usage = {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 7}}
    data = sse(head, call1, call2, call3, end, usage, b"[DONE]")
    out = reader.feed(data[:50]) + reader.feed(data[50:]) + reader.close()  # cut mid-line
    lines = [json.loads(line) for line in out.splitlines()]
    assert lines[0]["message"]["content"] == "Hi"
    assert lines[0]["done"] is False
    assert lines[1]["message"]["tool_calls"][0]["function"] == {
        "index": 0,
        "name": "weather",
        "arguments": {"city": "Paris"},
    }
    assert lines[-1]["done"] is True
    assert (lines[-1]["prompt_eval_count"], lines[-1]["eval_count"]) == (3, 7)
    assert all(line["model"] == "served" for line in lines)
    assert reader.ended


def test_stream_translation_reports_engine_errors() -> None:
    reader = translate.StreamTranslator("m", chat=False, started=0.0)
    with pytest.raises(UpstreamError, match="boom"):
        reader.feed(sse({"error": {"message": "boom"}}))


# ---------------------------------------------------------------- relays (passthrough)


def test_sse_relay_forwards_lines_whole_and_strips_only_its_own_usage_chunk() -> None:
    chunk = {"model": "engine", "choices": [{"index": 0, "delta": {"content": "a"}}], "usage": None}
    usage = {
        "model": "engine",
        "choices": [],
        "usage": {"prompt_tokens": 2, "completion_tokens": 1},
    }
    data = sse(chunk, usage, b"[DONE]")
    relay = SseRelay(renamer("served"), strip_usage=True)
    out = b"".join(relay.feed(data[i : i + 7]) for i in range(0, len(data), 7)) + relay.close()
    assert b'"model":"served"' in out
    assert b"engine" not in out
    assert b'"prompt_tokens"' not in out  # the client did not ask for usage
    assert out.endswith(b"data: [DONE]\n\n")
    assert (relay.prompt_tokens, relay.completion_tokens, relay.ended) == (2, 1, True)
    kept = SseRelay(None, strip_usage=False)
    assert b'"prompt_tokens":2' in kept.feed(data)


def test_sse_relay_notices_an_early_end() -> None:
    relay = SseRelay(None, strip_usage=False)
    relay.feed(sse({"choices": []}))
    assert not relay.ended
    assert json.loads(relay.error("gone")[6:])["error"]["message"] == "gone"


def test_ndjson_relay_reads_the_done_line() -> None:
    relay = NdjsonRelay(None)
    lines = b'{"message":{"content":"a"},"done":false}\n{"done": true, "eval_count": 4, '
    out = relay.feed(lines) + relay.feed(b'"prompt_eval_count": 2}\n')
    assert out == lines + b'"prompt_eval_count": 2}\n'
    assert (relay.ended, relay.prompt_tokens, relay.completion_tokens) == (True, 2, 4)
    assert json.loads(relay.error("x")) == {"error": "x"}


def test_sse_relay_adds_the_usage_an_engine_did_not_send_when_the_client_asked() -> None:
    """llama.cpp's server sends no usage chunk; a client that asked for one still gets it."""
    role = {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}
    words = [{"choices": [{"index": 0, "delta": {"content": w}}]} for w in ("a", "b", "c")]
    end = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    relay = SseRelay(None, strip_usage=False, add_usage=True)
    out = relay.feed(sse(role, *words, end, b"[DONE]"))
    events = [line[6:] for line in out.split(b"\n\n") if line]
    assert events[-1] == b"[DONE]"
    usage = json.loads(events[-2])
    assert usage["choices"] == []
    assert usage["usage"]["completion_tokens"] == 3
    with_usage = SseRelay(None, strip_usage=False, add_usage=True)
    sent = {"choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 9}}
    assert with_usage.feed(sse(*words, sent, b"[DONE]")).count(b'"usage"') == 1  # not twice


def test_the_served_name_replaces_any_engine_name() -> None:
    rename = renamer("served")
    first = b'data: {"model":"org/engine-id","x":"\\"model\\": 1"}\n\n'
    assert rename(first) == b'data: {"model":"served","x":"\\"model\\": 1"}\n\n'
    assert rename(first) == rename(first)  # the learnt form, replaced the same way
    right = b'data: {"model": "served"}\n\n'
    assert rename(right) is right  # nothing to do: the very same bytes
    names = b"".join(b'{"model":"m%d"}\n' % n for n in range(10))  # more forms than it learns
    assert rename(names) == b'{"model":"served"}\n' * 10

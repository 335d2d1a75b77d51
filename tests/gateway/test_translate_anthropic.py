"""Pure tests of the Anthropic Messages <-> OpenAI Chat Completions translation, held to the real
`anthropic` SDK: whole answers validate as its `Message`, streams go through its own client."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anthropic
import httpx2
import orjson
import pytest
from aiohttp.test_utils import TestServer
from anthropic.types import Message, RawMessageStreamEvent
from anthropic.types.shared import ErrorResponse
from pydantic import TypeAdapter
from relais_gateway.dialects import translate_anthropic as ta
from relais_gateway.dialects.common import StreamReader
from relais_gateway.errors import (
    GatewayError,
    InvalidRequest,
    NoReadyReplica,
    PayloadTooLarge,
    RateLimited,
    UpstreamError,
    UpstreamTimeout,
    anthropic_body,
)

from tests.fakes import vllm
from tests.fakes.core import Switches

PNG = (  # a 1x1 PNG
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)
WEATHER: Any = {  # Any: the SDK wants its ToolParam TypedDict
    "name": "weather",
    "description": "Weather for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
    "cache_control": {"type": "ephemeral"},
}
CHUNK = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "engine"}


def sse(*events: Any) -> bytes:
    return b"".join(
        b"data: " + (e if isinstance(e, bytes) else orjson.dumps(e)) + b"\n\n" for e in events
    )


def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish, **extra}
    return {**CHUNK, "choices": [choice], "usage": None}


def usage_chunk(prompt: Any, completion: Any) -> dict[str, Any]:
    return {
        **CHUNK,
        "choices": [],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion},
    }


def translated(stream: bytes, step: int = 7) -> tuple[ta.MessagesStreamTranslator, bytes]:
    """The stream through a translator, fed in small network chunks (lines cut anywhere)."""
    reader = ta.MessagesStreamTranslator("served-name", message_id="msg_test")
    out = b"".join(reader.feed(stream[i : i + step]) for i in range(0, len(stream), step))
    return reader, out + reader.close()


def events(out: bytes) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) of each SSE event, checking that the name matches the data's type."""
    parsed = []
    for block in out.decode().split("\n\n"):
        if not block:
            continue
        name_line, data_line = block.split("\n")
        name, data = name_line.removeprefix("event: "), json.loads(data_line.removeprefix("data: "))
        assert data["type"] == name
        parsed.append((name, data))
    return parsed


def sdk_client(body: bytes, status: int = 200, media_type: str = "text/event-stream") -> Any:
    """The real `anthropic` client, answered with `body` by a mock transport."""

    def answer(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(status, content=body, headers={"content-type": media_type})

    http = httpx2.Client(transport=httpx2.MockTransport(answer))
    return anthropic.Anthropic(
        api_key="k", base_url="http://gateway", http_client=http, max_retries=0
    )


# ---------------------------------------------------------------- requests


def test_request_maps_system_images_tools_and_sampling() -> None:
    body = {
        "model": "claude-ignored",
        "max_tokens": 300,
        "system": [
            {"type": "text", "text": "x-anthropic-billing-header: cc_version=2; cch=abc;"},
            {"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "Use tools."},
        ],
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this?"},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                    },
                    {"type": "image", "source": {"type": "url", "url": "https://x/cat.jpg"}},
                ],
            }
        ],
        "tools": [WEATHER],
        "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
        "stop_sequences": ["END"],
        "temperature": 0.2,
        "top_p": 0.9,
        "top_k": 40,
        "metadata": {"user_id": "u-1"},
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "stream": True,
        "service_tier": "auto",
        "mcp_servers": [],
    }
    out = ta.messages_request(body)
    assert "model" not in out  # the gateway writes it last
    assert (out["max_tokens"], out["stream"]) == (300, True)
    assert out["stream_options"] == {"include_usage": True}
    assert out["messages"][0] == {"role": "system", "content": "You are terse.\nUse tools."}
    assert out["messages"][1] == {
        "role": "user",
        "content": [
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
            {"type": "image_url", "image_url": {"url": "https://x/cat.jpg"}},
        ],
    }
    assert out["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "description": "Weather for a city",
                "parameters": WEATHER["input_schema"],
            },
        }
    ]
    assert (out["tool_choice"], out["parallel_tool_calls"]) == ("auto", False)
    assert out["stop"] == ["END"]
    assert (out["temperature"], out["top_p"], out["top_k"]) == (0.2, 0.9, 40)
    assert out["user"] == "u-1"
    assert out["chat_template_kwargs"] == {"enable_thinking": True}
    for dropped in ("system", "service_tier", "mcp_servers", "metadata", "thinking"):
        assert dropped not in out


def test_plain_request_has_only_what_was_asked() -> None:
    out = ta.messages_request(
        {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    )
    assert out == {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    out = ta.messages_request({"messages": [], "stream": False, "thinking": {"type": "disabled"}})
    assert out == {
        "messages": [],
        "stream": False,
        "chat_template_kwargs": {"enable_thinking": False},
    }


def test_assistant_history_and_tool_results_become_openai_turns() -> None:
    body = {
        "messages": [
            {"role": "user", "content": "weather in Paris and Rome?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "two cities", "signature": "sig"},
                    {"type": "redacted_thinking", "data": "opaque"},
                    {"type": "text", "text": "Checking."},
                    {
                        "type": "tool_use",
                        "id": "toolu_1",
                        "name": "weather",
                        "input": {"city": "Paris"},
                    },
                    {
                        "type": "tool_use",
                        "id": "toolu_2",
                        "name": "weather",
                        "input": {"city": "Rome"},
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_2",
                        "is_error": True,
                        "content": [
                            {"type": "text", "text": "timeout"},
                            {"type": "tool_reference", "tool_name": "clock"},
                            {
                                "type": "image",
                                "source": {
                                    "type": "base64",
                                    "media_type": "image/png",
                                    "data": PNG,
                                },
                            },
                        ],
                    },
                    {"type": "text", "text": "and tomorrow?"},
                ],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "toolu_3"}],
            },
        ]
    }
    messages = ta.messages_request(body)["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "tool", "user", "tool"]
    assistant = messages[1]
    assert assistant["content"] == "Checking."
    assert assistant["reasoning"] == "two cities"  # what vLLM reads back (interleaved thinking)
    calls = assistant["tool_calls"]
    assert [c["id"] for c in calls] == ["toolu_1", "toolu_2"]
    assert calls[0]["type"] == "function"
    assert calls[0]["function"]["name"] == "weather"
    assert json.loads(calls[1]["function"]["arguments"]) == {"city": "Rome"}
    assert messages[2] == {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"}
    assert messages[3] == {"role": "tool", "tool_call_id": "toolu_2", "content": "Error: timeout"}
    assert messages[4]["content"] == [  # the tool's image, then the user's own text
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "text", "text": "and tomorrow?"},
    ]
    assert messages[5] == {"role": "tool", "tool_call_id": "toolu_3", "content": ""}


def test_assistant_with_only_tool_calls_has_null_content() -> None:
    turn = {
        "role": "assistant",
        "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}],
    }
    (message,) = ta.messages_request({"messages": [turn]})["messages"]
    assert message["content"] is None
    assert message["tool_calls"][0]["function"]["arguments"] == "{}"
    assert "reasoning" not in message


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "auto"}, {"tool_choice": "auto"}),
        ({"type": "any"}, {"tool_choice": "required"}),
        ({"type": "none"}, {"tool_choice": "none"}),
        (
            {"type": "tool", "name": "weather", "disable_parallel_tool_use": True},
            {
                "tool_choice": {"type": "function", "function": {"name": "weather"}},
                "parallel_tool_calls": False,
            },
        ),
    ],
)
def test_tool_choice_forms(choice: dict[str, Any], expected: dict[str, Any]) -> None:
    out = ta.messages_request({"messages": [], "tools": [WEATHER], "tool_choice": choice})
    assert {k: out[k] for k in expected} == expected
    assert "parallel_tool_calls" in out or "parallel_tool_calls" not in expected


def test_tool_choice_without_tools_is_dropped() -> None:
    out = ta.messages_request({"messages": [], "tool_choice": {"type": "any"}})
    assert "tool_choice" not in out
    assert "tools" not in out


def test_output_config_is_structured_output_and_effort() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    out = ta.messages_request(
        {
            "messages": [],
            "output_config": {"format": {"type": "json_schema", "schema": schema}, "effort": "low"},
        }
    )
    assert out["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": schema},
    }
    assert out["reasoning_effort"] == "low"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": "hi"}, "messages"),
        ({"messages": [{"role": "bot", "content": "x"}]}, "messages.0.role"),
        ({"messages": [{"role": "user", "content": 7}]}, "messages.0.content"),
        ({"messages": [{"role": "user", "content": [{"text": "x"}]}]}, "messages.0.content.0.type"),
        (
            {
                "messages": [
                    {"role": "user", "content": "a"},
                    {"role": "user", "content": [{"type": "video"}]},
                ]
            },
            "messages.1.content.0.type",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}],
                    }
                ]
            },
            "messages.0.content.0.source.type",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image", "source": {"type": "base64", "data": PNG}}],
                    }
                ]
            },
            "messages.0.content.0.source.media_type",
        ),
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "content": [{"type": "tool_use", "id": "t", "name": "f", "input": "x"}],
                    }
                ]
            },
            "messages.0.content.0.input",
        ),
        (
            {"messages": [{"role": "assistant", "content": [{"type": "image", "source": {}}]}]},
            "messages.0.content.0.type",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "tool_result"}]}]},
            "messages.0.content.0.tool_use_id",
        ),
        ({"messages": [], "system": [{"type": "image"}]}, "system.0.type"),
        ({"messages": [], "tools": [{"description": "no name"}]}, "tools.0.name"),
        (
            {"messages": [], "tools": [{"type": "web_search_20250305", "name": "web_search"}]},
            "tools.0.type",
        ),
        ({"messages": [], "tools": [WEATHER], "tool_choice": {"type": "some"}}, "tool_choice.type"),
        ({"messages": [], "tools": [WEATHER], "tool_choice": {"type": "tool"}}, "tool_choice.name"),
        ({"messages": [], "stop_sequences": "END"}, "stop_sequences"),
        ({"messages": [], "stop_sequences": ["a", 1]}, "stop_sequences.1"),
        ({"messages": [], "temperature": "hot"}, "temperature"),
        ({"messages": [], "top_k": True}, "top_k"),
        ({"messages": [], "metadata": {"user_id": 5}}, "metadata.user_id"),
        ({"messages": [], "thinking": {"type": "sometimes"}}, "thinking.type"),
    ],
)
def test_invalid_shapes_name_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        ta.messages_request(body)
    assert caught.value.param == param
    assert caught.value.status == 400


# ---------------------------------------------------------------- whole answers


def completion(message: dict[str, Any], finish: str, **choice: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "engine-name",
        "choices": [{"index": 0, "message": message, "finish_reason": finish, **choice}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21},
    }


def test_whole_answer_with_thinking_text_and_tool_calls_is_an_sdk_message() -> None:
    data = completion(
        {
            "role": "assistant",
            "content": "Checking the weather.",
            "reasoning_content": "the user wants weather",
            "tool_calls": [
                {
                    "id": "chatcmpl-tool-1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
                },
                {"type": "function", "function": {"name": "clock", "arguments": ""}},
            ],
        },
        "tool_calls",
    )
    answer = ta.messages_answer(data, "served-name")
    message = TypeAdapter(Message).validate_python(answer)
    assert message.id.startswith("msg_")
    assert (message.type, message.role, message.model) == ("message", "assistant", "served-name")
    assert [block.type for block in message.content] == ["thinking", "text", "tool_use", "tool_use"]
    assert answer["content"][0] == {
        "type": "thinking",
        "thinking": "the user wants weather",
        "signature": "",
    }
    assert answer["content"][1] == {"type": "text", "text": "Checking the weather."}
    assert answer["content"][2] == {
        "type": "tool_use",
        "id": "chatcmpl-tool-1",
        "name": "weather",
        "input": {"city": "Paris"},
    }
    assert answer["content"][3]["input"] == {}
    assert answer["content"][3]["id"].startswith("toolu_")  # the engine gave none
    assert (message.stop_reason, message.stop_sequence) == ("tool_use", None)
    assert (message.usage.input_tokens, message.usage.output_tokens) == (12, 9)


@pytest.mark.parametrize(
    ("finish", "extra", "calls", "expected"),
    [
        ("stop", {}, False, ("end_turn", None)),
        ("stop", {"stop_reason": None}, False, ("end_turn", None)),
        ("stop", {"stop_reason": 128001}, False, ("end_turn", None)),  # vLLM: a stop token id
        ("stop", {"stop_reason": "END"}, False, ("stop_sequence", "END")),  # vLLM: the string
        ("length", {}, False, ("max_tokens", None)),
        ("length", {}, True, ("max_tokens", None)),
        ("tool_calls", {}, True, ("tool_use", None)),
        ("stop", {}, True, ("tool_use", None)),  # TGI finishes tool calls with "stop"
        ("eos_token", {}, False, ("end_turn", None)),
    ],
)
def test_stop_reasons(
    finish: str, extra: dict[str, Any], calls: bool, expected: tuple[str, str | None]
) -> None:
    message: dict[str, Any] = {"role": "assistant", "content": "x"}
    if calls:
        message["tool_calls"] = [{"id": "c", "function": {"name": "f", "arguments": "{}"}}]
    answer = ta.messages_answer(completion(message, finish, **extra), "m")
    assert (answer["stop_reason"], answer["stop_sequence"]) == expected


def test_whole_answer_never_trusts_engine_counts_or_arguments() -> None:
    data = completion({"role": "assistant", "content": "hi"}, "stop")
    data["usage"] = {"prompt_tokens": -4, "completion_tokens": "many"}
    answer = ta.messages_answer(data, "m")
    assert answer["usage"] == {"input_tokens": 0, "output_tokens": 0}
    assert answer["content"] == [{"type": "text", "text": "hi"}]
    bad = completion(
        {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{oops"}}]},
        "tool_calls",
    )
    with pytest.raises(UpstreamError, match="invalid JSON arguments"):
        ta.messages_answer(bad, "m")
    not_object = completion(
        {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "[1]"}}]},
        "tool_calls",
    )
    with pytest.raises(UpstreamError, match="not an object"):
        ta.messages_answer(not_object, "m")


def test_empty_answer_is_still_a_message() -> None:
    answer = ta.messages_answer({"choices": [], "usage": None}, "m")
    message = TypeAdapter(Message).validate_python(answer)
    assert message.content == []
    assert message.stop_reason == "end_turn"


# ---------------------------------------------------------------- streamed answers

VLLM_TOOL_STREAM = sse(
    chunk({"role": "assistant", "content": ""}),
    chunk({"reasoning_content": "The user wants", "reasoning": "The user wants"}),
    chunk({"reasoning_content": " weather.", "reasoning": " weather."}),
    chunk({"content": "Let me check."}),
    chunk(
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "chatcmpl-tool-a",
                    "type": "function",
                    "function": {"name": "weather", "arguments": ""},
                }
            ]
        }
    ),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"ci'}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'ty": "Paris"}'}}]}),
    chunk(
        {
            "tool_calls": [
                {
                    "index": 1,
                    "id": "chatcmpl-tool-b",
                    "type": "function",
                    "function": {"name": "clock", "arguments": '{"tz": "CET"}'},
                }
            ]
        }
    ),
    chunk({}, "tool_calls", stop_reason=None),
    usage_chunk(21, 17),
    b"[DONE]",
)


def test_streamed_tool_calls_follow_anthropic_event_order() -> None:
    reader, out = translated(VLLM_TOOL_STREAM)
    parsed = events(out)
    names = [name for name, _ in parsed]
    assert names == [
        "message_start",
        "ping",
        "content_block_start",  # 0 thinking
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",  # 1 text
        "content_block_delta",
        "content_block_stop",
        "content_block_start",  # 2 tool_use weather
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",  # 3 tool_use clock
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    starts = [data for name, data in parsed if name == "content_block_start"]
    assert [s["index"] for s in starts] == [0, 1, 2, 3]
    assert starts[0]["content_block"] == {"type": "thinking", "thinking": "", "signature": ""}
    assert starts[2]["content_block"] == {
        "type": "tool_use",
        "id": "chatcmpl-tool-a",
        "name": "weather",
        "input": {},
    }
    fragments = [
        d["delta"]["partial_json"]
        for n, d in parsed
        if n == "content_block_delta" and d["index"] == 2
    ]
    assert fragments == ['{"ci', 'ty": "Paris"}']  # passed on as the engine streamed them
    assert parsed[0][1]["message"]["model"] == "served-name"
    assert parsed[0][1]["message"]["id"] == "msg_test"
    assert parsed[-2][1] == {
        "type": "message_delta",
        "delta": {"stop_reason": "tool_use", "stop_sequence": None},
        "usage": {"input_tokens": 21, "output_tokens": 17},
    }
    for name, data in parsed:
        if name != "ping":
            TypeAdapter(RawMessageStreamEvent).validate_python(data)
    assert reader.ended
    assert (reader.prompt_tokens, reader.completion_tokens) == (21, 17)


def test_the_sdk_accumulates_the_translated_stream() -> None:
    _, out = translated(VLLM_TOOL_STREAM, step=3)
    client = sdk_client(out)
    with client.messages.stream(
        model="served-name", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        texts = list(stream.text_stream)
        final = stream.get_final_message()
    assert texts == ["Let me check."]
    assert [block.type for block in final.content] == ["thinking", "text", "tool_use", "tool_use"]
    thinking, text, weather, clock = final.content
    assert thinking.type == "thinking"
    assert thinking.thinking == "The user wants weather."
    assert text.type == "text"
    assert text.text == "Let me check."
    assert weather.type == "tool_use"
    assert (weather.id, weather.name, weather.input) == (
        "chatcmpl-tool-a",
        "weather",
        {"city": "Paris"},
    )
    assert clock.type == "tool_use"
    assert (clock.name, clock.input) == ("clock", {"tz": "CET"})
    assert final.stop_reason == "tool_use"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (21, 17)


def test_tgi_and_ollama_tool_streams_make_one_block_per_call() -> None:
    def tgi(name: str | None, arguments: str, finish: str | None = None) -> dict[str, Any]:
        call = {"index": 0, "id": "0", "type": "function"}
        call["function"] = {"name": name, "arguments": arguments}
        return chunk({"role": "assistant", "tool_calls": [call]}, finish)

    tgi_stream = sse(
        tgi("weather", "{"), tgi(None, '"city": '), tgi(None, '"Rome"}', "stop"), b"[DONE]"
    )
    _, out = translated(tgi_stream)
    final = sdk_final(out)
    assert len(final.content) == 1
    block = final.content[0]
    assert block.type == "tool_use"
    assert (block.id, block.name, block.input) == ("0", "weather", {"city": "Rome"})
    assert final.stop_reason == "tool_use"

    whole_call = {"id": "call_x", "index": 0, "function": {"name": "f", "arguments": {"a": 1}}}
    ollama_stream = sse(
        chunk({"role": "assistant", "content": "", "tool_calls": [whole_call]}),
        chunk({"role": "assistant", "content": ""}, "tool_calls"),
        b"[DONE]",
    )
    _, out = translated(ollama_stream)
    final = sdk_final(out)
    block = final.content[0]
    assert block.type == "tool_use"
    assert (block.id, block.input) == ("call_x", {"a": 1})


def sdk_final(out: bytes) -> Message:
    client = sdk_client(out)
    with client.messages.stream(
        model="m", max_tokens=8, messages=[{"role": "user", "content": "x"}]
    ) as stream:
        final: Message = stream.get_final_message()
    return final


@pytest.mark.parametrize(
    ("finish", "extra", "reason", "sequence"),
    [
        ("stop", {"stop_reason": "END"}, "stop_sequence", "END"),
        ("stop", {"stop_reason": None}, "end_turn", None),
        ("length", {}, "max_tokens", None),
    ],
)
def test_streamed_text_stop_reasons(
    finish: str, extra: dict[str, Any], reason: str, sequence: str | None
) -> None:
    stream = sse(
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Hello"}),
        chunk({"content": " there"}),
        chunk({"content": ""}, finish, **extra),
        usage_chunk(3, 2),
        b"[DONE]",
    )
    reader, out = translated(stream)
    final = sdk_final(out)
    assert [b.type for b in final.content] == ["text"]
    block = final.content[0]
    assert block.type == "text"
    assert block.text == "Hello there"
    assert (final.stop_reason, final.stop_sequence) == (reason, sequence)
    assert (reader.prompt_tokens, reader.completion_tokens) == (3, 2)


def test_stream_without_usage_counts_its_chunks() -> None:
    reader, out = translated(
        sse(chunk({"content": "a"}), chunk({"content": "b"}, "stop"), b"[DONE]")
    )
    assert reader.ended
    assert (reader.prompt_tokens, reader.completion_tokens) == (0, 2)
    delta = next(d for n, d in events(out) if n == "message_delta")
    assert delta["usage"] == {"input_tokens": 0, "output_tokens": 2}


def test_stream_that_never_ends_is_not_ended() -> None:
    reader, out = translated(sse(chunk({"content": "a"})))
    assert not reader.ended
    assert [n for n, _ in events(out)] == [
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta",
    ]
    assert reader.pending == 0


def test_engine_error_in_stream_raises() -> None:
    reader = ta.MessagesStreamTranslator("m")
    with pytest.raises(UpstreamError, match="engine error: out of memory"):
        reader.feed(sse({"error": {"message": "out of memory", "type": "InternalServerError"}}))


def test_error_event_makes_the_sdk_raise() -> None:
    reader, out = translated(sse(chunk({"content": "partial"})))
    out += reader.error("the engine's stream ended before its end marker")
    name, data = events(out)[-1]
    assert name == "error"
    assert data == {
        "type": "error",
        "error": {
            "type": "api_error",
            "message": "the engine's stream ended before its end marker",
        },
    }
    with pytest.raises(anthropic.APIStatusError, match="ended before its end marker"):
        sdk_final(out)


def test_translator_is_a_stream_reader() -> None:
    reader: StreamReader = ta.MessagesStreamTranslator("m")
    assert reader.feed(b"data: [DO") == b""
    assert reader.pending == len(b"data: [DO")
    out = reader.feed(b"NE]\n\n")
    assert reader.ended
    assert [n for n, _ in events(out)] == ["message_start", "ping", "message_delta", "message_stop"]
    assert reader.close() == b""


# ---------------------------------------------------------------- errors and models


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (InvalidRequest("bad"), "invalid_request_error"),
        (GatewayError("internal"), "api_error"),
        (PayloadTooLarge("big"), "request_too_large"),
        (RateLimited("slow down", retry_after_s=1), "rate_limit_error"),
        (NoReadyReplica("cold", retry_after_s=1), "overloaded_error"),
        (UpstreamError("engine died"), "api_error"),
        (UpstreamTimeout("slow engine"), "timeout_error"),
    ],
)
def test_error_body_types(error: GatewayError, kind: str) -> None:
    body = anthropic_body(error)
    assert body == {"type": "error", "error": {"type": kind, "message": error.message}}
    if kind != "request_too_large":  # documented by Anthropic, absent from the SDK's union
        assert TypeAdapter(ErrorResponse).validate_python(body).error.type == kind


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (408, "invalid_request_error"),
        (422, "invalid_request_error"),
        (501, "api_error"),
        (502, "api_error"),
        (529, "overloaded_error"),
    ],
)
def test_error_types_by_status(status: int, kind: str) -> None:
    error = GatewayError("x")
    error.status = status
    assert anthropic_body(error)["error"] == {"type": kind, "message": "x"}


def test_the_sdk_reads_an_error_body() -> None:
    body = orjson.dumps(anthropic_body(RateLimited("too many", retry_after_s=1)))
    client = sdk_client(body, status=429, media_type="application/json")
    with pytest.raises(anthropic.RateLimitError) as caught:
        client.messages.create(model="m", max_tokens=8, messages=[{"role": "user", "content": "x"}])
    assert caught.value.body == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": "too many"},
    }


def test_models_list_is_an_sdk_page() -> None:
    listing = ta.models_list(["qwen3-8b", "llama-3.1-8b"])
    assert listing["has_more"] is False
    assert (listing["first_id"], listing["last_id"]) == ("qwen3-8b", "llama-3.1-8b")
    client = sdk_client(orjson.dumps(listing), media_type="application/json")
    models = list(client.models.list())
    assert [m.id for m in models] == ["qwen3-8b", "llama-3.1-8b"]
    assert [m.display_name for m in models] == ["qwen3-8b", "llama-3.1-8b"]
    assert models[0].type == "model"
    assert models[0].created_at.year == 1970
    empty = ta.models_list([])
    assert (empty["data"], empty["first_id"], empty["last_id"]) == ([], None, None)


# ---------------------------------------------------------------- the fake engine's native route


@contextlib.asynccontextmanager
async def fake_vllm(**switches: Any) -> AsyncIterator[str]:
    """An in-process fake vLLM (its OpenAI routes and its native Anthropic routes)."""
    app = vllm.create_app(Switches(**switches))
    async with TestServer(app) as server:
        yield str(server.make_url("/")).rstrip("/")


def async_client(url: str) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(api_key="k", base_url=url, max_retries=0)


TOOL_TURN: dict[str, Any] = {
    "model": vllm.DEFAULT_MODEL,
    "max_tokens": 50,
    "system": "Use tools.",
    "messages": [{"role": "user", "content": "weather in Paris?"}],
    "tools": [WEATHER],
}


async def test_fake_native_route_answers_the_sdk_whole_and_streamed() -> None:
    async with fake_vllm(reasoning=True) as url:
        client = async_client(url)
        whole = await client.messages.create(**TOOL_TURN)
        async with client.messages.stream(**TOOL_TURN) as stream:
            streamed = await stream.get_final_message()
        counted = await client.messages.count_tokens(
            model=vllm.DEFAULT_MODEL, system="Use tools.", messages=TOOL_TURN["messages"]
        )
    for message in (whole, streamed):
        thinking, tool = blocks(message)
        assert thinking["type"] == "thinking"
        assert thinking["thinking"].startswith("The user wants an answer")
        assert (tool["type"], tool["name"], tool["input"]) == (
            "tool_use",
            "weather",
            {"city": "xxxxx"},
        )
        assert message.stop_reason == "tool_use"
        assert message.usage.input_tokens == 5  # "Use tools. weather in Paris?"
    assert counted.input_tokens == 5


def blocks(message: Message) -> list[dict[str, Any]]:
    """The content blocks without what differs per request (ids, signatures)."""
    return [
        {k: v for k, v in block.model_dump().items() if k not in ("id", "signature")}
        for block in message.content
    ]


async def test_translation_matches_the_native_route() -> None:
    """The same turn through the translation (OpenAI chat stream -> Anthropic events) and through
    the fake's native `/v1/messages` gives the same message to the SDK."""
    turn = {**TOOL_TURN, "stop_sequences": ["never"], "stream": True}
    async with fake_vllm(reasoning=True) as url:
        chat = {**ta.messages_request(turn), "model": vllm.DEFAULT_MODEL}
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{url}/v1/chat/completions", json=chat) as response,
        ):
            assert response.status == 200
            upstream = await response.read()
        async with async_client(url).messages.stream(**TOOL_TURN) as stream:
            native = await stream.get_final_message()
    _, out = translated(upstream)
    ours = sdk_final(out)
    assert blocks(ours) == blocks(native)
    assert [b["type"] for b in blocks(ours)] == ["thinking", "tool_use"]
    assert ours.stop_reason == native.stop_reason == "tool_use"
    assert (ours.usage.input_tokens, ours.usage.output_tokens) == (
        native.usage.input_tokens,
        native.usage.output_tokens,
    )


async def test_fake_native_route_reads_tool_results_images_and_limits() -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
    history: list[Any] = [
        {"role": "user", "content": [{"type": "text", "text": "look"}, image]},
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "t1", "name": "weather", "input": {"city": "P"}}
            ],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "sunny"}],
        },
    ]
    async with fake_vllm() as url:
        client = async_client(url)
        answer = await client.messages.create(
            model=vllm.DEFAULT_MODEL, max_tokens=9, messages=history, tools=[WEATHER]
        )
        with pytest.raises(anthropic.NotFoundError) as caught:
            await client.messages.create(
                model="other", max_tokens=5, messages=[{"role": "user", "content": "x"}]
            )
    assert [b["type"] for b in blocks(answer)] == ["text"]
    assert blocks(answer)[0]["text"] == "I see 1 image. The tool returned sunny. Relais"
    assert answer.stop_reason == "max_tokens"
    assert answer.usage.output_tokens == 9  # cut by max_tokens
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["type"] == "error"
    assert body["error"]["type"] == "NotFoundError"
    assert body["error"]["message"].startswith("The model `other` does not exist.")

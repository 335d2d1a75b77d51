"""Apps against real vLLM (CPU) through the real gateway: the openai SDK, ollama, LangChain.

The vLLM servers run with the operator's own flags (see vllm.py). Gemma 3 270M writes junk, so
these tests check plumbing (statuses, shapes, usage, stream framing, tool-call structure), never
wording; every answer is a few tokens to keep the session short.
"""

from __future__ import annotations

import json
from typing import Any

import ollama
import openai
import pytest
from langchain_core.messages import AIMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI, OpenAIEmbeddings
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam
from pydantic import BaseModel

from tests.real_engine import vllm
from tests.real_engine.conftest import GATEWAY_MAX_TOKENS, MAX_TOKENS

pytestmark = [pytest.mark.real_engine, pytest.mark.timeout(1500)]

CHAT = str(vllm.CHAT_SPEC["servedModelName"])
EMBED = str(vllm.EMBED_SPEC["servedModelName"])
PROMPT: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say hello."}]
WEATHER: ChatCompletionToolParam = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def called(name: str, calls: list[str], content: str | None) -> bool:
    """Whether the answer calls tool `name`: a parsed call, or vLLM's forced opening of one.

    With a named tool_choice, vLLM 0.32 forces the call's opening in the parser's format (hermes:
    `<tool_call>\n{"name": NAME, "arguments": `); the junk model may not close the JSON within
    max_tokens, and then the parser finds no call and the text stays content.
    """
    forced = f'<tool_call>\n{{"name": "{name}", "arguments": '
    return calls == [name] or (not calls and (content or "").startswith(forced))


def client(gateway_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway_url + "/v1", api_key="unused", timeout=300)


def test_chat(gateway_url: str) -> None:
    answer = client(gateway_url).chat.completions.create(model=CHAT, messages=PROMPT, max_tokens=8)
    assert answer.object == "chat.completion"
    assert answer.model == CHAT
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].finish_reason in {"stop", "length"}
    assert answer.usage is not None
    assert answer.usage.prompt_tokens > 0
    assert 0 < answer.usage.completion_tokens <= 8


def _stream(gateway_url: str, **extra: Any) -> list[Any]:
    stream = client(gateway_url).chat.completions.create(
        model=CHAT, messages=PROMPT, max_tokens=8, stream=True, **extra
    )
    return list(stream)


def test_stream_without_usage(gateway_url: str) -> None:
    chunks = _stream(gateway_url)
    assert chunks, "a stream has chunks"
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    assert all(chunk.model == CHAT for chunk in chunks)
    assert all(chunk.usage is None for chunk in chunks), "no usage unless asked for"
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason]
    assert finishes in (["stop"], ["length"])


def test_stream_with_usage(gateway_url: str) -> None:
    chunks = _stream(gateway_url, stream_options={"include_usage": True})
    last = chunks[-1]
    assert last.choices == [], "the usage chunk has no choices"
    assert last.usage is not None
    assert 0 < last.usage.completion_tokens <= 8
    assert all(chunk.usage is None for chunk in chunks[:-1])


def test_completions_with_logprobs(gateway_url: str) -> None:
    answer = client(gateway_url).completions.create(
        model=CHAT, prompt="Once upon a time", max_tokens=4, logprobs=2
    )
    assert answer.object == "text_completion"
    choice = answer.choices[0]
    assert choice.logprobs is not None
    assert choice.logprobs.tokens is not None
    assert 0 < len(choice.logprobs.tokens) <= 4
    assert choice.logprobs.top_logprobs is not None


def test_chat_logprobs_and_n(gateway_url: str) -> None:
    answer = client(gateway_url).chat.completions.create(
        model=CHAT, messages=PROMPT, max_tokens=4, n=2, logprobs=True, top_logprobs=2
    )
    assert [choice.index for choice in answer.choices] == [0, 1]
    for choice in answer.choices:
        assert choice.logprobs is not None
        assert choice.logprobs.content
        assert len(choice.logprobs.content[0].top_logprobs) == 2


def test_json_schema_response_format(gateway_url: str) -> None:
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}},
        "required": ["ok"],
        "additionalProperties": False,
    }
    answer = client(gateway_url).chat.completions.create(
        model=CHAT,
        messages=PROMPT,
        max_tokens=MAX_TOKENS,
        response_format={"type": "json_schema", "json_schema": {"name": "r", "schema": schema}},
    )
    content = answer.choices[0].message.content
    assert content is not None
    # Constrained decoding: JSON from the first token; a cut-off answer is a JSON prefix.
    assert content.lstrip().startswith("{")
    if answer.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(content)["ok"], bool)


def test_tools_with_auto_choice_are_accepted(gateway_url: str) -> None:
    # Without --enable-auto-tool-choice and a parser, vLLM answers 400 to this request (#14).
    answer = client(gateway_url).chat.completions.create(
        model=CHAT,
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER],
        tool_choice="auto",
        max_tokens=MAX_TOKENS,
    )
    message = answer.choices[0].message
    assert message.role == "assistant"
    assert answer.choices[0].finish_reason in {"stop", "length", "tool_calls"}
    for call in message.tool_calls or []:  # the tiny model seldom calls; when it does, well-formed
        assert call.type == "function"
        assert call.function.name == "get_weather"


def test_named_tool_choice_yields_a_parsed_call(gateway_url: str) -> None:
    # A named tool_choice yields a call to that tool (an enum keeps the output short).
    city: ChatCompletionToolParam = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"enum": ["Paris", "Rome"]}},
                "required": ["city"],
            },
        },
    }
    answer = client(gateway_url).chat.completions.create(
        model=CHAT,
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[city],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=GATEWAY_MAX_TOKENS,
    )
    message = answer.choices[0].message
    names = [call.function.name for call in message.tool_calls or [] if call.type == "function"]
    assert called("get_weather", names, message.content)
    for call in message.tool_calls or []:
        assert call.id
        assert call.type == "function"
        json.loads(call.function.arguments)  # JSON (vLLM 0.32 once sent `""` for this model)


def test_streamed_tools_with_auto_choice(gateway_url: str) -> None:
    chunks = _stream(gateway_url, tools=[WEATHER], tool_choice="auto")
    assert chunks
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason]
    assert len(finishes) == 1
    assert finishes[0] in {"stop", "length", "tool_calls"}


def test_embeddings(gateway_url: str) -> None:
    answer = client(gateway_url).embeddings.create(model=EMBED, input=["one", "two words"])
    assert answer.model == EMBED
    assert [item.index for item in answer.data] == [0, 1]
    assert all(len(item.embedding) == 384 for item in answer.data)  # all-MiniLM-L6-v2
    assert answer.usage.prompt_tokens > 0


def test_ollama_chat_and_embed(gateway_url: str) -> None:
    ollama_client = ollama.Client(host=gateway_url, timeout=300)
    parts = list(ollama_client.chat(CHAT, PROMPT, stream=True, options={"num_predict": 8}))
    assert parts[-1].done is True
    assert not any(part.done for part in parts[:-1])
    assert parts[-1].done_reason in {"stop", "length"}
    whole = ollama_client.chat(CHAT, PROMPT, options={"num_predict": 8})
    assert whole.message.role == "assistant"
    embedded = ollama_client.embed(EMBED, ["one", "two"])
    assert len(embedded.embeddings) == 2
    assert len(embedded.embeddings[0]) == 384


def test_ollama_chat_with_tools(gateway_url: str) -> None:
    answer = ollama.Client(host=gateway_url, timeout=300).chat(
        CHAT,
        [{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[dict(WEATHER)],
        options={"num_predict": MAX_TOKENS},
    )
    assert answer.done is True
    for call in answer.message.tool_calls or []:
        assert call.function.name == "get_weather"


def _langchain(gateway_url: str) -> dict[str, Any]:
    # A dict: mypy reads the pydantic aliases (base_url, api_key) as unknown keywords.
    return {"base_url": gateway_url + "/v1", "api_key": "unused", "timeout": 300}


def _chat_model(gateway_url: str) -> ChatOpenAI:
    return ChatOpenAI(**_langchain(gateway_url) | {"model": CHAT, "max_tokens": MAX_TOKENS})


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


def test_langchain_bind_tools(gateway_url: str) -> None:
    message = _chat_model(gateway_url).bind_tools([get_weather]).invoke("Weather in Paris?")
    assert isinstance(message, AIMessage)
    for call in message.tool_calls:
        assert call["name"] == "get_weather"


class Verdict(BaseModel):
    ok: bool


def test_langchain_structured_output(gateway_url: str) -> None:
    # function_calling: a named tool_choice, which vLLM constrains; the parse is LangChain's.
    model = ChatOpenAI(
        **_langchain(gateway_url) | {"model": CHAT, "max_tokens": GATEWAY_MAX_TOKENS}
    )
    structured = model.with_structured_output(Verdict, method="function_calling", include_raw=True)
    result = structured.invoke("Is water wet?")
    raw = result["raw"]
    assert isinstance(raw, AIMessage)
    # Junk arguments land in invalid_tool_calls; an unfinished call stays content (see called()).
    names = [str(call["name"]) for call in [*raw.tool_calls, *raw.invalid_tool_calls]]
    assert called("Verdict", names, str(raw.content))


def test_langchain_embeddings(gateway_url: str) -> None:
    config = _langchain(gateway_url) | {"model": EMBED, "check_embedding_ctx_length": False}
    embeddings = OpenAIEmbeddings(**config)
    vectors = embeddings.embed_documents(["one", "two"])
    assert len(vectors) == 2
    assert len(vectors[0]) == 384
    assert len(embeddings.embed_query("three")) == 384

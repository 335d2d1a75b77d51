"""The gateway in front of a real model: official clients, both dialects, streaming.

Gemma 3 270M is a base model that writes junk, so these tests check plumbing (statuses, shapes,
token counts, incremental chunks), never content. Timeouts are generous for a loaded 2-core box.
"""

from __future__ import annotations

import time

import ollama
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.real_model.conftest import MAX_TOKENS, SERVED_NAME

pytestmark = [pytest.mark.real_model, pytest.mark.timeout(600)]
PROMPT: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "Write one sentence about the sea."}
]


def client(gateway_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway_url + "/v1", api_key="unused", timeout=300)


def test_chat_completion(gateway_url: str) -> None:
    answer = client(gateway_url).chat.completions.create(
        model=SERVED_NAME, messages=PROMPT, max_tokens=12
    )
    assert answer.object == "chat.completion"
    assert answer.model == SERVED_NAME
    choice = answer.choices[0]
    assert choice.message.role == "assistant"
    assert choice.finish_reason in {"stop", "length"}
    assert answer.usage is not None
    assert answer.usage.prompt_tokens > 0
    assert 0 < answer.usage.completion_tokens <= 12


def test_streamed_chat_arrives_incrementally(gateway_url: str) -> None:
    stream = client(gateway_url).chat.completions.create(
        model=SERVED_NAME,
        messages=PROMPT,
        max_tokens=24,
        stream=True,
        stream_options={"include_usage": True},
    )
    arrivals: list[float] = []
    finishes: list[str] = []
    usage = None
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                arrivals.append(time.monotonic())
            if choice.finish_reason:
                finishes.append(choice.finish_reason)
    assert len(arrivals) >= 3, "a streamed answer comes in several chunks"
    assert arrivals[-1] > arrivals[0], "chunks arrive over time, not in one buffered block"
    assert finishes in (["stop"], ["length"])
    assert usage is not None, "include_usage asks for a final usage chunk"
    # llama.cpp's server sends no usage in streams: the gateway must count what it forwarded.
    assert usage.completion_tokens > 0


def test_ollama_dialect_chat(gateway_url: str) -> None:
    ollama_client = ollama.Client(host=gateway_url, timeout=300)
    parts = list(ollama_client.chat(SERVED_NAME, PROMPT, stream=True, options={"num_predict": 16}))
    assert len(parts) >= 2
    assert [p.done for p in parts][-1] is True
    assert not any(p.done for p in parts[:-1])
    final = parts[-1]
    assert final.done_reason in {"stop", "length"}
    assert (final.eval_count or 0) > 0, "eval_count counts the streamed tokens"
    whole = ollama_client.chat(SERVED_NAME, PROMPT, options={"num_predict": 8})
    assert whole.done is True
    assert whole.message.role == "assistant"


def test_limits_are_enforced_before_the_model(gateway_url: str) -> None:
    capped = client(gateway_url).chat.completions.create(
        model=SERVED_NAME, messages=PROMPT, max_tokens=10 * MAX_TOKENS
    )
    assert capped.usage is not None
    assert capped.usage.completion_tokens <= MAX_TOKENS  # the ask was lowered to the limit
    with pytest.raises(openai.BadRequestError) as refused:
        client(gateway_url).chat.completions.create(model=SERVED_NAME, messages=PROMPT, n=17)
    assert refused.value.code == "too_many_sequences"

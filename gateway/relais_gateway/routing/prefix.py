"""What PrefixHash hashes: the start of a request's prompt, the part a conversation keeps.

For chat, the messages in order up to and including the first user turn (so every later turn of
the same conversation, and every conversation sharing a system prompt and opening question,
hashes the same); for completions, the prompt. Only the first `limit` characters are built.
"""

from __future__ import annotations

from typing import Any


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts: the text ones
        return "".join(str(p.get("text") or "") for p in content if isinstance(p, dict))
    return ""


def chat_prefix(messages: Any, limit: int) -> str:
    """Role-tagged text of the messages up to the first user turn, cut at `limit` characters."""
    if not isinstance(messages, list):
        return ""
    parts: list[str] = []
    size = 0
    for message in messages:
        if not isinstance(message, dict):
            break
        piece = f"{message.get('role', '')}:{_text(message.get('content'))}\n"
        parts.append(piece)
        size += len(piece)
        if size >= limit or message.get("role") == "user":
            break
    return "".join(parts)[:limit]


def prompt_prefix(prompt: Any, limit: int) -> str:
    """The first `limit` characters of a completion prompt (the first one, for a list)."""
    if isinstance(prompt, list):
        prompt = prompt[0] if prompt and isinstance(prompt[0], str) else ""
    return prompt[:limit] if isinstance(prompt, str) else ""

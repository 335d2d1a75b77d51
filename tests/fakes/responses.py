"""The Responses API of a fake engine, as vLLM's OpenAI server serves it (`/v1/responses...`).

State lives in the server's memory, as in vLLM: a stored response can be retrieved, deleted,
cancelled (background) and continued with `previous_response_id`; an id this server did not make
is vLLM's 404. Each answer's text says which turn of its conversation it is (`turn N`), so a test
can tell that the replica that answered held the previous turns.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from aiohttp import web

from tests.fakes.core import Json, read_json

STORE = web.AppKey("responses_store", dict)


def _not_found(response_id: str) -> web.Response:
    error = {
        "message": f"Response with id '{response_id}' not found.",
        "type": "NotFoundError",
        "param": None,
        "code": 404,
    }
    return web.json_response({"error": error}, status=404)


def _response(body: dict[str, Any], turn: int, status: str = "completed") -> Json:
    rid = f"resp_{uuid.uuid4().hex}"
    text = f"turn {turn}"
    tokens = max(1, len(json.dumps(body.get("input", ""))) // 4)
    return {
        "id": rid,
        "object": "response",
        "created_at": int(time.time()),
        "model": body.get("model", ""),
        "status": status,
        "background": bool(body.get("background")),
        "previous_response_id": body.get("previous_response_id"),
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "output": [
            {
                "type": "message",
                "id": f"msg_{uuid.uuid4().hex}",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        ],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "metadata": {},
        "usage": {
            "input_tokens": tokens,
            "output_tokens": 2,
            "total_tokens": tokens + 2,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0},
        },
        "_input": body.get("input"),
        "_turn": turn,
    }


def _public(stored: Json) -> Json:
    return {k: v for k, v in stored.items() if not k.startswith("_")}


async def create(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    store: dict[str, Json] = request.app[STORE]
    previous = body.get("previous_response_id")
    turn = 1
    if previous is not None:
        if previous not in store:
            return _not_found(str(previous))
        turn = store[previous]["_turn"] + 1
    status = "in_progress" if body.get("background") else "completed"
    stored = _response(body, turn, status)
    if body.get("store", True):
        store[stored["id"]] = stored
    if not body.get("stream"):
        return web.json_response(_public(stored))
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    public = _public(stored)
    text = public["output"][0]["content"][0]["text"]
    events: list[Json] = [
        {"type": "response.created", "response": {**public, "status": "in_progress"}},
        {
            "type": "response.output_text.delta",
            "item_id": public["output"][0]["id"],
            "output_index": 0,
            "content_index": 0,
            "delta": text,
        },
        {"type": "response.completed", "response": public},
    ]
    for number, event in enumerate(events):
        line = (
            f"event: {event['type']}\ndata: {json.dumps({**event, 'sequence_number': number})}\n\n"
        )
        await response.write(line.encode())
    await response.write_eof()
    return response


async def retrieve(request: web.Request) -> web.Response:
    stored = request.app[STORE].get(request.match_info["rid"])
    if stored is None:
        return _not_found(request.match_info["rid"])
    return web.json_response(_public(stored))


async def delete(request: web.Request) -> web.Response:
    rid = request.match_info["rid"]
    if request.app[STORE].pop(rid, None) is None:
        return _not_found(rid)
    return web.json_response({"id": rid, "object": "response", "deleted": True})


async def cancel(request: web.Request) -> web.Response:
    stored = request.app[STORE].get(request.match_info["rid"])
    if stored is None:
        return _not_found(request.match_info["rid"])
    stored["status"] = "cancelled"
    return web.json_response(_public(stored))


async def input_items(request: web.Request) -> web.Response:
    stored = request.app[STORE].get(request.match_info["rid"])
    if stored is None:
        return _not_found(request.match_info["rid"])
    given = stored["_input"]
    items = [{"type": "message", "role": "user", "content": given}] if given else []
    return web.json_response({"object": "list", "data": items, "has_more": False})


def mount(app: web.Application) -> None:
    """Mount `/v1/responses...` on a fake engine's app (requests logged as any other)."""
    app[STORE] = {}
    app.router.add_post("/v1/responses", create)
    app.router.add_get("/v1/responses/{rid}", retrieve)
    app.router.add_delete("/v1/responses/{rid}", delete)
    app.router.add_post("/v1/responses/{rid}/cancel", cancel)
    app.router.add_get("/v1/responses/{rid}/input_items", input_items)

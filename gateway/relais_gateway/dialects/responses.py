"""OpenAI's stateful Responses API, across replicas and gateways: `/v1/responses...`.

An engine keeps a response (and the conversation behind `previous_response_id`) in its own
memory, so every request that names a response must reach the replica that created it, through
any gateway replica, with nothing shared between gateways and nothing stored here. The id a
client sees carries a token naming that replica: `resp_<engine id>.r<12 hex>`, the hex a hash of
the replica's address. A request naming a response is sent to the ready replica of the key's
models whose hash matches, and only there; the engine still sees its own id. A token that matches
no such replica is a 404 (no client steers a request to an address of its choosing), and so is
a response whose replica is gone.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Iterable

import orjson
from fastapi import APIRouter, Request, Response

from relais_gateway.dialects import openai
from relais_gateway.dialects.common import Json, check, json_response, read_json
from relais_gateway.edge.deps import caller_of, gateway_of, note_model, request_body, request_id
from relais_gateway.errors import GatewayError, InvalidRequest, NoReadyReplica
from relais_gateway.forward.relay import Rename
from relais_gateway.forward.service import Gateway, cancel_on_disconnect
from relais_gateway.forward.upstream import affinity
from relais_gateway.routing.engines import RESPONSES
from relais_gateway.routing.prefix import prompt_prefix
from relais_gateway.routing.registry import Backend

router = APIRouter(prefix="/v1/responses", tags=["OpenAI"])

SEPARATOR = ".r"
TOKEN_LENGTH = 12
CLIENT_ID = re.compile(r"^(resp_[A-Za-z0-9_-]{1,200})\.r([0-9a-f]{12})$")
ENGINE_IDS = re.compile(rb'"(resp_[A-Za-z0-9_-]{1,200})"')


class ResponseNotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "response_not_found"


def replica_token(replica: str) -> str:
    """The token naming `replica` (its base URL) in the ids its responses get."""
    return hashlib.sha256(replica.encode()).hexdigest()[:TOKEN_LENGTH]


class TagResponseIds(Rename):
    """The served name put back, and every response id the engine wrote given its replica's
    token (in `id`, `previous_response_id`, `response_id`: every id of that engine is its).

    `keep`: model names left as the engine wrote them (a stored response of one of the
    deployment's LoRA adapters names that adapter, not the base)."""

    __slots__ = ("_keep", "_suffix")

    def __init__(self, served_name: str, replica: str, keep: Iterable[str] = ()) -> None:
        super().__init__(served_name)
        self._suffix = (SEPARATOR + replica_token(replica)).encode()
        self._keep = frozenset(orjson.dumps(name) for name in keep)

    def _replace(self, match: re.Match[bytes]) -> bytes:
        written = match.group(0)[len(b'"model":') + len(match.group(1)) :]
        return match.group(0) if written in self._keep else super()._replace(match)

    def __call__(self, data: bytes) -> bytes:
        data = super().__call__(data)
        if b'"resp_' not in data:
            return data
        return ENGINE_IDS.sub(lambda m: b'"' + m.group(1) + self._suffix + b'"', data)


def parse_id(client_id: str) -> tuple[str, str]:
    """(the engine's id, the replica token) of an id the gateway gave out (404 otherwise)."""
    match = CLIENT_ID.match(client_id)
    if match is None:
        raise ResponseNotFound(f"no response {client_id[:100]!r}", param="response_id")
    return match.group(1), match.group(2)


def replica_of(request: Request, gateway: Gateway, client_id: str) -> tuple[Backend, str, str]:
    """(backend pinned to the replica, the engine's id, the replica) for a response id."""
    engine_id, token = parse_id(client_id)
    caller = caller_of(request, gateway)
    for backend in gateway.visible_backends(caller):
        for replica in backend.replicas:
            if replica_token(replica) == token:
                note_model(request, gateway, backend.model)
                pinned = dataclasses.replace(backend, replicas=(replica,))
                return pinned, engine_id, replica
    raise ResponseNotFound(
        f"response {client_id!r} is not available: the replica that created it is gone"
        " (responses live in the memory of the engine replica that made them)",
        param="response_id",
    )


@router.post(
    "",
    summary="Create a response (OpenAI Responses API), stateful across replicas",
    openapi_extra=request_body(openai.AnyModelRequest),
)
async def create(request: Request) -> Response:
    body = read_json(request)
    owned = check(openai.AnyModelRequest, body)
    gateway, backend = openai.admit(request, owned.model)
    previous = body.get("previous_response_id")
    if previous is not None:
        if not isinstance(previous, str):
            raise InvalidRequest(
                "previous_response_id must be a string", param="previous_response_id"
            )
        pinned, engine_id, replica = replica_of(request, gateway, previous)
        if pinned.base_model != backend.base_model:  # its base or one of its adapters may go on
            raise InvalidRequest(
                f"response {previous!r} was made by another model than {backend.model!r}",
                param="previous_response_id",
            )
        note_model(request, gateway, owned.model)  # the model asked for, not the replica's first
        backend = dataclasses.replace(backend, replicas=(replica,))
        body["previous_response_id"] = engine_id
    else:
        # The replica is chosen here, not per attempt: the ids of its answer must name it.
        backend = await cancel_on_disconnect(request.receive, gateway.ready(backend))
        prefix = prompt_prefix(_prompt(body), backend.routing.prefix_char_length)
        chosen = gateway.balancer.pick(
            backend.replicas, prefix=prefix, policy=backend.routing, affinity=affinity(backend)
        )
        if chosen is None:
            raise NoReadyReplica(
                f"model {backend.model!r} has no ready replica",
                retry_after_s=gateway.settings.retry_after_s,
            )
        replica = chosen
        note_model(request, gateway, owned.model)  # the model asked for, not the replica's first
        backend = dataclasses.replace(backend, replicas=(replica,))
    tag = TagResponseIds(backend.model, replica)
    return await openai.forward(request, gateway, backend, RESPONSES, body, raw=True, rewrite=tag)


def _prompt(body: Json) -> str:
    """The text that starts a new conversation, for prefix routing: instructions, then input."""
    given = body.get("input")
    return f"{body.get('instructions') or ''}{given if isinstance(given, str) else ''}"


async def _stored(request: Request, response_id: str, suffix: str, method: str) -> Response:
    """A call about a stored response, sent to the replica that holds it."""
    gateway = gateway_of(request)
    backend, engine_id, replica = replica_of(request, gateway, response_id)
    gateway.require(backend, RESPONSES)
    path = f"{RESPONSES}/{engine_id}{suffix}"
    query = request.url.query
    reply = await gateway.lookup(
        backend, f"{path}?{query}" if query else path, None, request_id(request), method
    )
    keep = [adapter.name for adapter in backend.adapters]
    tagged = TagResponseIds(backend.base_model, replica, keep)(reply.body)
    return json_response(tagged, media_type=reply.content_type)


@router.get("/{response_id}", summary="Retrieve a stored response")
async def retrieve(response_id: str, request: Request) -> Response:
    return await _stored(request, response_id, "", "GET")


@router.delete("/{response_id}", summary="Delete a stored response")
async def delete(response_id: str, request: Request) -> Response:
    return await _stored(request, response_id, "", "DELETE")


@router.post("/{response_id}/cancel", summary="Cancel a background response")
async def cancel(response_id: str, request: Request) -> Response:
    return await _stored(request, response_id, "/cancel", "POST")


@router.get("/{response_id}/input_items", summary="List a stored response's input items")
async def input_items(response_id: str, request: Request) -> Response:
    return await _stored(request, response_id, "/input_items", "GET")

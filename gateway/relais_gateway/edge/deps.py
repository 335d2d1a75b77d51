"""FastAPI dependencies shared by both dialects: settings, the gateway service, the caller.

Dependencies are `async def` on purpose: FastAPI runs plain `def` dependencies in a worker thread,
which costs more than the whole gateway hop.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from pydantic import BaseModel, ValidationError

from relais_gateway.errors import AuthenticationFailed, from_validation
from relais_gateway.forward.service import Gateway
from relais_gateway.policy.auth import Caller
from relais_gateway.settings import Settings


async def get_gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


GatewayDep = Annotated[Gateway, Depends(get_gateway)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


def caller_of(request: Request, gateway: Gateway) -> Caller:
    """The caller the edge authenticated before reading the body (see `middleware.py`).

    A plain call, not a dependency: the generation routes skip FastAPI's dependency solving,
    which costs more per request than the rest of the gateway hop.
    """
    caller: Caller | None = request.scope["state"].get("caller_policy")
    if caller is None:  # only public routes pass the edge unauthenticated; none calls this
        raise AuthenticationFailed("missing API key: send `Authorization: Bearer <key>`")
    return caller


def count_tokens(
    request: Request, gateway: Gateway, model: str, prompt: int, completion: int
) -> None:
    """Count an answer's tokens for the caller's key and model, and note them for the request's
    trace span."""
    state = request.scope["state"]
    gateway.metrics.count_tokens(state.get("caller") or "-", model, prompt, completion)
    state["tokens"] = (prompt, completion)


def key_name(request: Request) -> str:
    """The caller's key name, for per-key metrics ("-" before authentication)."""
    name: str = request.scope["state"].get("caller") or "-"
    return name


def gateway_of(request: Request) -> Gateway:
    """The app's gateway service (the hot-path form of `GatewayDep`)."""
    gateway: Gateway = request.app.state.gateway
    return gateway


async def get_caller(request: Request, gateway: GatewayDep) -> Caller:
    return caller_of(request, gateway)


CallerDep = Annotated[Caller, Depends(get_caller)]


M = TypeVar("M", bound=BaseModel)


def parse_body(request: Request, model: type[M]) -> M:
    """The request body as `model`, validated by pydantic's JSON parser (400 naming the field).

    The edge middleware has already read (and size-checked) the body; routes declare only
    `request`, so FastAPI's generic body handling stays off the hot path.
    """
    raw: bytes = request.scope["state"].get("body", b"")
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise from_validation(exc.errors(include_url=False)) from None


def request_body(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` documenting `model` as the JSON request body (see `app.py`)."""
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


def request_id(request: Request) -> str:
    """The request id the edge middleware accepted or generated."""
    rid: str = request.scope["state"]["request_id"]
    return rid


def started(request: Request) -> float:
    """When the edge middleware saw the request (perf_counter seconds)."""
    value: float = request.scope["state"].get("started", time.perf_counter())
    return value


def note_model(request: Request, gateway: Gateway, model: str) -> None:
    """Record the model for the request log, and its metrics label when it is a known one (an
    adapter's name for either of its names): a name a client invents is never a label."""
    state = request.scope["state"]
    state["model"] = model
    backend = gateway.source.resolve(model)
    state["model_label"] = backend.label if backend is not None else None

"""The Ollama dialect: `/api/...` routes, and `/` ("Ollama is running"), as Ollama serves them.

In front of an Ollama engine the body is forwarded as sent, except the fields the gateway owns
(`forward/owned.py`: the model renamed, `stream`, `num_predict` defaulted and capped, the runtime
options and `keep_alive` the deployment's), and the NDJSON answer streams back as Ollama wrote it.
In front of an OpenAI-only engine (vLLM, TGI, llama.cpp) `translate_ollama.py` carries the request
across. Model management (`pull`, `push`, `create`, `copy`, `delete`) is Kubernetes' job here: a
clear 403; so is unloading: a request to unload a model gets Ollama's answer and unloads nothing.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any, Literal

import orjson
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from relais_gateway.dialects import translate_ollama as translate
from relais_gateway.dialects.common import Json, check, json_response, read_json, stream, whole
from relais_gateway.edge.deps import (
    CallerDep,
    GatewayDep,
    caller_of,
    count_tokens,
    gateway_of,
    note_model,
    request_body,
    request_id,
    started,
)
from relais_gateway.errors import GatewayError, InvalidRequest, NotFound, malformed_answer
from relais_gateway.forward.owned import (
    check_inputs,
    decide_tokens,
    num_predict,
    ollama_options,
    own_ollama,
    own_openai,
)
from relais_gateway.forward.relay import NdjsonRelay, renamer, token_count
from relais_gateway.forward.service import Gateway, check_json_schema, check_structured
from relais_gateway.routing.engines import CHAT, COMPLETIONS, EMBEDDINGS, ROUTES
from relais_gateway.routing.prefix import chat_prefix, prompt_prefix
from relais_gateway.routing.registry import Backend

router = APIRouter(prefix="/api", tags=["Ollama"])
root_router = APIRouter(tags=["Ollama"])

NDJSON = "application/x-ndjson"
MANAGED = ("pull", "push", "create", "copy", "delete")


def _relais_version() -> str:
    try:
        return version("relais")
    except PackageNotFoundError:
        return "0.0.0"


class _Owned(BaseModel):
    model_config = ConfigDict(extra="allow")


class Options(_Owned):
    """Ollama `options`: the ones Relais limits or checks; all of them are forwarded."""

    num_predict: int | None = Field(default=None, ge=-2)
    temperature: float | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, ge=0, le=1)


class Message(_Owned):
    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = ""
    images: list[str] | None = None
    tool_calls: list[dict[str, Any]] | None = None


Format = Literal["json", ""] | dict[str, Any]


class ChatRequest(_Owned):
    """POST /api/chat: tools, images, think, options... all reach the engine."""

    model: str = Field(min_length=1)
    messages: list[Message] = Field(default_factory=list)
    stream: StrictBool = True
    format: Format | None = None
    options: Options | None = None
    tools: list[dict[str, Any]] | None = None
    think: bool | Literal["low", "medium", "high"] | None = None


class GenerateRequest(_Owned):
    """POST /api/generate."""

    model: str = Field(min_length=1)
    prompt: str | None = ""
    system: str | None = None
    images: list[str] | None = None
    stream: StrictBool = True
    format: Format | None = None
    options: Options | None = None
    raw: bool | None = None
    think: bool | Literal["low", "medium", "high"] | None = None


class EmbedRequest(_Owned):
    """POST /api/embed."""

    model: str = Field(min_length=1)
    input: str | list[str]


class EmbeddingsRequest(_Owned):
    """POST /api/embeddings (the older single-prompt form)."""

    model: str = Field(min_length=1)
    prompt: str


class ShowRequest(_Owned):
    """POST /api/show (`name` is the older spelling of `model`)."""

    model: str | None = Field(default=None, min_length=1)
    name: str | None = Field(default=None, min_length=1)


class ModelsManaged(GatewayError):
    status = 403
    type = "permission_error"
    code = "models_managed_by_relais"


def _structured(fmt: Format | None) -> tuple[bool, dict[str, Any] | None]:
    if isinstance(fmt, dict):
        check_json_schema(fmt, "format")
        return True, fmt
    return fmt == "json", None


def _admit(request: Request, model: str) -> tuple[Gateway, Backend]:
    gateway = gateway_of(request)
    caller = caller_of(request, gateway)
    note_model(request, gateway, model)
    return gateway, gateway.admit(caller, model)


def _empty_answer(chat: bool, model: str, reason: str) -> Response:
    piece: Json = {"message": {"role": "assistant", "content": ""}} if chat else {"response": ""}
    body = {"model": model, "created_at": translate.now(), **piece, "done": True}
    return json_response(body | {"done_reason": reason})


def _loaded(chat: bool, model: str) -> Response:
    """Ollama answers an empty prompt by loading the model; OpenAI engines are always loaded."""
    return _empty_answer(chat, model, "load")


UNLOAD = (0, "0", "0s", "0m", "0h")


def _unload(body: Json, empty: bool) -> bool:
    """An empty request with `keep_alive: 0`: Ollama's way to unload a model (Open WebUI's
    "Unload"). The deployment keeps its model loaded, so it is answered, never forwarded."""
    return empty and body.get("keep_alive") in UNLOAD and body.get("keep_alive") is not False


# ---------------------------------------------------------------- forwarding to Ollama engines


async def _native(
    request: Request,
    gateway: Gateway,
    backend: Backend,
    path: str,
    body: Json,
    *,
    schema: tuple[bool, dict[str, Any] | None] = (False, None),
    prefix: str = "",
) -> Response:
    """Forward an Ollama request to an Ollama engine; its answer back as it was written."""
    owned = own_ollama(body, backend, generates=path in ("/api/chat", "/api/generate"))
    if owned.capped:
        gateway.metrics.capped.labels(backend.label).inc()
    rename = renamer(backend.model)
    if owned.stream:
        reader = NdjsonRelay(rename)
        return await stream(gateway, backend, path, body, request, reader, NDJSON, {}, prefix)
    reply = await whole(gateway, backend, path, body, request, prefix)
    with malformed_answer():
        data = orjson.loads(reply.body)
    if isinstance(data, dict):
        prompt, count = (
            token_count(data.get("prompt_eval_count")),
            token_count(data.get("eval_count")),
        )
        count_tokens(request, gateway, backend.label, prompt, count)
        if schema[0]:
            check_structured(translate.answer_text(data, path == "/api/chat"), schema[1])
    return json_response(rename(reply.body))


# ---------------------------------------------------------------- translating to OpenAI engines


async def _translated(
    request: Request,
    gateway: Gateway,
    backend: Backend,
    path: str,
    body: Json,
    *,
    chat: bool,
    schema: tuple[bool, dict[str, Any] | None] = (False, None),
    prefix: str = "",
) -> Response:
    """An Ollama chat or generate answered by an OpenAI-only engine; `body` is the translated
    request, its output-token limit the one decided on the Ollama side."""
    gateway.require(backend, path)
    owned = own_openai(body, backend, path, ROUTES[path])
    body = backend.kind.adapt_openai(body)
    if owned.stream:
        reader = translate.StreamTranslator(backend.model, chat, started(request))
        return await stream(gateway, backend, path, body, request, reader, NDJSON, {}, prefix)
    reply = await whole(gateway, backend, path, body, request, prefix)
    with malformed_answer():
        answer = translate.whole_answer(
            orjson.loads(reply.body), backend.model, chat, started(request)
        )
    prompt, count = answer["prompt_eval_count"], answer["eval_count"]
    count_tokens(request, gateway, backend.label, prompt, count)
    if schema[0] and not (answer.get("message") or {}).get("tool_calls"):
        check_structured(translate.answer_text(answer, chat), schema[1])
    return json_response(answer)


# ---------------------------------------------------------------- routes


@router.post("/chat", summary="Chat (Ollama)", openapi_extra=request_body(ChatRequest))
async def chat(request: Request) -> Response:
    body = read_json(request)
    owned = check(ChatRequest, body)
    gateway, backend = _admit(request, owned.model)
    schema = _structured(owned.format)
    prefix = chat_prefix(body.get("messages"), backend.routing.prefix_char_length)
    if _unload(body, not owned.messages):
        return _empty_answer(True, owned.model, "unload")
    if backend.kind.native_ollama:
        return await _native(
            request, gateway, backend, "/api/chat", body, schema=schema, prefix=prefix
        )
    if not owned.messages:
        return _loaded(True, owned.model)
    tokens = _tokens(gateway, backend, body)
    openai = translate.chat_request(body, owned.stream, tokens)
    return await _translated(
        request, gateway, backend, CHAT, openai, chat=True, schema=schema, prefix=prefix
    )


@router.post("/generate", summary="Generate (Ollama)", openapi_extra=request_body(GenerateRequest))
async def generate(request: Request) -> Response:
    body = read_json(request)
    owned = check(GenerateRequest, body)
    gateway, backend = _admit(request, owned.model)
    schema = _structured(owned.format)
    prefix = prompt_prefix(
        f"{owned.system or ''}{owned.prompt or ''}", backend.routing.prefix_char_length
    )
    empty = not owned.prompt and not owned.images
    if _unload(body, empty):
        return _empty_answer(False, owned.model, "unload")
    if backend.kind.native_ollama:
        return await _native(
            request, gateway, backend, "/api/generate", body, schema=schema, prefix=prefix
        )
    if empty:
        return _loaded(False, owned.model)
    tokens = _tokens(gateway, backend, body)
    is_chat, openai = translate.generate_request(body, owned.stream, tokens)
    path = CHAT if is_chat else COMPLETIONS
    return await _translated(
        request, gateway, backend, path, openai, chat=False, schema=schema, prefix=prefix
    )


def _tokens(gateway: Gateway, backend: Backend, body: Json) -> int | None:
    """The output-token limit for a translated request, from the Ollama ask (`num_predict`)."""
    decided, capped = decide_tokens(
        num_predict(ollama_options(body)), backend, "options.num_predict"
    )
    if capped:
        gateway.metrics.capped.labels(backend.label).inc()
    return decided


async def _embed(request: Request, owned: EmbedRequest | EmbeddingsRequest, body: Json) -> Response:
    legacy = isinstance(owned, EmbeddingsRequest)
    gateway, backend = _admit(request, owned.model)
    check_inputs(body, backend, "prompt" if legacy else "input")
    if backend.kind.native_ollama:
        gateway.require(backend, EMBEDDINGS)
        path = "/api/embeddings" if legacy else "/api/embed"
        return await _native(request, gateway, backend, path, body)
    gateway.require(backend, EMBEDDINGS)
    openai = translate.embed_request(body, backend.upstream_model, legacy=legacy)
    reply = await whole(gateway, backend, EMBEDDINGS, openai, request)
    with malformed_answer():
        data = orjson.loads(reply.body)
        answer = translate.embed_answer(data, backend.model, started(request), legacy=legacy)
    return json_response(answer)


@router.post("/embed", summary="Embeddings (Ollama)", openapi_extra=request_body(EmbedRequest))
async def embed(request: Request) -> Response:
    body = read_json(request)
    return await _embed(request, check(EmbedRequest, body), body)


@router.post(
    "/embeddings",
    summary="Embedding of one prompt (Ollama, older form)",
    openapi_extra=request_body(EmbeddingsRequest),
)
async def embeddings(request: Request) -> Response:
    body = read_json(request)
    return await _embed(request, check(EmbeddingsRequest, body), body)


@router.post("/show", summary="Show a model (Ollama)", openapi_extra=request_body(ShowRequest))
async def show(request: Request) -> Response:
    body = read_json(request)
    owned = check(ShowRequest, body)
    name = owned.model or owned.name
    if not name:
        raise InvalidRequest("model is required", param="model")
    gateway, backend = _admit(request, name)
    if not backend.kind.native_ollama:
        return json_response(_synthetic_show(backend))
    forwarded = {**body, "model": backend.upstream_model}
    forwarded.pop("name", None)
    reply = await gateway.lookup(backend, "/api/show", forwarded, request_id(request))
    rename = renamer(backend.model)
    return json_response(rename(reply.body))


def _details(backend: Backend) -> Json:
    return {
        "parent_model": backend.parent,
        "format": "",
        "family": backend.engine,
        "families": [backend.engine],
        "parameter_size": "",
        "quantization_level": "",
    }


def _synthetic_show(backend: Backend) -> Json:
    """What Relais knows of a model an OpenAI-only engine serves (it has no /api/show)."""
    return {
        "modelfile": "",
        "parameters": "",
        "template": "",
        "details": _details(backend),
        "model_info": {"general.architecture": backend.engine, "relais.engine": backend.engine},
        "capabilities": ["embedding"] if backend.task == "embed" else ["completion"],
        "modified_at": "1970-01-01T00:00:00Z",
    }


def _entry(backend: Backend) -> Json:
    return {
        "name": backend.model,
        "model": backend.model,
        "modified_at": "1970-01-01T00:00:00Z",
        "size": 0,
        "digest": "",
        "details": _details(backend),
    }


@router.get("/tags", summary="List models (Ollama)")
async def tags(gateway: GatewayDep, caller: CallerDep) -> dict[str, Any]:
    return {"models": [_entry(b) for b in gateway.visible_backends(caller)]}


@router.get("/ps", summary="Running models (Ollama): those with a ready replica")
async def ps(gateway: GatewayDep, caller: CallerDep) -> dict[str, Any]:
    running = [
        {**_entry(b), "expires_at": "9999-12-31T23:59:59Z", "size_vram": 0}
        for b in gateway.visible_backends(caller)
        if b.replicas
    ]
    return {"models": running}


@router.get("/version", summary="Version (Ollama)")
async def api_version() -> dict[str, str]:
    return {"version": _relais_version()}


@router.api_route(
    "/{action}",
    methods=["POST", "DELETE"],
    summary="Model management (pull, push, create, copy, delete): not here, see LLMDeployment",
    include_in_schema=False,
)
async def managed(action: str) -> Response:
    if action not in MANAGED:
        raise NotFound(f"no route /api/{action}")
    raise ModelsManaged(
        f"/api/{action} is not available: models are managed by Relais with LLMDeployment "
        "resources (kubectl apply -f model.yaml), and each is pulled once by the operator"
    )


@root_router.get("/", summary="Ollama is running (what Ollama clients probe)")
async def root() -> Response:
    return Response("Ollama is running", media_type="text/plain; charset=utf-8")


@root_router.head("/", include_in_schema=False)
async def root_head() -> Response:
    return Response(media_type="text/plain; charset=utf-8")


REQUEST_MODELS: tuple[type[BaseModel], ...] = (
    ChatRequest,
    GenerateRequest,
    EmbedRequest,
    EmbeddingsRequest,
    ShowRequest,
)

"""The FastAPI application: lifespan (upstream pool, backend source), routes and error handlers.

`create_app(settings, source=None, auth=None)` builds the app; without a `source`/`auth` they
come from the settings (a static `--config` file, or the Kubernetes watch plus `--auth-file`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import aiohttp
from aiohttp import web
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.types import Receive, Scope, Send

from relais_gateway.config import AuthConfig, load_auth_file, load_static_auth, load_static_config
from relais_gateway.dialects import anthropic, audio, ollama, openai, responses
from relais_gateway.edge.cors import Cors
from relais_gateway.edge.deps import GatewayDep
from relais_gateway.edge.metrics import Metrics
from relais_gateway.edge.middleware import EdgeMiddleware
from relais_gateway.edge.tracing import from_environment as tracing_from_environment
from relais_gateway.errors import GatewayError, from_validation, render_error
from relais_gateway.forward.service import Gateway
from relais_gateway.forward.upstream import Upstream
from relais_gateway.policy.admission import Admission
from relais_gateway.policy.auth import Authenticator, FailureThrottle
from relais_gateway.policy.reload import AuthReloader, DeploymentsReloader
from relais_gateway.routing.adapters import AdapterTracker
from relais_gateway.routing.balancer import Balancer
from relais_gateway.routing.registry import BackendSource, StaticSource
from relais_gateway.settings import Settings

log = logging.getLogger("relais_gateway")


def sources_from_settings(settings: Settings) -> tuple[BackendSource, AuthConfig]:
    """The backend source and auth config the settings name (raises on a bad file)."""
    if settings.source == "kubernetes":
        from relais_gateway.routing.kubernetes import KubernetesSource

        if settings.auth_file is None:
            raise ValueError("--source kubernetes needs --auth-file")
        return KubernetesSource(settings.namespaces), load_auth_file(settings.auth_file)
    if settings.config is None:
        raise ValueError("the static source needs --config FILE")
    config = load_static_config(settings.config)
    source = StaticSource(config.deployments, health_interval_s=settings.health_check_interval_s)
    return source, config.auth


def upstream_session(settings: Settings) -> aiohttp.ClientSession:
    """The one pooled upstream client: many keep-alive connections, explicit connect timeouts."""
    connector = aiohttp.TCPConnector(
        limit=settings.upstream_pool_limit, limit_per_host=0, keepalive_timeout=30
    )
    timeout = aiohttp.ClientTimeout(
        total=None, connect=settings.connect_timeout_s, sock_connect=settings.connect_timeout_s
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        # No cookies: one client serves every caller, so an engine's cookie must not travel to
        # the next caller's request (and the jar's per-request filtering costs CPU).
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        skip_auto_headers=["Accept-Encoding"],
    )


def create_app(
    settings: Settings, source: BackendSource | None = None, auth: AuthConfig | None = None
) -> GatewayApp:
    """The gateway app. Files named by `settings` are read here, so errors surface at startup."""
    if source is None or auth is None:
        default_source, default_auth = sources_from_settings(settings)
        source = source or default_source
        auth = auth or default_auth
    if "*" in settings.cors_allow_origins and auth.disabled:
        raise ValueError("CORS_ALLOW_ORIGINS '*' needs auth: any web page could use the gateway")
    balancer = Balancer(settings.eject_cooldown_s)
    admission = Admission(
        settings.max_waiting_requests, settings.queue_timeout_s, settings.retry_after_s
    )
    metrics = Metrics(balancer, admission)
    admission.on_wait = metrics.observe_wait
    authenticator = Authenticator(auth)
    tracing = tracing_from_environment()

    reloader = auth_reloader(settings, authenticator, metrics)
    watcher = (
        DeploymentsReloader(settings.config, source, settings.auth_reload_interval_s)
        if isinstance(source, StaticSource) and settings.config is not None
        else None
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        reloading = asyncio.create_task(reloader.run()) if reloader is not None else None
        watching = asyncio.create_task(watcher.run()) if watcher is not None else None
        management = await serve_metrics(settings, metrics) if settings.metrics_port else None
        async with upstream_session(settings) as session:
            adapters = AdapterTracker(source, settings.adapter_poll_interval_s)
            upstream = Upstream(session, settings, balancer, metrics, tracing, adapters)
            gateway = Gateway(
                settings,
                source,
                authenticator,
                balancer,
                metrics,
                upstream,
                admission,
                tracing,
                adapters,
            )
            app.state.gateway = gateway
            await source.start()
            await adapters.start(session)
            try:
                yield
            finally:
                gateway.draining = True
                await _drain(balancer, settings.shutdown_grace_s)
                await adapters.stop()
                await source.stop()
                if reloading is not None:
                    reloading.cancel()
                if watching is not None:
                    watching.cancel()
                if management is not None:
                    await management.cleanup()
                if tracing is not None:
                    tracing.shutdown()  # exports the spans still batched

    app = GatewayApp(
        title="Relais gateway",
        summary="One OpenAI- and Ollama-compatible endpoint for every model",
        version=ollama._relais_version(),
        lifespan=lifespan,
        # A trailing-slash redirect would build its Location from the client's Host header.
        redirect_slashes=False,
        # FastAPI's OpenTelemetry hooks cost a provider lookup per request; we export Prometheus.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    app.include_router(responses.router)  # before the OpenAI catch-all route
    app.include_router(audio.router)  # before the OpenAI catch-all route too
    app.include_router(anthropic.router)
    app.include_router(openai.router)
    app.include_router(openai.root_router)
    app.include_router(ollama.router)
    app.include_router(ollama.root_router)
    _document_request_bodies(
        app, openai.REQUEST_MODELS + ollama.REQUEST_MODELS + anthropic.REQUEST_MODELS
    )
    _add_operational_routes(app, metrics, on_api_port=settings.metrics_port is None)
    _add_error_handlers(app)
    fast_routes = {
        "/v1/chat/completions": openai.chat_completions,
        "/v1/completions": openai.completions,
        "/v1/embeddings": openai.embeddings,
        "/api/chat": ollama.chat,
        "/api/generate": ollama.generate,
        "/api/embed": ollama.embed,
    }
    app.edge = EdgeMiddleware(
        partial(FastAPI.__call__, app),
        max_body_bytes=settings.max_body_bytes,
        max_upload_bytes=settings.max_upload_bytes,
        body_timeout_s=settings.body_timeout_s,
        metrics=metrics,
        authenticator=authenticator,
        throttle=FailureThrottle(settings.auth_failures_per_minute),
        fast_routes=fast_routes,
        cors=Cors(settings.cors_allow_origins) if settings.cors_allow_origins else None,
        tracing=tracing,
    )
    return app


def auth_reloader(
    settings: Settings, authenticator: Authenticator, metrics: Metrics
) -> AuthReloader | None:
    """A watcher of the file the keys came from: the --auth-file, else the static --config."""
    if settings.source == "kubernetes" and settings.auth_file is not None:
        path, load = settings.auth_file, load_auth_file
    elif settings.source == "static" and settings.config is not None:
        path, load = settings.config, load_static_auth
    else:
        return None
    return AuthReloader(
        path, load, authenticator, settings.auth_reload_interval_s, metrics.auth_reloaded
    )


class GatewayApp(FastAPI):
    """FastAPI with the edge in front of its whole middleware stack.

    As a Starlette middleware the edge would sit inside FastAPI's server-error, telemetry and
    body-limit layers, and every ASGI message of the generation routes would pass through them.
    """

    edge: EdgeMiddleware

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope["app"] = self
            await self.edge(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


async def _drain(balancer: Balancer, grace_s: float) -> None:
    """Wait (bounded) for in-flight generations to finish before closing the upstream pool."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace_s
    # Polling: a counter read every 50 ms costs nothing on the hot path, unlike an Event per end.
    while balancer.total_inflight > 0 and loop.time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)


async def serve_metrics(settings: Settings, metrics: Metrics) -> web.AppRunner:
    """The management port: /metrics alone, so the API port (and whatever exposes it: a public
    Service, an Ingress) never shows models, engine addresses or key names."""

    async def prometheus(request: web.Request) -> web.Response:
        del request
        body = generate_latest(metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    management = web.Application()
    management.router.add_get("/metrics", prometheus)
    runner = web.AppRunner(management, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, settings.host, settings.metrics_port).start()
    return runner


def _add_operational_routes(app: FastAPI, metrics: Metrics, *, on_api_port: bool) -> None:
    @app.get("/healthz", tags=["Operations"], summary="Liveness")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["Operations"],
        summary="Readiness: the gateway has its first complete view of the models and is not"
        " draining. It does not say that any model has a ready replica (requests for a model"
        " with none wait for one, or get 503).",
    )
    async def readyz(gateway: GatewayDep) -> Response:
        ready = gateway.source.ready and not gateway.draining
        body = b'{"status":"ready"}' if ready else b'{"status":"not ready"}'
        return Response(body, 200 if ready else 503, media_type="application/json")

    if on_api_port:  # else on RELAIS_GATEWAY_METRICS_PORT only (see serve_metrics)

        @app.get("/metrics", tags=["Operations"], summary="Prometheus metrics")
        async def prometheus() -> Response:
            return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


def _document_request_bodies(app: FastAPI, models: tuple[type[BaseModel], ...]) -> None:
    """Add the generation routes' body models to the OpenAPI components they reference."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in models:
                body = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(body.pop("$defs", {}))
                components[model.__name__] = body
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _add_error_handlers(app: FastAPI) -> None:
    def render(request: Request, exc: GatewayError) -> Response:
        status, headers, body = render_error(exc, request.url.path)
        return Response(body, status, headers=headers, media_type="application/json")

    @app.exception_handler(GatewayError)
    async def gateway_error(request: Request, exc: GatewayError) -> Response:
        return render(request, exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        return render(request, from_validation(exc.errors()))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        error = GatewayError(str(exc.detail), headers=dict(exc.headers or {}))
        error.status = exc.status_code
        error.type = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return render(request, error)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error", extra={"path": request.url.path})
        return render(request, GatewayError("internal gateway error"))

"""`relais-gateway`: parse flags into Settings, set up JSON logging, run uvicorn."""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

import uvicorn
import yaml
from pydantic import ValidationError

from relais_gateway.app import create_app
from relais_gateway.edge.logs import setup_logging
from relais_gateway.edge.server import BoundedHttpToolsProtocol
from relais_gateway.settings import Settings


def parse_args(argv: list[str] | None = None) -> dict[str, Any]:
    """The flags given on the command line, as Settings field overrides."""
    parser = argparse.ArgumentParser(
        prog="relais-gateway",
        description="OpenAI- and Ollama-compatible gateway for Relais models. "
        "Every setting also reads RELAIS_GATEWAY_<NAME> from the environment.",
    )
    parser.add_argument("--config", help="static source: YAML with `deployments:` and `auth:`")
    parser.add_argument("--source", choices=["static", "kubernetes"])
    parser.add_argument(
        "--namespace",
        dest="namespaces",
        action="append",
        help="kubernetes source: namespace to watch (repeatable; none = all)",
    )
    parser.add_argument("--auth-file", help="kubernetes source: YAML with the `auth:` content")
    parser.add_argument("--host", help="listen address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="listen port (default 8000)")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    args = vars(parser.parse_args(argv))
    overrides = {key: value for key, value in args.items() if value is not None}
    if "config" in overrides and "source" not in overrides:
        overrides["source"] = "static"
    return overrides


def main(argv: list[str] | None = None) -> None:
    """Run the gateway until SIGTERM/SIGINT; shutdown drains in-flight streams."""
    try:
        settings = Settings(**parse_args(argv))
        setup_logging(settings.log_level)
        app = create_app(settings)
    except (ValidationError, ValueError, OSError, yaml.YAMLError) as exc:
        print(f"relais-gateway: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    protocol = BoundedHttpToolsProtocol.configured(
        settings.max_header_bytes, settings.header_timeout_s
    )
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http=protocol,
        log_config=None,
        access_log=settings.access_log,
        timeout_keep_alive=settings.keep_alive_timeout_s,
        timeout_graceful_shutdown=max(1, math.ceil(settings.shutdown_grace_s)),
        server_header=False,
        proxy_headers=False,
    )


if __name__ == "__main__":
    main()

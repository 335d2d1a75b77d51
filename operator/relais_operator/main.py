"""`relais-operator`: the console script; reads settings, then runs kopf with our handlers.

Flags override the RELAIS_OPERATOR_* environment; authentication is in-cluster or kubeconfig.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from relais_operator.settings import OperatorSettings, kopf_settings


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="relais-operator",
        description="Run the Relais operator: LLMDeployment resources -> model-serving workloads."
        " Settings come from RELAIS_OPERATOR_* environment variables; flags override them.",
    )
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "-n",
        "--namespace",
        action="append",
        dest="namespaces",
        metavar="NS",
        help="watch this namespace (repeatable); default: RELAIS_OPERATOR_NAMESPACES or all",
    )
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace")
    parser.add_argument(
        "--liveness-port",
        type=int,
        metavar="PORT",
        help="serve kopf's liveness probe at :PORT/healthz (0 disables); default 8080",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    parser.add_argument("--debug", action="store_true", help="log everything, kopf included")
    return parser.parse_args(argv)


def load_settings(args: argparse.Namespace) -> OperatorSettings:
    overrides: dict[str, object] = {}
    if args.namespaces:
        overrides["namespaces"] = args.namespaces
    if args.all_namespaces:
        overrides["namespaces"] = []
    if args.liveness_port is not None:
        overrides["liveness_port"] = args.liveness_port
    return OperatorSettings(**overrides)  # type: ignore[arg-type]


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    settings = load_settings(args)
    # kopf imports kubernetes_asyncio, when installed (the gateway uses it), only to recognise
    # its model objects, which this operator never hands to kopf: ~70 MB of classes we skip.
    sys.modules.setdefault("kubernetes_asyncio", None)  # type: ignore[arg-type]
    import kopf

    kopf.configure(verbose=args.verbose, debug=args.debug)  # kopf's log format and handlers
    if not (args.verbose or args.debug):
        logging.getLogger().setLevel(settings.log_level.upper())
    import relais_operator.handlers  # noqa: F401  (registers the handlers with kopf)

    kopf.run(
        standalone=True,
        clusterwide=not settings.namespaces,
        namespaces=settings.namespaces,
        liveness_endpoint=settings.liveness_endpoint,
        settings=kopf_settings(settings),
        memo=kopf.Memo(settings=settings),
    )


if __name__ == "__main__":
    main()

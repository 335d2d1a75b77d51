"""The simulated cluster's API server: FaithfulKMock with every resource the simulation serves.

`python -m tests.sim.apiserver --port P` runs it as its own process (SimCluster starts it), so
the operator, the gateways and the test all reach it over loopback at the same time. Beyond the
operator's resources it serves EndpointSlices (the simulated EndpointSlice controller writes them,
the gateways watch them).
"""

from __future__ import annotations

import argparse
import asyncio

import kmock

from tests.operator.kmock_server import FaithfulKMock, declare_resources

VERBS = {"get", "list", "watch", "create", "patch", "update", "delete"}
EXTRA = {"discovery.k8s.io/v1/endpointslices": "EndpointSlice"}


def declare(server: kmock.KubernetesEmulator) -> None:
    declare_resources(server)
    for key, kind in EXTRA.items():
        server.resources[key] = kmock.ResourceInfo(kind=kind, namespaced=True, verbs=VERBS)


async def serve(host: str, port: int) -> None:
    async with FaithfulKMock() as server, kmock.Server(server, host=host, port=port):
        declare(server)
        print(f"READY {server.url}", flush=True)
        await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()

"""Picks up edited API keys and static deployments while the gateway runs: no restart, no
request dropped.

Kubernetes updates a mounted Secret in place (an atomic symlink swap), so the `--auth-file`, and
the `auth:` section of a static `--config` file, are re-read when their content changes, checked
every `auth_reload_interval_s`. A file that no longer parses keeps the keys in force: the error is
logged and `relais_gateway_auth_reload_ok` drops to 0 until a good file arrives. The static file's
`deployments:` are re-read the same way (`DeploymentsReloader`): an adapter or an endpoint added or
removed there applies within the interval; a bad edit keeps the deployments in force.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from pathlib import Path

import yaml
from pydantic import ValidationError

from relais_gateway.config import AuthConfig, StaticDeployment, load_static_config
from relais_gateway.policy.auth import Authenticator
from relais_gateway.routing.registry import StaticSource

log = logging.getLogger("relais_gateway.policy.reload")


def digest(path: Path) -> bytes | None:
    """The SHA-256 of the file's content (None when it cannot be read)."""
    try:
        return hashlib.sha256(path.read_bytes()).digest()
    except OSError:
        return None


def first_line(error: Exception) -> str:
    return str(error).splitlines()[0][:300] if str(error) else type(error).__name__


class AuthReloader:
    """Watches one file and swaps the authenticator's keys when it changes."""

    def __init__(
        self,
        path: Path,
        load: Callable[[Path], AuthConfig],
        authenticator: Authenticator,
        interval_s: float,
        on_result: Callable[[bool], None],
    ) -> None:
        self.path = path
        self.load = load
        self.authenticator = authenticator
        self.interval_s = interval_s
        self.on_result = on_result
        self._seen = digest(path)

    def read(self) -> AuthConfig | Exception | None:
        """The file's new config (or why it is invalid), or None when it did not change."""
        seen = digest(self.path)
        if seen is None or seen == self._seen:
            return None
        self._seen = seen
        try:
            return self.load(self.path)
        except (OSError, ValueError, ValidationError, yaml.YAMLError) as exc:
            return exc

    def apply(self, result: AuthConfig | Exception | None) -> None:
        """Swap the keys in (on the event loop, between requests), or report the bad file."""
        if result is None:
            return
        if isinstance(result, Exception):
            first = first_line(result)
            log.error("auth file %s is invalid; keeping the keys in force: %s", self.path, first)
            self.on_result(False)
            return
        self.authenticator.replace(result)
        log.info("auth file %s reloaded: %d keys", self.path, len(result.keys))
        self.on_result(True)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            self.apply(await asyncio.to_thread(self.read))  # file reads off the event loop


class DeploymentsReloader:
    """Watches the static `--config` file and swaps its `deployments:` into the source."""

    def __init__(self, path: Path, source: StaticSource, interval_s: float) -> None:
        self.path = path
        self.source = source
        self.interval_s = interval_s
        self._seen = digest(path)

    def read(self) -> list[StaticDeployment] | Exception | None:
        """The file's deployments (or why it is invalid), or None when it did not change."""
        seen = digest(self.path)
        if seen is None or seen == self._seen:
            return None
        self._seen = seen
        try:
            return load_static_config(self.path).deployments
        except (OSError, ValueError, ValidationError, yaml.YAMLError) as exc:
            return exc

    def apply(self, result: list[StaticDeployment] | Exception | None) -> None:
        if result is None:
            return
        if isinstance(result, Exception):
            log.error(
                "config file %s is invalid; keeping the deployments in force: %s",
                self.path,
                first_line(result),
            )
            return
        self.source.reconfigure(result)
        log.info("config file %s reloaded: %d deployments", self.path, len(result))

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            self.apply(await asyncio.to_thread(self.read))

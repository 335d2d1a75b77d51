"""Picks up edited API keys while the gateway runs: no restart, no request dropped.

Kubernetes updates a mounted Secret in place (an atomic symlink swap), so the `--auth-file`, and
the `auth:` section of a static `--config` file, are re-read when their content changes, checked
every `auth_reload_interval_s`. A file that no longer parses keeps the keys in force: the error is
logged and `relais_gateway_auth_reload_ok` drops to 0 until a good file arrives.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from pathlib import Path

import yaml
from pydantic import ValidationError

from relais_gateway.auth import Authenticator
from relais_gateway.config import AuthConfig

log = logging.getLogger("relais_gateway.reload")


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
        self._seen = self._digest()

    def _digest(self) -> bytes | None:
        try:
            return hashlib.sha256(self.path.read_bytes()).digest()
        except OSError:
            return None

    def read(self) -> AuthConfig | Exception | None:
        """The file's new config (or why it is invalid), or None when it did not change."""
        digest = self._digest()
        if digest is None or digest == self._seen:
            return None
        self._seen = digest
        try:
            return self.load(self.path)
        except (OSError, ValueError, ValidationError, yaml.YAMLError) as exc:
            return exc

    def apply(self, result: AuthConfig | Exception | None) -> None:
        """Swap the keys in (on the event loop, between requests), or report the bad file."""
        if result is None:
            return
        if isinstance(result, Exception):
            first = str(result).splitlines()[0][:300] if str(result) else type(result).__name__
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

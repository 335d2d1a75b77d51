"""The engine adapter Protocol: canonical request -> engine HTTP call; engine answer -> events."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

from relais_gateway.canonical import Event, Finish, GenerationRequest


class EngineAdapter(Protocol):
    """How to talk to one kind of engine. Adapters are stateless; one instance serves all calls."""

    name: str

    def prepare(self, req: GenerationRequest) -> tuple[str, dict[str, Any]]:
        """The path (relative to a replica's base URL) and JSON body for `req`."""
        ...

    def parse_answer(self, data: Any, req: GenerationRequest) -> tuple[str, Finish]:
        """The text and finish of a non-streamed answer (`data` is the decoded JSON)."""
        ...

    def decode_stream(
        self, lines: AsyncIterator[bytes], req: GenerationRequest
    ) -> AsyncIterator[Event]:
        """Text deltas, then one `Finish`, from a streamed answer's lines.

        Raises `UpstreamError` when the engine reports an error or ends the stream early.
        """
        ...

"""Replica choice: least outstanding requests over non-ejected replicas, plus in-flight counts.

The counters (per model and per replica) are the signal for autoscaling and /metrics; the
router calls `begin`/`end` around every upstream call and `eject` when a replica fails.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence


class Balancer:
    """Least-outstanding-requests choice with ejection cool-down and round-robin tie breaks."""

    def __init__(self, cooldown_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.cooldown_s = cooldown_s
        self._clock = clock
        self.inflight_by_replica: dict[str, int] = {}
        self.inflight_by_model: dict[str, int] = {}
        self._ejected_until: dict[str, float] = {}
        self._turn = 0

    def pick(self, replicas: Sequence[str], exclude: Collection[str] = ()) -> str | None:
        """The replica to use next, or None when `replicas` (minus `exclude`) is empty.

        Ejected replicas are used only when every candidate is ejected (better a likely failure
        than a certain 503).
        """
        candidates = [r for r in replicas if r not in exclude] if exclude else list(replicas)
        if len(candidates) <= 1:
            return candidates[0] if candidates else None  # ejected or not, it is the only one
        now = self._clock()
        healthy = [r for r in candidates if self._ejected_until.get(r, 0.0) <= now]
        pool = healthy or candidates
        self._turn += 1
        start = self._turn % len(pool)
        rotated = pool[start:] + pool[:start]
        return min(rotated, key=lambda r: self.inflight_by_replica.get(r, 0))

    def is_ejected(self, replica: str) -> bool:
        return self._ejected_until.get(replica, 0.0) > self._clock()

    def eject(self, replica: str) -> None:
        """Keep `replica` out of rotation for the cool-down."""
        self._ejected_until[replica] = self._clock() + self.cooldown_s

    def restore(self, replica: str) -> None:
        """A replica answered well: end any ejection early."""
        self._ejected_until.pop(replica, None)

    def begin_model(self, model: str) -> None:
        self.inflight_by_model[model] = self.inflight_by_model.get(model, 0) + 1

    def end_model(self, model: str) -> None:
        self.inflight_by_model[model] -= 1

    def begin_replica(self, replica: str) -> None:
        self.inflight_by_replica[replica] = self.inflight_by_replica.get(replica, 0) + 1

    def end_replica(self, replica: str) -> None:
        self.inflight_by_replica[replica] -= 1

    def inflight(self, model: str) -> int:
        return self.inflight_by_model.get(model, 0)

    @property
    def total_inflight(self) -> int:
        return sum(self.inflight_by_model.values())

"""Replica choice and the in-flight counts it is based on.

Two strategies: LeastLoad (least outstanding requests, ties rotated) and PrefixHash (consistent
hashing of the prompt's prefix with bounded load, so a conversation keeps hitting the replica that
holds its KV cache). The ring is built from the replica URLs alone, with a stable hash, so every
gateway replica maps a prefix to the same engine replica without sharing any state.

The counters (per model and per replica) are also the autoscaling signal and /metrics; the
upstream calls `begin`/`end` around every call and `eject` when a replica fails.
"""

from __future__ import annotations

import bisect
import collections
import hashlib
import math
import time
from collections.abc import Callable, Collection, Sequence

from relais_api import Routing

VIRTUAL_NODES = 128
"""Points per replica on the ring: enough that shares stay within a few % of even."""

LEAST_LOAD = Routing(strategy="LeastLoad")


def stable_hash(text: str) -> int:
    """A 64-bit hash that is the same in every process (unlike `hash()`)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class Ring:
    """A consistent-hash ring over a set of replicas, with virtual nodes."""

    __slots__ = ("owners", "points")

    def __init__(self, replicas: Collection[str]) -> None:
        nodes = sorted(
            (stable_hash(f"{replica}#{i}"), replica)
            for replica in replicas
            for i in range(VIRTUAL_NODES)
        )
        self.points = [point for point, _ in nodes]
        self.owners = [owner for _, owner in nodes]

    def walk(self, key: int) -> list[str]:
        """Every replica once, in ring order starting at `key`'s position."""
        start = bisect.bisect(self.points, key)
        seen: dict[str, None] = {}
        total = len(self.owners)
        for offset in range(total):
            seen.setdefault(self.owners[(start + offset) % total])
            if len(seen) * VIRTUAL_NODES >= total:
                break
        return list(seen)


class Balancer:
    """Picks replicas; counts in-flight requests; keeps failing replicas out for a cool-down."""

    def __init__(self, cooldown_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.cooldown_s = cooldown_s
        self._clock = clock
        self.inflight_by_replica: dict[str, int] = {}
        self.inflight_by_model: dict[str, int] = {}
        self.decisions: collections.Counter[tuple[str, str]] = collections.Counter()
        """(strategy, first choice taken "true"/"false") -> count; exported as a metric."""
        self._ejected_until: dict[str, float] = {}
        self._turn = 0
        self._rings: dict[tuple[str, ...], Ring] = {}

    def pick(
        self,
        replicas: Sequence[str],
        exclude: Collection[str] = (),
        *,
        prefix: str = "",
        policy: Routing = LEAST_LOAD,
    ) -> str | None:
        """The replica to use next, or None when `replicas` (minus `exclude`) is empty.

        Ejected replicas are used only when every candidate is ejected (better a likely failure
        than a certain 503). PrefixHash with no prefix (nothing to hash) is LeastLoad.
        """
        candidates = [r for r in replicas if r not in exclude] if exclude else list(replicas)
        if not candidates:
            return None
        if policy.strategy == "PrefixHash" and prefix:
            return self._by_prefix(replicas, candidates, prefix, policy)
        self.decisions["LeastLoad", "true"] += 1
        if len(candidates) == 1:
            return candidates[0]
        return self._least_load(self._healthy(candidates))

    def _healthy(self, candidates: list[str]) -> list[str]:
        now = self._clock()
        healthy = [r for r in candidates if self._ejected_until.get(r, 0.0) <= now]
        return healthy or candidates

    def _least_load(self, pool: list[str]) -> str:
        self._turn += 1
        start = self._turn % len(pool)
        rotated = pool[start:] + pool[:start]
        return min(rotated, key=lambda r: self.inflight_by_replica.get(r, 0))

    def _by_prefix(
        self, replicas: Sequence[str], candidates: list[str], prefix: str, policy: Routing
    ) -> str:
        """Walk the ring from the prefix's point; take the first replica under its load bound.

        The bound is Google's "consistent hashing with bounded loads": a replica may hold at most
        ceil(loadFactor * (in-flight + 1) / replicas) requests, so a hot prefix spills over to
        the next replicas on the ring instead of piling up on one.
        """
        key = tuple(sorted(replicas))
        ring = self._rings.get(key)
        if ring is None:
            if len(self._rings) > 256:  # replica sets churn over days; keep the cache bounded
                self._rings.clear()
            ring = self._rings[key] = Ring(key)
        allowed = set(self._healthy(candidates))
        walk = ring.walk(stable_hash(prefix[: policy.prefix_char_length]))
        order = [r for r in walk if r in allowed]
        load = self.inflight_by_replica
        total = sum(load.get(r, 0) for r in replicas)
        capacity = math.ceil(policy.load_factor * (total + 1) / len(replicas))
        choice = next((r for r in order if load.get(r, 0) + 1 <= capacity), None)
        if choice is None:  # every allowed replica is at its bound (some are excluded)
            choice = self._least_load(order)
        self.decisions["PrefixHash", "true" if choice == walk[0] else "false"] += 1
        return choice

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

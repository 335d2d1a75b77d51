"""Replica choice and the in-flight counts it is based on.

Two strategies: LeastLoad (least outstanding requests, ties rotated) and PrefixHash (consistent
hashing of the prompt's prefix with bounded load, so a conversation keeps hitting the replica that
holds its KV cache). The ring is built from the replica URLs alone, with a stable hash, so every
gateway replica maps a prefix to the same engine replica without sharing any state.

A request for a LoRA adapter under PrefixHash is adapter-affine (`Affinity`): an engine holds only
a few adapters in its GPU slots, and bringing in another costs time, so each adapter has a home
replica, the same in every gateway (`homes`: rendezvous hashing of the adapter's name over the
deployment's ready replicas, at most ceil(adapters / replicas) adapters per home). A spill costs
a load on another replica and evicts one of its adapters (real vLLM holds a request for an
adapter outside its slots until one frees), so adapter requests stay home up to `ADAPTER_SLACK`
times the plain load bound. Past it they spill over first to replicas where this gateway sent
the adapter recently (where it is likely still in a slot), then to the rest, each group in the
ring order of adapter + prefix, so a conversation that spills keeps to one replica too. The
candidates are only the replicas that have loaded the adapter (`adapters.py`); LeastLoad stays
plain least-load among them.

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
from dataclasses import dataclass

from relais_api import Routing

VIRTUAL_NODES = 128
"""Points per replica on the ring: enough that shares stay within a few % of even."""

LEAST_LOAD = Routing(strategy="LeastLoad")
ADAPTER_SLACK = 2.0
"""Adapter requests may load their home up to this many times the PrefixHash load bound."""
ACTIVE_S = 30.0
"""How long after its last request an adapter counts as recently active on a replica."""
MAX_CACHED = 256
"""Rings and home tables kept (replica and adapter sets churn over days)."""


@dataclass(frozen=True, slots=True)
class Affinity:
    """What adapter-affine choice needs: the adapter, every adapter of its deployment, and the
    deployment's ready replicas (homes are spread over these, loaded or not)."""

    adapter: str
    adapters: tuple[str, ...]
    pool: tuple[str, ...]


def homes(adapters: Collection[str], replicas: Collection[str]) -> dict[str, tuple[str, ...]]:
    """Each adapter's replicas in order of preference, its home first.

    Rendezvous (highest-random-weight) order per adapter; adapters, taken by name, get the first
    replica in their order that is home to fewer than ceil(adapters / replicas) of them, so
    the homes spread evenly. A pure function of the two sets: every gateway agrees.
    """
    pool = sorted(set(replicas))
    if not pool:
        return {}
    cap = math.ceil(len(set(adapters)) / len(pool))
    count = dict.fromkeys(pool, 0)
    table: dict[str, tuple[str, ...]] = {}
    for adapter in sorted(set(adapters)):
        ranked = sorted(pool, key=lambda r: stable_hash(f"{adapter}@{r}"), reverse=True)
        home = next(r for r in ranked if count[r] < cap)
        count[home] += 1
        table[adapter] = (home, *(r for r in ranked if r != home))
    return table


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
        self._homes: dict[tuple[tuple[str, ...], tuple[str, ...]], dict[str, tuple[str, ...]]] = {}
        self._active: dict[tuple[str, str], float] = {}
        """(replica, adapter) -> when this gateway last sent it a request for the adapter."""

    def pick(
        self,
        replicas: Sequence[str],
        exclude: Collection[str] = (),
        *,
        prefix: str = "",
        policy: Routing = LEAST_LOAD,
        affinity: Affinity | None = None,
    ) -> str | None:
        """The replica to use next, or None when `replicas` (minus `exclude`) is empty.

        Ejected replicas are used only when every candidate is ejected (better a likely failure
        than a certain 503). PrefixHash with no prefix (nothing to hash) is LeastLoad, except
        for an adapter (`affinity`): that is hashed by its name.
        """
        candidates = [r for r in replicas if r not in exclude] if exclude else list(replicas)
        if not candidates:
            return None
        if policy.strategy == "PrefixHash" and affinity is not None:
            return self._by_adapter(replicas, candidates, prefix, policy, affinity)
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
        allowed = set(self._healthy(candidates))
        walk = self._ring(replicas).walk(stable_hash(prefix[: policy.prefix_char_length]))
        order = [r for r in walk if r in allowed]
        choice = self._bounded(replicas, order, policy)
        self.decisions["PrefixHash", "true" if choice == walk[0] else "false"] += 1
        return choice

    def _ring(self, replicas: Sequence[str]) -> Ring:
        key = tuple(sorted(replicas))
        ring = self._rings.get(key)
        if ring is None:
            if len(self._rings) > MAX_CACHED:
                self._rings.clear()
            ring = self._rings[key] = Ring(key)
        return ring

    def _bounded(
        self, replicas: Sequence[str], order: list[str], policy: Routing, slack: float = 1.0
    ) -> str:
        """The first of `order` under the load bound; least-load of them when all are at it."""
        load = self.inflight_by_replica
        total = sum(load.get(r, 0) for r in replicas)
        capacity = math.ceil(slack * policy.load_factor * (total + 1) / len(replicas))
        choice = next((r for r in order if load.get(r, 0) + 1 <= capacity), None)
        if choice is None:  # every allowed replica is at its bound (some are excluded)
            choice = self._least_load(order)
        return choice

    def _by_adapter(
        self,
        replicas: Sequence[str],
        candidates: list[str],
        prefix: str,
        policy: Routing,
        affinity: Affinity,
    ) -> str:
        """The adapter's home, else (past the bound) where it was recently active, else the
        rest; the last two in ring order of adapter + prefix (see the module docstring)."""
        name = affinity.adapter
        key = (tuple(sorted(affinity.adapters)), tuple(sorted(affinity.pool)))
        table = self._homes.get(key)
        if table is None:
            if len(self._homes) > MAX_CACHED:
                self._homes.clear()
            table = self._homes[key] = homes(*key)
        home = table.get(name, ())[:1]
        allowed = set(self._healthy(candidates))
        walk = self._ring(replicas).walk(
            stable_hash(f"{name}\n{prefix[: policy.prefix_char_length]}")
        )
        now = self._clock()
        recent = [r for r in walk if now - self._active.get((r, name), -ACTIVE_S) < ACTIVE_S]
        order = [r for r in (*home, *recent, *walk) if r in allowed]
        choice = self._bounded(replicas, list(dict.fromkeys(order)), policy, ADAPTER_SLACK)
        first = home[0] if home and home[0] in replicas else walk[0]
        self.decisions["PrefixHash", "true" if choice == first else "false"] += 1
        self._note_active(choice, name, now)
        return choice

    def _note_active(self, replica: str, adapter: str, now: float) -> None:
        if len(self._active) > 4096:  # bounded: forget what is no longer recent
            self._active = {k: t for k, t in self._active.items() if now - t < ACTIVE_S}
        self._active[replica, adapter] = now

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

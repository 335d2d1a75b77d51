"""The adapter-agents' reports: one loop for the whole operator, started by the handlers.

Every `adapter_poll_interval_s` seconds it reads `GET http://<podIP>:<agent port>/adapters`
of each ready pod that runs an adapter-agent (vLLM with spec.lora), all at once and with a short
timeout, keeps the answers in `reports` (a pod that does not answer is left out this round,
never an error), then re-publishes the status of every LLMDeployment with adapters through the
handlers' one status writer (it writes only what changed). The re-publish also keeps name
clashes current: another resource's served name may have changed since.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping, Sequence
from typing import Any

import aiohttp

from relais_operator import resources, status
from relais_operator.settings import OperatorSettings
from relais_operator.spec import InvalidSpecError, LLMDeployment

log = logging.getLogger(__name__)

Key = tuple[str, str]
Publish = Callable[[Key], Awaitable[None]]
Reports = MutableMapping[Key, dict[str, list[status.AgentReport]]]


async def read_agent(session: aiohttp.ClientSession, url: str) -> list[status.AgentReport] | None:
    """One agent's report, or None when it does not answer (or answers nonsense)."""
    try:
        async with session.get(url) as resp:
            if resp.status != 200:
                return None
            return status.parse_reports(await resp.json(content_type=None))
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        log.debug("adapter-agent %s did not answer: %r", url, exc)
        return None


async def read_pods(
    session: aiohttp.ClientSession, pods: Sequence[status.PodState]
) -> dict[str, list[status.AgentReport]]:
    """The reports of the pods' agents that answered, by pod name."""
    targets = [(pod.name, pod.agent_url) for pod in pods if pod.agent_url]
    answers = await asyncio.gather(*(read_agent(session, url) for _, url in targets if url))
    return {
        name: found for (name, _), found in zip(targets, answers, strict=True) if found is not None
    }


def with_adapters(bodies: Iterable[Mapping[str, Any]]) -> list[tuple[Key, LLMDeployment]]:
    """The valid, live resources that declare adapters."""
    found = []
    for body in bodies:
        meta = body.get("metadata") or {}
        if not (body.get("spec") or {}).get("adapters") or meta.get("deletionTimestamp"):
            continue
        try:
            llm = LLMDeployment.from_body(body)
        except InvalidSpecError:
            continue
        found.append(((llm.namespace, llm.name), llm))
    return found


async def tick(
    session: aiohttp.ClientSession,
    indexes: Mapping[str, Any],
    reports: Reports,
    publish: Publish,
) -> None:
    """One round: read the agents, forget what is gone, publish every resource with adapters."""
    index = indexes["llmdeployments"]
    current = with_adapters(body for store in list(index.values()) for body in list(store))
    for key in set(reports) - {key for key, _ in current}:
        reports.pop(key, None)
    for key, llm in current:
        if resources.runtime_adapters(llm):
            pods = list(indexes["pods"].get(key, []))
            reports[key] = await read_pods(session, pods)
        try:
            await publish(key)
        except Exception:  # one resource's failed write must not stop the others' status
            log.exception("adapters: cannot publish the status of %s/%s", *key)


async def run(
    settings: OperatorSettings, indexes: Mapping[str, Any], reports: Reports, publish: Publish
) -> None:
    timeout = aiohttp.ClientTimeout(total=settings.adapter_poll_timeout_s)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while True:
            try:
                await tick(session, indexes, reports, publish)
            except Exception:
                log.exception("adapters: a round failed; trying again next interval")
            await asyncio.sleep(settings.adapter_poll_interval_s)


def start(
    settings: OperatorSettings, indexes: Mapping[str, Any], reports: Reports, publish: Publish
) -> asyncio.Task[None]:
    return asyncio.create_task(run(settings, indexes, reports, publish), name="adapter-poll")

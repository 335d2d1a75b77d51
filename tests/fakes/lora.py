"""LoRA adapters in the fake vLLM: run-time loading, `/v1/models` cards and the GPU slot model.

Real vLLM 0.32 (recorded in tests/data/vllm/lora_*.json by hack/record-vllm.py) answers
`POST /v1/load_lora_adapter {"lora_name", "lora_path"}` with 200 and bare text (no content
type); 400 `InvalidUserInput` for a name already loaded or a base model's name; 400 `Bad Request`
for a field left out; 404 `NotFoundError` for a path with no adapter (the message names the path
unless vLLM's sanitizer hides it: paths under /tmp, /home, /var... become `<path>`).
`POST /v1/unload_lora_adapter {"lora_name"}`: 200 and bare text, or 404 for a name it does not
hold. Loaded adapters are listed by `/v1/models` (`id` the name, `root` the path, `parent` the
base's served name) and served as models; an unloaded name is the usual 404.

The slot model (what the routing benchmark measures): `max_loras` adapters fit in the GPU slots
(vLLM's `--max-loras`, default 1). A request naming an adapter outside them waits `lora_load_ms`
before its first token while the adapter is brought in, evicting the least recently used one;
loading through the API brings the adapter into a slot too, as vLLM's `add_lora` does. Each
bringing-in counts one in `loads` (`GET /relais-fake/lora`: `{"loads", "active", "adapters"}`).
A slot busy with a running request may be evicted here (vLLM would make the request wait): the
count is the same, the timing slightly kinder. `lora_modules` are adapters present at start
(vLLM's `--lora-modules name=path`), not yet in a slot.
"""

from __future__ import annotations

import asyncio
import collections
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from tests.fakes.core import STATE, BadRequest, Json, read_json, sleep_ms

# vLLM names the error classes in `type`; these two come from its LoRA routes.
INVALID = "InvalidUserInput"


@dataclass(frozen=True)
class LoraOptions:
    """How the fake vLLM was started: `--max-loras`, the load cost, `--lora-modules`."""

    max_loras: int = 1
    lora_load_ms: float = 0.0
    lora_modules: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.max_loras < 1:
            raise ValueError("max_loras must be at least 1")
        if self.lora_load_ms < 0:
            raise ValueError("lora_load_ms must not be negative")


def parse_modules(entries: Sequence[str]) -> dict[str, str]:
    """`["name=path", ...]` (vLLM's `--lora-modules` form) as a name -> path dict."""
    modules = {}
    for entry in entries:
        name, sep, path = entry.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--lora-modules expects name=path, got {entry!r}")
        modules[name] = path
    return modules


class LoraState:
    """The adapters a fake vLLM holds (name -> path) and which of them sit in GPU slots."""

    def __init__(self, options: LoraOptions) -> None:
        self.options = options
        self.adapters: dict[str, str] = dict(options.lora_modules)
        self.slots: collections.OrderedDict[str, None] = collections.OrderedDict()  # LRU first
        self.loads = 0
        self._bringing: dict[str, asyncio.Future[None]] = {}

    def reset(self) -> None:
        """Back to the adapters of the start, no slot used, no load counted."""
        self.adapters = dict(self.options.lora_modules)
        self.slots.clear()
        self.loads = 0

    async def activate(self, name: str) -> None:
        """Make `name` the most recently used slot, bringing it in first if needed (one load,
        `lora_load_ms`, shared by concurrent requests for the same adapter)."""
        if name in self.slots:
            self.slots.move_to_end(name)
            return
        pending = self._bringing.get(name)
        if pending is not None:
            await asyncio.shield(pending)
            return
        pending = asyncio.get_running_loop().create_future()
        self._bringing[name] = pending
        try:
            await sleep_ms(self.options.lora_load_ms)
            while len(self.slots) >= self.options.max_loras:
                self.slots.popitem(last=False)
            self.slots[name] = None
            self.loads += 1
        finally:
            del self._bringing[name]
            pending.set_result(None)

    def summary(self) -> dict[str, Json]:
        return {"loads": self.loads, "active": list(self.slots), "adapters": dict(self.adapters)}


LORA = web.AppKey("fake_lora", LoraState)


def lora_state(app: web.Application) -> LoraState:
    """The LoRA state of an in-process fake vLLM app (`loads`, `slots`, `adapters`)."""
    return app[LORA]


def adapters_of(app: web.Application) -> dict[str, str]:
    """The adapters an app holds; none for an app built without `mount` (only the routes of
    `vllm.FLAVOR`, as some gateway tests build it)."""
    state = app.get(LORA)
    return state.adapters if state is not None else {}


def has_adapter(path: str) -> bool:
    """What vLLM checks first: a PEFT adapter config at the path."""
    return (Path(path) / "adapter_config.json").is_file()


# vLLM's `sanitize_message`: error messages lose paths under these roots and file names.
_ROOTED_PATH = re.compile(r"/(?:home|usr|opt|var|tmp|root|lib|mnt|srv)(?:/[\w.\-]+)+")
_FILE_PATH = re.compile(r"(?:/[\w\-]+)+/[\w\-]+\.\w+")


def sanitize_message(message: str) -> str:
    """What vLLM does to every error message: `/tmp/x/y` becomes `<path>`, `/data/x` stays."""
    return _FILE_PATH.sub("<path>", _ROOTED_PATH.sub("<path>", message)).strip()


def _error(status: int, kind: str, message: str, param: str | None = None) -> web.Response:
    error = {"message": sanitize_message(message), "type": kind, "param": param, "code": status}
    return web.json_response({"error": error}, status=status)


def _missing_fields(body: dict[str, Json], fields: Sequence[str]) -> web.Response | None:
    """FastAPI's validation error, as vLLM renders it, for required fields left out."""
    missing = [name for name in fields if name not in body]
    if not missing:
        return None
    count = f"{len(missing)} validation error{'s' if len(missing) > 1 else ''}:"
    items = f"<dict of {len(body)} items>"
    lines = [
        f"  {{'type': 'missing', 'loc': 'body.{name}', 'msg': 'Field required', "
        f"'input': '{items}'}}"
        for name in missing
    ]
    return _error(400, "Bad Request", "\n".join([count, *lines]), f"body.{missing[0]}")


async def load_adapter(request: web.Request, base_models: list[str]) -> web.Response:
    """`POST /v1/load_lora_adapter`, with real vLLM's checks in its order."""
    state = request.app[LORA]
    try:
        body = await read_json(request)
    except BadRequest as exc:
        return _error(400, "BadRequestError", exc.message)
    refused = _missing_fields(body, ("lora_name", "lora_path"))
    if refused is not None:
        return refused
    name, path = body.get("lora_name"), body.get("lora_path")
    if not isinstance(name, str) or not isinstance(path, str) or not name or not path:
        return _error(400, INVALID, "Both 'lora_name' and 'lora_path' must be provided.")
    if name in base_models:
        return _error(
            400, INVALID, f"The lora adapter '{name}' conflicts with a served base model."
        )
    if name in state.adapters and not body.get("load_inplace"):
        return _error(
            400,
            INVALID,
            f"The lora adapter '{name}' has already been loaded. If you want to load the adapter"
            " in place, set 'load_inplace' to True.",
        )
    if not has_adapter(path):
        return _error(
            404, "NotFoundError", f"Loading lora {name} failed: No adapter found for {path}"
        )
    state.slots.pop(name, None)  # new weights: brought into a slot again
    await state.activate(name)
    state.adapters[name] = path
    return _text(f"Success: LoRA adapter '{name}' added successfully.")


async def unload_adapter(request: web.Request) -> web.Response:
    """`POST /v1/unload_lora_adapter`: forget the adapter (404 when not held)."""
    state = request.app[LORA]
    try:
        body = await read_json(request)
    except BadRequest as exc:
        return _error(400, "BadRequestError", exc.message)
    refused = _missing_fields(body, ("lora_name",))
    if refused is not None:
        return refused
    name = body.get("lora_name")
    if not isinstance(name, str) or not name:
        return _error(400, INVALID, "'lora_name' needs to be provided to unload a LoRA adapter.")
    if name not in state.adapters:
        return _error(404, "NotFoundError", f"The lora adapter '{name}' cannot be found.")
    del state.adapters[name]
    state.slots.pop(name, None)
    return _text(f"Success: LoRA adapter '{name}' removed successfully.")


def _text(message: str) -> web.Response:
    """vLLM's LoRA routes answer 200 with bare text and no content type."""
    response = web.Response(status=200, body=message.encode())
    response.headers.pop("Content-Type", None)
    return response


async def summary(request: web.Request) -> web.Response:
    return web.json_response(request.app[LORA].summary())


def mount(
    app: web.Application,
    options: LoraOptions,
    base_models: Callable[[web.Request], list[str]],
) -> None:
    """Add the LoRA state and routes to a fake vLLM app; `/_fake/reset` resets them too."""
    state = LoraState(options)
    app[LORA] = state
    app[STATE].on_reset.append(state.reset)

    async def load(request: web.Request) -> web.Response:
        return await load_adapter(request, base_models(request))

    app.router.add_post("/v1/load_lora_adapter", load)
    app.router.add_post("/v1/unload_lora_adapter", unload_adapter)
    app.router.add_get("/relais-fake/lora", summary)
    app.router.add_get("/_fake/lora", summary)

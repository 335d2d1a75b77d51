"""The engine table: everything engine-specific, in one place, read by the pure builders.

Adding an engine means adding one `Engine` here, its name to the CRD enum and to the
`engine` literal in `relais_api`; the builders in `resources.py` never branch on an engine's name.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from relais_operator.parsers import parser_args

if TYPE_CHECKING:
    from relais_api import Adapter, LLMDeploymentSpec

# Inside the container, /tmp is an emptyDir the builders mount (not the host's temp dir).
TMP = "/tmp"  # noqa: S108
OLLAMA_IMAGE = "docker.io/ollama/ollama:0.6.8"
TGI_IMAGE = "ghcr.io/huggingface/text-generation-inference:3.3.4"
VLLM_IMAGE = "docker.io/vllm/vllm-openai:v0.18.0"


@dataclass(frozen=True)
class Engine:
    """One serving engine: its image, where it listens and caches, and how it fetches a model."""

    name: str
    image: str
    port: int
    health_path: str
    cache_path: str
    # Environment of both the fetch step and the server: points the engine at the cache volume.
    cache_env: Mapping[str, str]
    # Environment of the server only (the fetch step needs the network, the server must not).
    serve_env: Mapping[str, str]
    command: tuple[str, ...]
    args: Callable[[LLMDeploymentSpec], list[str]]
    fetch_command: Callable[[LLMDeploymentSpec], list[str]]
    # Flags the operator sets itself; a spec whose `args` sets them is rejected as InvalidSpec.
    managed_flags: frozenset[str] = field(default_factory=frozenset)
    # Environment of the server only when it reads a shared cache mounted read-only.
    read_only_cache_env: Mapping[str, str] = field(default_factory=dict)
    needs_shm: bool = False
    # A file the server's start path creates once the model is loaded: the startup probe waits
    # for it (engines that load the model lazily); None: the startup probe is the health check.
    ready_file: str | None = None
    # Whether the engine writes only to its volumes (/tmp, the cache), so the root fs can be RO.
    read_only_root: bool = True
    # Whether the server serves Prometheus metrics at /metrics on its port (its pods get the
    # scrape label resources.METRICS_LABEL).
    serves_metrics: bool = False
    # LoRA adapters. Run time (vLLM): the adapter-agent sidecar loads them from a ConfigMap, and
    # the pod template never depends on them. Start (Ollama, TGI): `start_adapter_env` hands
    # them to the server's start path, so a change rolls the replicas.
    runtime_adapters: bool = False
    start_adapter_env: Callable[[LLMDeploymentSpec], dict[str, str]] | None = None
    # Server environment that `spec.lora` turns on (runtime adapters).
    lora_env: Mapping[str, str] = field(default_factory=dict)
    # The fetch step that downloads hf:// adapters too (RELAIS_ADAPTERS JSON in a pod's fetch
    # step, RELAIS_MODEL/RELAIS_REVISION/RELAIS_LINK in an adapter's download Job); () = none.
    adapter_fetch_command: tuple[str, ...] = ()
    # Whether the server itself reads the adapters' files at start (TGI: LORA_ADAPTERS), so on a
    # shared cache the replicas wait for the adapters' download Jobs.
    adapters_at_start_need_files: bool = False
    # Environment variables the operator owns on the server besides the cache and serve env.
    managed_env: frozenset[str] = field(default_factory=frozenset)


ADAPTER_LINKS = "relais-adapters"


def adapter_digest(adapter: Adapter) -> str:
    """8 hex of sha256(source@revision): names an hf:// adapter's download Job and its link."""
    key = f"{adapter.source}@{adapter.revision or 'main'}"
    return hashlib.sha256(key.encode()).hexdigest()[:8]


def adapter_link(engine: Engine, adapter: Adapter) -> str:
    """Where the fetch step links an hf:// adapter's snapshot dir: a path known before download."""
    return f"{engine.cache_path}/{ADAPTER_LINKS}/{adapter_digest(adapter)}"


def adapter_path(engine: Engine, adapter: Adapter) -> str:
    """The adapter's directory as the server sees it (a cache path, or an hf:// adapter's link)."""
    if adapter.cache_path is not None:
        return f"{engine.cache_path}/{adapter.cache_path}"
    return adapter_link(engine, adapter)


def hf_adapters_env(engine: Engine, spec: LLMDeploymentSpec) -> str:
    """RELAIS_ADAPTERS for the fetch step: the hf:// adapters to download and link, as JSON."""
    wanted = [
        {"repo": a.hf_repo, "revision": a.revision or "main", "link": adapter_link(engine, a)}
        for a in spec.adapters
        if a.hf_repo is not None
    ]
    return json.dumps(wanted) if wanted else ""


# --- Ollama ---------------------------------------------------------------------------------


def ollama_manifest_path(model: str) -> str:
    """Where `ollama pull MODEL` leaves its manifest, relative to OLLAMA_MODELS.

    `qwen2.5:7b-instruct` -> manifests/registry.ollama.ai/library/qwen2.5/7b-instruct;
    `user/m` -> .../registry.ollama.ai/user/m/latest; `hf.co/org/repo:q4` -> .../hf.co/org/repo/q4.
    """
    head, _, last = model.rpartition("/")
    last, _, tag = last.partition(":")
    name = f"{head}/{last}" if head else last
    parts = name.split("/")
    if len(parts) == 1:
        parts = ["registry.ollama.ai", "library", *parts]
    elif len(parts) == 2:
        parts = ["registry.ollama.ai", *parts]
    return "/".join(["manifests", *parts, tag or "latest"])


def _ollama_fetch(spec: LLMDeploymentSpec) -> list[str]:
    manifest = shlex.quote(f"{OLLAMA.cache_path}/{ollama_manifest_path(spec.model)}")
    model = shlex.quote(spec.model)
    script = f"""set -eu
if [ -f {manifest} ]; then echo "relais: {model} is already cached"; exit 0; fi
/bin/ollama serve &
server=$!
tries=0
until /bin/ollama list >/dev/null 2>&1; do
  tries=$((tries + 1)); [ "$tries" -le 120 ] || {{ echo "relais: ollama did not start"; exit 1; }}
  sleep 1
done
/bin/ollama pull {model}
kill "$server"; wait "$server" || true
"""
    return ["/bin/sh", "-c", script]


# Ollama loads a model on its first request, so an answering server is not a ready replica: this
# start path serves, loads the model (`ollama run MODEL ""` sends an empty generate request, which
# only loads it; OLLAMA_KEEP_ALIVE=-1 keeps it loaded), then marks the replica ready. A failed load
# never marks it: the container stops with an error (the kubelet restarts it, with back-off).
# Models without the completion capability (embedding models) cannot be loaded that way from the
# CLI: they are marked ready at once and load on their first request. SIGTERM goes to the server.
OLLAMA_READY_FILE = f"{TMP}/relais-model-loaded"
_OLLAMA_SERVE = f"""set -u
model=$1; shift
ready={OLLAMA_READY_FILE}
failed={OLLAMA_READY_FILE}.failed
rm -f "$ready" "$failed"
/bin/ollama serve "$@" &
server=$!
trap 'kill -TERM "$server" 2>/dev/null' TERM INT
warm_up() {{
  until /bin/ollama list >/dev/null 2>&1; do sleep 1; done
  if ! info=$(/bin/ollama show "$model"); then
    echo "relais: $model is not in the cache" >&2; return 1
  fi
  if ! printf '%s\\n' "$info" | grep -Eq '^[[:space:]]+completion[[:space:]]*$'; then
    echo "relais: $model has no completion capability; it loads on its first request"
  elif /bin/ollama run "$model" "" </dev/null >/dev/null; then
    echo "relais: $model is loaded"
  else
    echo "relais: loading $model failed" >&2; return 1
  fi
  create_adapters
  touch "$ready"
}}
# RELAIS_ADAPTERS: one `name<TAB>path` per line. Each adapter becomes a derived model; one that
# fails is logged and the replica serves the base model without it.
create_adapters() {{
  [ -n "${{RELAIS_ADAPTERS:-}}" ] || return 0
  tab=$(printf '\\t')
  printf '%s\\n' "$RELAIS_ADAPTERS" | while IFS="$tab" read -r name path; do
    [ -n "$name" ] || continue
    file="{TMP}/relais-adapter-$name.Modelfile"
    printf 'FROM %s\\nADAPTER %s\\n' "$model" "$path" >"$file"
    if /bin/ollama create "$name" -f "$file" </dev/null >/dev/null; then
      echo "relais: adapter $name is ready"
    else
      echo "relais: adapter $name: ollama create failed; serving $model without it" >&2
    fi
    rm -f "$file"
  done
}}
(warm_up || {{ touch "$failed"; echo "relais: not ready; stopping" >&2; kill -TERM "$server"; }}) &
warmup=$!
while :; do
  wait "$server"; code=$?
  kill -0 "$server" 2>/dev/null || break
done
kill "$warmup" 2>/dev/null
[ ! -f "$failed" ] || exit 1
exit "$code"
"""


def _ollama_adapters(spec: LLMDeploymentSpec) -> dict[str, str]:
    lines = [f"{a.name}\t{adapter_path(OLLAMA, a)}" for a in spec.adapters]
    return {"RELAIS_ADAPTERS": "\n".join(lines)} if lines else {}


OLLAMA = Engine(
    name="ollama",
    image=OLLAMA_IMAGE,
    port=11434,
    health_path="/api/version",
    cache_path="/models",
    cache_env={"OLLAMA_MODELS": "/models", "HOME": TMP},
    serve_env={"OLLAMA_HOST": "0.0.0.0:11434", "OLLAMA_KEEP_ALIVE": "-1"},
    command=("/bin/sh", "-c", _OLLAMA_SERVE, "relais-ollama-serve"),
    # The script's arguments: the model, then spec.args for `ollama serve`.
    args=lambda spec: [spec.model, *spec.args],
    fetch_command=_ollama_fetch,
    managed_flags=frozenset(),
    # At start Ollama deletes blobs no manifest uses: never on a cache it may only read.
    read_only_cache_env={"OLLAMA_NOPRUNE": "1"},
    ready_file=OLLAMA_READY_FILE,
    start_adapter_env=_ollama_adapters,
    managed_env=frozenset({"RELAIS_ADAPTERS"}),
)


# --- Text Generation Inference ----------------------------------------------------------------

# Runs inside the TGI and vLLM images (python and huggingface_hub ship with both). A snapshot
# already in the cache is found offline (local_files_only) and nothing is downloaded.
_HF_FETCH = """
import os, sys
from huggingface_hub import snapshot_download
from huggingface_hub.errors import LocalEntryNotFoundError
repo, rev = os.environ["RELAIS_MODEL"], os.environ.get("RELAIS_REVISION", "main")
try:
    path = snapshot_download(repo, revision=rev, local_files_only=True)
    print(f"relais: {repo}@{rev} is already cached in {path}")
    sys.exit(0)
except LocalEntryNotFoundError:
    pass
ignore = ["*.pth", "original/*", "*.gguf", "*.onnx", "*.msgpack", "*.h5", "*.ot"]
path = snapshot_download(repo, revision=rev, ignore_patterns=ignore)
print(f"relais: downloaded {repo}@{rev} into {path}")
"""


# The fetch step with adapters (and an adapter's download Job): the model (RELAIS_MODEL, optional)
# and each hf:// adapter (RELAIS_ADAPTERS), each linked at a path the server is given up front:
# a relative symlink to the snapshot dir, so it resolves wherever the cache is mounted.
_HF_FETCH_ADAPTERS = """
import json, os
from huggingface_hub import snapshot_download
from huggingface_hub.errors import LocalEntryNotFoundError
IGNORE = ["*.pth", "original/*", "*.gguf", "*.onnx", "*.msgpack", "*.h5", "*.ot"]
def fetch(repo, rev):
    try:
        path = snapshot_download(repo, revision=rev, local_files_only=True)
        print(f"relais: {repo}@{rev} is already cached in {path}")
    except LocalEntryNotFoundError:
        path = snapshot_download(repo, revision=rev, ignore_patterns=IGNORE)
        print(f"relais: downloaded {repo}@{rev} into {path}")
    return path
def link(path, at):
    os.makedirs(os.path.dirname(at), exist_ok=True)
    tmp = at + ".tmp"
    if os.path.lexists(tmp):
        os.remove(tmp)
    os.symlink(os.path.relpath(path, os.path.dirname(at)), tmp)
    os.replace(tmp, at)
model = os.environ.get("RELAIS_MODEL")
if model:
    path = fetch(model, os.environ.get("RELAIS_REVISION", "main"))
    if os.environ.get("RELAIS_LINK"):
        link(path, os.environ["RELAIS_LINK"])
for adapter in json.loads(os.environ.get("RELAIS_ADAPTERS") or "[]"):
    link(fetch(adapter["repo"], adapter["revision"]), adapter["link"])
"""


def _tgi_adapters(spec: LLMDeploymentSpec) -> dict[str, str]:
    # TGI's `id=path` form: the adapter is called `id`, read from the local dir `path`.
    pairs = [f"{a.name}={adapter_path(TGI, a)}" for a in spec.adapters]
    return {"LORA_ADAPTERS": ",".join(pairs)} if pairs else {}


def _tgi_args(spec: LLMDeploymentSpec) -> list[str]:
    args = ["--model-id", spec.model, "--revision", spec.revision or "main"]
    args += ["--hostname", "0.0.0.0", "--port", str(TGI.port)]
    if spec.gpu.count > 1:
        args += ["--num-shard", str(spec.gpu.count)]
    if spec.request_limits.max_concurrent_requests is not None:
        args += ["--max-concurrent-requests", str(spec.request_limits.max_concurrent_requests)]
    return [*args, *spec.args]


def hf_fetch(python: str) -> Callable[[LLMDeploymentSpec], list[str]]:
    """The Hugging Face fetch step, run by the image's own `python` (TGI and vLLM ship one)."""

    def command(spec: LLMDeploymentSpec) -> list[str]:
        del spec  # the model and revision come in through the environment (RELAIS_MODEL/REVISION)
        return [python, "-c", _HF_FETCH]

    return command


TGI = Engine(
    name="tgi",
    image=TGI_IMAGE,
    port=8080,
    health_path="/health",
    cache_path="/data",
    cache_env={"HF_HOME": "/data", "HF_HUB_CACHE": "/data/hub", "HOME": TMP},
    # The server never goes to the network: the weights come from the fetch step's cache.
    serve_env={"HF_HUB_OFFLINE": "1"},
    command=("text-generation-launcher",),
    args=_tgi_args,
    fetch_command=hf_fetch("python"),
    managed_flags=frozenset(
        {"--model-id", "--revision", "--hostname", "--port", "--num-shard", "--sharded"}
    ),
    needs_shm=True,
    # torch/triton write caches in unpredictable places; a RO root would break kernels at load.
    read_only_root=False,
    serves_metrics=True,
    start_adapter_env=_tgi_adapters,
    adapter_fetch_command=("python", "-c", _HF_FETCH_ADAPTERS),
    adapters_at_start_need_files=True,
    managed_env=frozenset({"LORA_ADAPTERS"}),
)


# --- vLLM -------------------------------------------------------------------------------------


def _vllm_args(spec: LLMDeploymentSpec) -> list[str]:
    # `vllm serve MODEL`: the repo id, found offline in the HF cache the fetch step filled.
    args = [spec.model, "--revision", spec.revision or "main"]
    args += ["--served-model-name", spec.effective_served_model_name]
    args += ["--host", "0.0.0.0", "--port", str(VLLM.port)]
    if spec.gpu.count > 1:
        args += ["--tensor-parallel-size", str(spec.gpu.count)]
    if spec.request_limits.max_concurrent_requests is not None:
        args += ["--max-num-seqs", str(spec.request_limits.max_concurrent_requests)]
    # Tool calls and reasoning work out of the box: the parsers come from the model family.
    args += parser_args(spec)
    if spec.lora is not None:  # the adapters themselves come at run time (adapter-agent)
        args += ["--enable-lora", "--max-loras", str(spec.lora.max_adapters)]
        args += ["--max-lora-rank", str(spec.lora.max_rank)]
    return [*args, *spec.args]


VLLM = Engine(
    name="vllm",
    image=VLLM_IMAGE,
    port=8000,
    health_path="/health",
    cache_path="/data",
    cache_env={"HF_HOME": "/data", "HF_HUB_CACHE": "/data/hub", "HOME": TMP},
    # Offline: the weights come from the cache; no usage report leaves the pod either.
    serve_env={"HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"},
    # The image's ENTRYPOINT, spelled out so the pod spec says what runs.
    command=("vllm", "serve"),
    args=_vllm_args,
    fetch_command=hf_fetch("python3"),
    managed_flags=frozenset(
        {
            "--model",
            "--revision",
            "--served-model-name",
            "--host",
            "--port",
            "--tensor-parallel-size",
            "-tp",
            "--max-num-seqs",
            "--enable-auto-tool-choice",
            "--tool-call-parser",
            "--reasoning-parser",
            "--enable-lora",
            "--max-loras",
            "--max-lora-rank",
        }
    ),
    needs_shm=True,
    # torch.compile, triton and CUDA graphs write caches at load: a RO root would break them.
    read_only_root=False,
    serves_metrics=True,
    runtime_adapters=True,
    lora_env={"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"},
    adapter_fetch_command=("python3", "-c", _HF_FETCH_ADAPTERS),
    managed_env=frozenset({"VLLM_ALLOW_RUNTIME_LORA_UPDATING"}),
)

ENGINES: dict[str, Engine] = {engine.name: engine for engine in (OLLAMA, TGI, VLLM)}

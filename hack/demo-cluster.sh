#!/usr/bin/env bash
# `make demo` on a cluster (hack/demo.sh runs this when the current kube context answers):
# helm install the chart (it generates an API key), apply an example, wait for Ready, then send a
# chat, a streamed chat and an Ollama-dialect request through the gateway.
# Env: NAMESPACE (relais-system), EXAMPLE (manifests/examples/tiny-cpu-kind.yaml),
#      RELAIS_OPERATOR_IMAGE / RELAIS_GATEWAY_IMAGE (repository:tag; default: the chart's),
#      HELM_EXTRA_ARGS (e.g. "-f deploy/gke/values-gke.yaml").
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"

NAMESPACE=${NAMESPACE:-relais-system}
EXAMPLE=${EXAMPLE:-manifests/examples/tiny-cpu-kind.yaml}
step() { printf '\n== %s\n' "$*"; }

kubectl version --request-timeout=10s >/dev/null 2>&1 \
  || { echo "demo-cluster: no reachable cluster in the current kube context" >&2; exit 2; }
echo "cluster: $(kubectl config current-context)"

model_name=$(python - "$EXAMPLE" <<'PY'
import sys, yaml
print(yaml.safe_load(open(sys.argv[1]))["metadata"]["name"])
PY
)
model_ns=$(python - "$EXAMPLE" <<'PY'
import sys, yaml
print(yaml.safe_load(open(sys.argv[1]))["metadata"].get("namespace", "default"))
PY
)

step "helm upgrade --install relais charts/relais (namespace $NAMESPACE)"
image_args=()
for component in operator gateway; do
  var="RELAIS_${component^^}_IMAGE"
  if [ -n "${!var:-}" ]; then
    image_args+=(--set "$component.image.repository=${!var%:*}" --set "$component.image.tag=${!var##*:}")
  fi
done
# shellcheck disable=SC2086  # HELM_EXTRA_ARGS is a list of words by design
helm upgrade --install relais charts/relais --namespace "$NAMESPACE" --create-namespace \
  --set "networkPolicy.modelNamespaces={$model_ns}" "${image_args[@]}" ${HELM_EXTRA_ARGS:-} \
  --wait --timeout 10m

# With no auth values the chart generated one key at first install (kept across upgrades); with
# auth.existingSecret (values-gke.yaml) the key is in that Secret: read the first key the gateway
# mounts, either way.
SECRET=$(kubectl -n "$NAMESPACE" get deploy/relais-gateway \
  -o jsonpath='{.spec.template.spec.volumes[?(@.name=="auth")].secret.secretName}')
key=$(kubectl -n "$NAMESPACE" get secret "$SECRET" -o jsonpath='{.data.auth\.yaml}' | base64 -d \
  | python -c 'import sys, yaml; print(yaml.safe_load(sys.stdin)["keys"][0]["key"])')

step "kubectl apply -f $EXAMPLE; waiting for Ready (the first start pulls the engine and the model)"
kubectl apply -f "$EXAMPLE"
deadline=$((SECONDS + 1800))
until kubectl -n "$model_ns" wait "llmd/$model_name" --for=condition=Ready --timeout=15s >/dev/null 2>&1; do
  kubectl -n "$model_ns" get "llmd/$model_name" --no-headers 2>/dev/null | sed 's/^/   /' || true
  if [ $SECONDS -gt $deadline ]; then
    kubectl -n "$model_ns" describe "llmd/$model_name" >&2
    echo "demo-cluster: $model_name not Ready after 30 min (see the conditions above)" >&2
    exit 1
  fi
done
kubectl -n "$model_ns" get "llmd/$model_name"

step "requests through the gateway (kubectl port-forward svc/relais-gateway)"
port=$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
kubectl -n "$NAMESPACE" port-forward svc/relais-gateway "$port:80" >/dev/null &
forward=$!
trap 'kill $forward 2>/dev/null || true' EXIT
for _ in $(seq 1 30); do
  python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/healthz', timeout=2)" 2>/dev/null && break
  sleep 1
done
served=$(kubectl -n "$model_ns" get "llmd/$model_name" -o jsonpath='{.status.servedModelName}')
RELAIS_URL="http://127.0.0.1:$port" RELAIS_KEY="$key" RELAIS_MODEL="$served" python - <<'PY'
import os

import ollama
import openai

url, key, model = os.environ["RELAIS_URL"], os.environ["RELAIS_KEY"], os.environ["RELAIS_MODEL"]
client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, timeout=300)
messages = [{"role": "user", "content": "Name three French rivers."}]
print("models:", [m.id for m in client.models.list().data])
answer = client.chat.completions.create(model=model, messages=messages, max_tokens=64)
print("chat:", answer.choices[0].message.content)
print("stream:", end=" ", flush=True)
for chunk in client.chat.completions.create(model=model, messages=messages, max_tokens=64, stream=True):
    if chunk.choices:
        print(chunk.choices[0].delta.content or "", end="", flush=True)
print()
reply = ollama.Client(host=url, headers={"Authorization": f"Bearer {key}"}).chat(model=model, messages=messages)
print("ollama dialect:", reply.message.content)
PY
echo
echo "Gateway: kubectl -n $NAMESPACE port-forward svc/relais-gateway 8000:80  (API key in Secret $SECRET)"

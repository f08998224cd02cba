"""Rules the rendered Kubernetes manifests keep (run by deploy/check.sh on each kustomization).

Reads the rendered YAML on stdin; prints one line per broken rule and exits 1 if any.
"""
import sys

import yaml

where = sys.argv[1] if len(sys.argv) > 1 else "manifests"
docs = [d for d in yaml.safe_load_all(sys.stdin) if d]
problems = []
by_kind = {}
for d in docs:
    by_kind.setdefault(d["kind"], []).append(d)

scaled = {s["spec"]["scaleTargetRef"]["name"] for s in by_kind.get("ScaledObject", [])}
for s in by_kind.get("ScaledObject", []):
    for t in s["spec"]["triggers"]:
        if t["type"] == "kafka" and "bootstrapServers" in t["metadata"]:
            problems.append(f"ScaledObject {s['metadata']['name']}: use bootstrapServersFromEnv")

for d in by_kind.get("Deployment", []) + by_kind.get("Job", []):
    name = f"{d['kind']} {d['metadata']['name']}"
    pod = d["spec"]["template"]["spec"]
    if pod.get("securityContext", {}).get("seccompProfile", {}).get("type") != "RuntimeDefault":
        problems.append(f"{name}: no seccompProfile RuntimeDefault")
    for c in pod["containers"]:
        if c.get("command", [None])[0] != "lookout":
            problems.append(f"{name}: runs {c.get('command')}, not the lookout binary")
        secrets = {e["secretRef"]["name"] for e in c.get("envFrom", []) if "secretRef" in e}
        wants_db = c.get("command", [])[1:2] == ["recorder"]
        if ("lookout-database" in secrets) != wants_db:
            problems.append(f"{name}: only the recorder gets the lookout-database Secret")
    if d["kind"] == "Job" and "ttlSecondsAfterFinished" not in d["spec"]:
        problems.append(f"{name}: no ttlSecondsAfterFinished")
    if d["kind"] == "Deployment" and d["metadata"]["name"] in scaled and "replicas" in d["spec"]:
        problems.append(f"{name}: scaled by KEDA, so it must not fix replicas")
    if d["metadata"]["name"] == "lookout-camera" and d["spec"].get("strategy", {}).get("type") != "Recreate":
        problems.append(f"{name}: a camera is rolled with strategy Recreate")

for p in problems:
    print(f"{where}: {p}")
if problems:
    sys.exit(1)
print(f"  {len(docs)} resources render and keep the rules")

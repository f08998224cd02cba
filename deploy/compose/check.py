"""Checks the compose add-ons against the code (run by deploy/check.sh):

- every `lookout_*` metric the Grafana dashboard queries is one the services export (a
  constant in a crate's metrics.rs);
- Kafka UI maps every registry topic to a message type that proto/ defines.
"""
import json
import pathlib
import re
import sys

import yaml

root = pathlib.Path(__file__).resolve().parents[2]
problems = []

exported = set()
for f in root.glob("crates/*/src/**/*.rs"):
    exported.update(re.findall(r'"(lookout_[a-z0-9_]+)"', f.read_text()))
dashboard = json.loads((root / "deploy/compose/grafana/dashboards/lookout.json").read_text())
queried = set()
for panel in dashboard["panels"]:
    for target in panel.get("targets", []):
        for name in re.findall(r"\b(lookout_[a-z0-9_]+)", target["expr"]):
            queried.add(re.sub(r"_(bucket|sum|count)$", "", name))
for name in sorted(queried - exported):
    problems.append(f"the dashboard queries {name}, which no service exports")

registry = (root / "crates/lookout-proto/src/topics.rs").read_text()
topics = set(re.findall(r'"(lookout\.[a-z]+)"', registry)) - {"lookout.dlq"}
messages = set()
for f in (root / "proto").rglob("*.proto"):
    text = f.read_text()
    package = re.search(r"^package ([\w.]+);", text, re.M).group(1)
    messages.update(f"{package}.{m}" for m in re.findall(r"^message (\w+)", text, re.M))
ui = yaml.safe_load((root / "deploy/compose/kafka-ui.yml").read_text())
mapping = ui["kafka"]["clusters"][0]["serde"][0]["properties"]["protobufMessageNameByTopic"]
for topic in sorted(topics - set(mapping)):
    problems.append(f"Kafka UI does not decode {topic}")
for topic, message in mapping.items():
    if message not in messages:
        problems.append(f"Kafka UI decodes {topic} as {message}, which proto/ does not define")

for p in problems:
    print(f"compose add-ons: {p}")
if problems:
    sys.exit(1)
print(f"  the dashboard queries {len(queried)} exported metrics; Kafka UI decodes {len(mapping)} topics")

#!/usr/bin/env bash
# Checks the dashboards/ folder: rule syntax, rule unit tests, and the dashboard's shape
# (valid JSON, every panel and target on the ${datasource} variable, every query naming
# only metrics the agent exports, per golden-metrics.prom). Run from anywhere.
set -euo pipefail
cd "$(dirname "$0")"
promtool check rules alerts.yml
promtool test rules alerts_test.yml
/usr/bin/python3 - <<'PY'
import json, re, sys
dash = json.load(open("syndetector.json"))
golden = {l.split()[2] for l in open("golden-metrics.prom") if l.startswith("# TYPE ")}
problems, exprs = [], []
panels = dash["panels"] + [p for row in dash["panels"] for p in row.get("panels", [])]
for p in panels:
    if p.get("datasource", {}).get("uid") != "${datasource}":
        problems.append(f"panel {p['title']!r}: datasource is not ${{datasource}}")
    if not p.get("description"):
        problems.append(f"panel {p['title']!r}: no description")
    for t in p.get("targets", []):
        if t.get("datasource", {}).get("uid") != "${datasource}":
            problems.append(f"panel {p['title']!r} target {t['refId']}: datasource is not ${{datasource}}")
        exprs.append((p["title"], t["expr"]))
rules = open("alerts.yml").read()
for title, e in exprs + [("alerts.yml", rules)]:
    for name in set(re.findall(r"\bsyndetector_[a-z_]+", e)):
        if name not in golden:
            problems.append(f"{title}: {name} is not a metric the agent exports")
if problems:
    print("\n".join(problems)); sys.exit(1)
print(f"dashboard: {len(panels)} panels, {len(exprs)} queries, all on ${{datasource}}, all metrics exported")
PY

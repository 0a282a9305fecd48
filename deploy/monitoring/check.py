#!/usr/bin/env python3
"""Checks the Grafana dashboard: valid JSON, and every metric its queries use is one frontdoor
exports (proxy/src/telemetry.rs) or a recording rule in frontdoor-rules.yml."""
import json, re, sys
from pathlib import Path

here = Path(__file__).parent
names = set(re.findall(r'pub const [A-Z_]+: &str = "(frontdoor_[a-z_]+)"', (here / "../../proxy/src/telemetry.rs").read_text()))
names |= set(re.findall(r"record: (\S+)", (here / "frontdoor-rules.yml").read_text()))
dash = json.loads((here / "grafana-dashboard.json").read_text())
bad = []
for p in dash["panels"]:
    for t in p["targets"]:
        for m in re.findall(r"(frontdoor[:_][a-z0-9_:]+)", t["expr"]):
            base = re.sub(r"_(bucket|sum|count)$", "", m)
            if m not in names and base not in names:
                bad.append(f"panel {p['title']!r}: unknown metric {m}")
if bad:
    sys.exit("\n".join(bad))
print(f"grafana-dashboard.json: ok ({len(dash['panels'])} panels, {len(names)} known metrics)")

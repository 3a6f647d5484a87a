"""Cross-references between the deployment files that no schema checks.

    python3 deploy/check_refs.py k8s          # deploy/k8s
    python3 deploy/check_refs.py compose      # deploy/compose

Prints one line per problem and exits 1 if there is any. Needs PyYAML (a dependency of
kubernetes-validate, so the venv scripts/test.sh makes has it). Run by the e2e tests in
tests/e2e/deploy/manifests.rs, which also run kubernetes-validate and the binary's own checks.

k8s: kustomization lists every manifest; the Services, the ServiceMonitor (a CRD, for which
kubernetes-validate has no schema: its keys are checked against the fields of
monitoring.coreos.com/v1 ServiceMonitor it uses), probes and annotations name ports that exist
and reach the listener of the ConfigMap policy that serves them.

compose: every file a service mounts exists, every service another one depends on exists, and
the ports rampart's policy listens on are the ones the other services use.
"""

import os
import re
import sys

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
problems = []


def problem(msg):
    problems.append(msg)


def load_all(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def listen_port(policy, listener):
    for entry in policy.get("listeners", []):
        if entry.get("name") == listener:
            return int(entry["listen"].rsplit(":", 1)[1])
    problem(f"the policy has no listener {listener!r}")
    return None


# ServiceMonitor fields this check knows (a subset of the CRD's; anything else is reported so a
# typo cannot pass unseen).
SM_SPEC = {"selector", "endpoints", "namespaceSelector", "jobLabel", "podTargetLabels", "targetLabels"}
SM_ENDPOINT = {"port", "path", "interval", "scrapeTimeout", "scheme", "relabelings",
               "metricRelabelings", "honorLabels"}


def check_k8s():
    base = os.path.join(HERE, "k8s")
    docs = {}
    for name in sorted(os.listdir(base)):
        if name.endswith(".yaml"):
            docs[name] = load_all(os.path.join(base, name))
    kust = docs.pop("kustomization.yaml")[0]
    listed = set(kust.get("resources", []))
    for name in listed:
        if name not in docs:
            problem(f"kustomization.yaml lists {name}, which does not exist")
    for name in docs:
        if name not in listed and name != "servicemonitor.yaml":
            problem(f"{name} is not in kustomization.yaml")

    objs = [(n, d) for n, ds in docs.items() for d in ds]
    by_kind = {}
    for n, d in objs:
        by_kind.setdefault(d["kind"], []).append(d)

    cm = next(d for d in by_kind["ConfigMap"] if d["metadata"]["name"] == "orders-rampart")
    policy = yaml.safe_load(cm["data"]["rampart.yaml"])
    deploy = by_kind["Deployment"][0]
    pod = deploy["spec"]["template"]
    sidecar = next(c for c in pod["spec"]["initContainers"] if c["name"] == "rampart")
    if sidecar.get("restartPolicy") != "Always":
        problem("the rampart init container must have restartPolicy: Always (a native sidecar)")
    if "--watch" not in sidecar.get("args", []):
        problem("rampart must run with --watch to follow ConfigMap updates")
    ports = {p["name"]: p["containerPort"] for p in sidecar["ports"]}
    # Each named port is the port of the listener that serves it.
    for port_name, listener in (("http", "inbound"), ("admin", "telemetry")):
        want = listen_port(policy, listener)
        if ports.get(port_name) != want:
            problem(f"container port {port_name} is {ports.get(port_name)}, listener {listener} listens on {want}")
    # The policy file is where the mounted ConfigMap puts it.
    mount = next(m for m in sidecar["volumeMounts"] if m["name"] == "rampart-policy")
    config = sidecar["args"][sidecar["args"].index("--config") + 1]
    if config != os.path.join(mount["mountPath"], "rampart.yaml"):
        problem(f"--config {config} is not rampart.yaml in the mounted ConfigMap ({mount['mountPath']})")
    vol = next(v for v in pod["spec"]["volumes"] if v["name"] == "rampart-policy")
    if vol["configMap"]["name"] != cm["metadata"]["name"]:
        problem("the policy volume does not mount the ConfigMap")
    if "subPath" in mount:
        problem("a subPath mount never sees ConfigMap updates: mount the directory")
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz"), ("startupProbe", "/healthz")):
        get = sidecar[probe]["httpGet"]
        if get["port"] != "admin" or get["path"] != path:
            problem(f"{probe} must GET {path} on port admin, not {get}")
    ann = pod["metadata"].get("annotations", {})
    if ann.get("prometheus.io/scrape") != "true" or int(ann.get("prometheus.io/port", 0)) != ports.get("admin") \
            or ann.get("prometheus.io/path") != "/metrics":
        problem(f"the prometheus.io annotations do not point at /metrics on port admin: {ann}")
    # HTTP_PROXY of the app is rampart's outbound listener.
    app = pod["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in app.get("env", [])}
    outbound = listen_port(policy, "outbound")
    if env.get("HTTP_PROXY") != f"http://127.0.0.1:{outbound}":
        problem(f"the app's HTTP_PROXY {env.get('HTTP_PROXY')} is not the outbound listener (port {outbound})")

    labels = pod["metadata"]["labels"]
    services = {s["metadata"]["name"]: s for s in by_kind["Service"]}
    for s in services.values():
        sel = s["spec"]["selector"]
        if any(labels.get(k) != v for k, v in sel.items()):
            problem(f"Service {s['metadata']['name']} selects {sel}, not the pods ({labels})")
        for p in s["spec"]["ports"]:
            if p["targetPort"] not in ports:
                problem(f"Service {s['metadata']['name']} targets port {p['targetPort']}, which rampart does not name")
    if services["orders"]["spec"]["ports"][0]["targetPort"] != "http":
        problem("the client-facing Service must send traffic to rampart's inbound port")
    pdb = by_kind["PodDisruptionBudget"][0]
    if any(labels.get(k) != v for k, v in pdb["spec"]["selector"]["matchLabels"].items()):
        problem("the PodDisruptionBudget does not select the pods")

    sm = by_kind["ServiceMonitor"][0]
    if sm["apiVersion"] != "monitoring.coreos.com/v1":
        problem(f"ServiceMonitor apiVersion {sm['apiVersion']}")
    for key in set(sm["spec"]) - SM_SPEC:
        problem(f"ServiceMonitor spec.{key} is not a field this check knows")
    sel = sm["spec"]["selector"]["matchLabels"]
    matched = [s for s in services.values()
               if all(s["metadata"].get("labels", {}).get(k) == v for k, v in sel.items())]
    if len(matched) != 1:
        problem(f"the ServiceMonitor selector {sel} matches {len(matched)} Services, not one")
    for ep in sm["spec"]["endpoints"]:
        for key in set(ep) - SM_ENDPOINT:
            problem(f"ServiceMonitor endpoint key {key} is not a field this check knows")
        for s in matched:
            names = {p["name"]: p for p in s["spec"]["ports"]}
            if ep["port"] not in names or names[ep["port"]]["targetPort"] != "admin":
                problem(f"ServiceMonitor port {ep['port']} is not the admin port of Service {s['metadata']['name']}")
            if s["spec"].get("clusterIP") != "None":
                problem("the metrics Service should be headless: Prometheus scrapes each pod")
        if ep.get("path") != "/metrics":
            problem(f"ServiceMonitor path {ep.get('path')}")
        for d in ("interval", "scrapeTimeout"):
            if d in ep and not re.fullmatch(r"[0-9]+(ms|s|m|h)", ep[d]):
                problem(f"ServiceMonitor {d} {ep[d]!r} is not a Prometheus duration")


def check_compose():
    base = os.path.join(HERE, "compose")
    path = os.path.join(base, "compose.yaml")
    doc = load_all(path)[0]
    services = doc.get("services", {})
    for want in ("app", "rampart", "prometheus", "grafana"):
        if want not in services:
            problem(f"compose.yaml has no service {want!r}")
    for name, svc in services.items():
        if "image" not in svc and "build" not in svc:
            problem(f"service {name} has neither image nor build")
        build = svc.get("build")
        if build:
            ctx = build["context"] if isinstance(build, dict) else build
            ctx_path = os.path.normpath(os.path.join(base, ctx))
            if not os.path.isdir(ctx_path):
                problem(f"service {name}: build context {ctx} does not exist")
            if isinstance(build, dict) and "dockerfile" in build:
                if not os.path.isfile(os.path.join(ctx_path, build["dockerfile"])):
                    problem(f"service {name}: dockerfile {build['dockerfile']} does not exist")
        for vol in svc.get("volumes", []):
            src = vol.split(":", 1)[0] if isinstance(vol, str) else vol.get("source", "")
            if src.startswith(".") or src.startswith("/"):
                if not os.path.exists(os.path.normpath(os.path.join(base, src))):
                    problem(f"service {name} mounts {src}, which does not exist")
            elif src and src not in doc.get("volumes", {}):
                problem(f"service {name} mounts volume {src}, which is not declared")
        deps = svc.get("depends_on", [])
        for dep in deps if isinstance(deps, list) else deps.keys():
            if dep not in services:
                problem(f"service {name} depends on {dep}, which does not exist")
    # Grafana's dashboard provider points at the directory the dashboard is mounted in.
    graf = services.get("grafana", {})
    mounts = {v.split(":")[1]: v.split(":")[0] for v in graf.get("volumes", []) if isinstance(v, str)}
    prov = os.path.join(base, "grafana", "dashboards.yaml")
    for provider in load_all(prov)[0]["providers"]:
        folder = provider["options"]["path"]
        if folder not in mounts:
            problem(f"grafana dashboards path {folder} is not a mount of the grafana service")
        elif not os.path.exists(os.path.join(os.path.normpath(os.path.join(base, mounts[folder])), "rampart.json")):
            problem(f"the mount at {folder} holds no rampart.json")
    ds = load_all(os.path.join(base, "grafana", "datasources.yaml"))[0]["datasources"]
    urls = [d.get("url", "") for d in ds]
    if not any("prometheus:9090" in u for u in urls):
        problem(f"the Grafana datasource does not point at the prometheus service: {urls}")
    # The policy's listeners are what the other services call.
    with open(os.path.join(base, "rampart.yaml"), encoding="utf-8") as f:
        policy = yaml.safe_load(f)
    admin = listen_port(policy, "telemetry")
    with open(os.path.join(base, "prometheus.yml"), encoding="utf-8") as f:
        prom = yaml.safe_load(f)
    targets = [t for job in prom["scrape_configs"] for sc in job.get("static_configs", []) for t in sc["targets"]]
    if f"rampart:{admin}" not in targets:
        problem(f"prometheus.yml does not scrape rampart:{admin} (the telemetry listener): {targets}")


def main():
    what = sys.argv[1] if len(sys.argv) > 1 else ""
    checks = {"k8s": check_k8s, "compose": check_compose}
    if what not in checks:
        print(f"usage: {sys.argv[0]} k8s|compose", file=sys.stderr)
        return 2
    try:
        checks[what]()
    except (KeyError, IndexError, StopIteration, TypeError, ValueError) as e:
        problem(f"a required field is missing or malformed: {type(e).__name__}: {e}")
    for p in problems:
        print(f"{what}: {p}")
    if not problems:
        print(f"{what}: ok")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

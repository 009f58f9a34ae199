#!/usr/bin/env python3
"""Checks of everything in deploy/, run by tests/tests/deploy.rs (`make test`).

No Kubernetes cluster, Docker engine or systemd (as PID 1) exists on the test machines, so:
- Kubernetes manifests and the Helm chart's output are validated against the Kubernetes JSON
  schemas (PyPI kubernetes-validate, strict: unknown fields fail); the chart is rendered and
  linted by Helm's own Go engine (PyPI helm-python-sdk, which bundles Helm v4's SDK as a C
  library). Then the real daemon runs with the ConfigMap's periscope.yaml, the container's
  environment and only the container's capabilities.
- The systemd unit passes `systemd-analyze verify` and `security --offline`; then the daemon
  runs with the unit's identity, capabilities, no_new_privs and default RLIMIT_MEMLOCK (setpriv,
  prlimit), under strace, and every system call and socket family it used is checked against
  the unit's SystemCallFilter and RestrictAddressFamilies.
- The collector configs and the compose stack are parsed and cross-checked (pipelines, mounts,
  ports, provisioning); the node collector's k8sattributes section against the processor's
  configuration rules, its DaemonSet and RBAC against the schemas; Prometheus' config is checked
  by the real promtool.

Usage: validate.py SUBCOMMAND [PERISCOPE_BINARY]
"""

from __future__ import annotations

import copy
import glob
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S_VERSIONS = ["1.30", "1.37"]  # appArmorProfile exists since 1.30; 1.37: newest bundled
CHART = DEPLOY / "helm" / "periscope"


class Failure(Exception):
    pass


def check(condition: bool, message: str) -> None:
    if not condition:
        raise Failure(message)


def say(message: str) -> None:
    print(f"[deploy] {message}", flush=True)


# ----------------------------------------------------------------------------- capabilities

def readme_capabilities() -> list[str]:
    """The capabilities of docs/deploy.md's Privileges table, in order; duplicates are an error."""
    text = (ROOT / "docs" / "deploy.md").read_text()
    section = text.split("\n## Privileges\n", 1)[1].split("\n## ", 1)[0]
    caps = re.findall(r"^\| `(CAP_[A-Z_]+)` \|", section, flags=re.M)
    check(caps, "docs/deploy.md: no capability rows in the Privileges table")
    dupes = sorted({c for c in caps if caps.count(c) > 1})
    check(not dupes, f"docs/deploy.md Privileges table lists {dupes} more than once")
    return caps


def k8s_caps(caps: list[str]) -> list[str]:
    return [c.removeprefix("CAP_") for c in caps]


# ------------------------------------------------------------------------------- kubernetes

def load_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def schema_validate(docs: list[dict], origin: str) -> None:
    from kubernetes_validate import utils as kv

    for doc in docs:
        for version in K8S_VERSIONS:
            try:
                kv.validate(doc, version, strict=True)
            except kv.ValidationError as e:
                raise Failure(
                    f"{origin}: {doc['kind']}/{doc['metadata']['name']} fails the Kubernetes "
                    f"{version} schema: {e.message} at {'/'.join(map(str, e.path))}"
                ) from None
    say(f"{origin}: {len(docs)} objects valid against the strict Kubernetes {K8S_VERSIONS} schemas")


def by_kind(docs: list[dict]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for d in docs:
        check(d["kind"] not in out, f"two {d['kind']} objects")
        out[d["kind"]] = d
    return out


CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding"}


def check_objects(docs: list[dict], origin: str) -> dict[str, dict]:
    """What the schemas cannot say: the objects fit together and give least privilege."""
    objs = by_kind(docs)
    for kind in ["ServiceAccount", "ConfigMap", "DaemonSet"]:
        check(kind in objs, f"{origin}: no {kind}")
    ds = objs["DaemonSet"]
    ns = ds["metadata"]["namespace"]
    for d in docs:
        if d["kind"] not in CLUSTER_SCOPED:
            check(d["metadata"].get("namespace") == ns, f"{origin}: {d['kind']} not in {ns}")
    if "Namespace" in objs:
        check(objs["Namespace"]["metadata"]["name"] == ns, f"{origin}: Namespace is not {ns}")
    pod = ds["spec"]["template"]["spec"]
    labels = ds["spec"]["template"]["metadata"]["labels"]
    selector = ds["spec"]["selector"]["matchLabels"]
    check(all(labels.get(k) == v for k, v in selector.items()), f"{origin}: selector misses pods")
    check(pod.get("hostPID") is True, f"{origin}: hostPID must be true")
    check(
        pod["serviceAccountName"] == objs["ServiceAccount"]["metadata"]["name"],
        f"{origin}: serviceAccountName names no ServiceAccount of the manifest",
    )
    (container,) = pod["containers"]
    sc = container["securityContext"]
    check(not sc.get("privileged"), f"{origin}: the container must not be privileged")
    check(sc["capabilities"].get("drop") == ["ALL"], f"{origin}: capabilities must drop ALL")
    want = k8s_caps(readme_capabilities())
    check(
        sorted(sc["capabilities"]["add"]) == sorted(want),
        f"{origin}: capabilities {sc['capabilities']['add']} are not docs/deploy.md's {want}",
    )
    # API server rule (not in the schema): "cannot set `allowPrivilegeEscalation` to false and
    # `capabilities.Add` CAP_SYS_ADMIN" (it compares the string CAP_SYS_ADMIN).
    check(
        not (sc.get("allowPrivilegeEscalation") is False and "CAP_SYS_ADMIN" in sc["capabilities"]["add"]),
        f"{origin}: allowPrivilegeEscalation: false with CAP_SYS_ADMIN is rejected by the API server",
    )
    check(sc.get("allowPrivilegeEscalation") is False, f"{origin}: allowPrivilegeEscalation: false expected")
    check(sc.get("readOnlyRootFilesystem") is True, f"{origin}: root filesystem should be read-only")
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"]:
        get = container[probe]["httpGet"]
        check(get["path"] == "/healthz", f"{origin}: {probe} is not on /healthz")
        check(get["port"] in ports or get["port"] in ports.values(), f"{origin}: {probe} port")
    res = container["resources"]
    check("memory" in res["requests"] and "cpu" in res["requests"], f"{origin}: no requests")
    check("memory" in res["limits"], f"{origin}: no memory limit")
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    for m in mounts.values():
        check(m["name"] in volumes, f"{origin}: mount {m['mountPath']} names no volume")
    host = {
        m["mountPath"]: volumes[m["name"]]["hostPath"]["path"]
        for m in mounts.values()
        if "hostPath" in volumes[m["name"]]
    }
    check(host.get("/sys/kernel/tracing") == "/sys/kernel/tracing", f"{origin}: no tracefs mount")
    check(host.get("/sys/fs/cgroup") == "/sys/fs/cgroup", f"{origin}: no cgroup mount")
    check(mounts["/sys/fs/cgroup"].get("readOnly") is True, f"{origin}: cgroup mount must be ro")
    args = container["args"]
    config_path = args[args.index("--config") + 1]
    config_mount = mounts[str(Path(config_path).parent)]
    cm = volumes[config_mount["name"]]["configMap"]["name"]
    check(cm == objs["ConfigMap"]["metadata"]["name"], f"{origin}: config volume names no ConfigMap")
    check(Path(config_path).name in objs["ConfigMap"]["data"], f"{origin}: no {config_path} in it")
    env = {e["name"]: e for e in container["env"]}
    node = env.get("K8S_NODE_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
    check(node == "spec.nodeName", f"{origin}: K8S_NODE_NAME (k8s.node.name) is not spec.nodeName")
    listen = env["PERISCOPE_PROMETHEUS_LISTEN"]["value"]
    check(listen.endswith(f":{ports['metrics']}"), f"{origin}: listen {listen} != metrics port")
    if "Service" in objs:
        svc = objs["Service"]["spec"]
        check(svc.get("clusterIP") == "None", f"{origin}: the Service should be headless")
        check(all(labels.get(k) == v for k, v in svc["selector"].items()), f"{origin}: Service selects no pod")
        for p in svc["ports"]:
            check(p["targetPort"] in ports, f"{origin}: Service targetPort {p['targetPort']}")
    return objs


def kubernetes() -> None:
    files = sorted((DEPLOY / "kubernetes").glob("*.yaml"))
    check(files, "no deploy/kubernetes/*.yaml")
    docs = [d for f in files for d in load_docs(f)]
    schema_validate(docs, "deploy/kubernetes")
    check_objects(docs, "deploy/kubernetes")
    # The validator itself must reject what the API server would: a misspelt field and a
    # wrong type, in a copy of the DaemonSet.
    from kubernetes_validate import utils as kv

    ds = next(d for d in docs if d["kind"] == "DaemonSet")
    for mutate in [
        lambda d: d["spec"]["template"]["spec"].update(hostPid=True),
        lambda d: d["spec"]["template"]["spec"]["containers"][0].update(ports="9464"),
    ]:
        bad = copy.deepcopy(ds)
        mutate(bad)
        try:
            kv.validate(bad, K8S_VERSIONS[-1], strict=True)
        except kv.ValidationError:
            continue
        raise Failure("the schema validator accepted a broken DaemonSet")
    say("a misspelt field and a wrong type are rejected by the same validator")


# ------------------------------------------------------------------------------------- helm

def helm_render(values: dict, name: str = "periscope", namespace: str = "periscope") -> list[dict]:
    import helm_python as helm

    with helm.Chart.load(str(CHART)) as chart:
        rendered = chart.render(values, name=name, namespace=namespace)
    docs = []
    for path, text in sorted(rendered.items()):
        if path.endswith(".tpl") or path.endswith("NOTES.txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def strip_for_compare(docs: list[dict]) -> dict[str, dict]:
    out = {}
    for d in copy.deepcopy(docs):
        d["metadata"].pop("labels", None)
        if d["kind"] == "DaemonSet":
            tmpl = d["spec"]["template"]
            tmpl["metadata"]["labels"].pop("app.kubernetes.io/instance", None)
            tmpl["metadata"]["annotations"].pop("checksum/config", None)
            d["spec"]["selector"]["matchLabels"].pop("app.kubernetes.io/instance", None)
            (c,) = tmpl["spec"]["containers"]
            c["env"] = [e for e in c["env"] if e.get("value", None) != ""]
        if d["kind"] == "Service":
            d["spec"]["selector"].pop("app.kubernetes.io/instance", None)
        if d["kind"] == "ConfigMap":
            d["data"] = {k: yaml.safe_load(v) for k, v in d["data"].items()}
        out[d["kind"]] = d
    return out


def diff(a, b, path="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += diff(a.get(k), b.get(k), f"{path}.{k}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [x for i, (p, q) in enumerate(zip(a, b)) for x in diff(p, q, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def deep_merge(base, over):
    """Helm's coalescing of user values into the chart's: maps merge, the rest is replaced."""
    if isinstance(base, dict) and isinstance(over, dict):
        return {k: deep_merge(base.get(k), over[k]) if k in over else base[k]
                for k in set(base) | set(over)}
    return copy.deepcopy(over)


def helm() -> None:
    import helm_python as helm_sdk

    say(f"Helm SDK {helm_sdk.helm_sdk_version()} (helm-c-sdk {helm_sdk.helm_c_version()})")
    lint = helm_sdk.lint(str(CHART))
    check(not lint["errors"], f"helm lint: {lint['errors']}")
    errors = [m for m in lint["messages"] if m["severity"] >= 3]
    check(not errors, f"helm lint: {errors}")

    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for key in ["image", "resources", "config", "otlp", "tolerations", "nodeSelector"]:
        check(key in values, f"values.yaml has no {key}")

    default = helm_render({})
    schema_validate(default, "helm template (default values)")
    check_objects(default, "helm template (default values)")
    plain = [d for f in sorted((DEPLOY / "kubernetes").glob("*.yaml")) for d in load_docs(f)]
    differences = diff(strip_for_compare(plain), strip_for_compare(default))
    check(not differences, "chart defaults differ from deploy/kubernetes:\n  " + "\n  ".join(differences))
    say("with default values the chart renders the objects of deploy/kubernetes/periscope.yaml")

    overrides = {
        "createNamespace": False,
        "hostNetwork": False,
        "image": {"repository": "registry.example/periscope", "tag": "9.9.9"},
        "otlp": {"endpoint": "http://otel-collector.observability:4317", "headers": "k=v"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "obs", "effect": "NoSchedule"}],
        "nodeSelector": {"node-role/observed": "true"},
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
        "config": {"probes": {"syscall": {"enabled": True, "select": [{"process_name": "postgres"}]}}},
        "priorityClassName": "system-node-critical",
        "extraEnv": [{"name": "OTEL_SERVICE_NAME", "value": "periscope-agent"}],
    }
    docs = helm_render(overrides, name="agent", namespace="monitoring")
    schema_validate(docs, "helm template (overrides)")
    objs = check_objects(docs, "helm template (overrides)")
    check("Namespace" not in objs, "createNamespace=false still renders a Namespace")
    ds = objs["DaemonSet"]
    pod = ds["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    check(ds["metadata"]["namespace"] == "monitoring", "release namespace not used")
    check(c["image"] == "registry.example/periscope:9.9.9", f"image {c['image']}")
    check(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") == overrides["otlp"]["endpoint"], f"env {env}")
    check(env.get("OTEL_EXPORTER_OTLP_HEADERS") == "k=v", f"env {env}")
    check(env.get("OTEL_SERVICE_NAME") == "periscope-agent", f"env {env}")
    check(pod["tolerations"] == overrides["tolerations"], f"tolerations {pod.get('tolerations')}")
    # Helm merges maps into the defaults (lists are replaced).
    check(pod["nodeSelector"] == {**values["nodeSelector"], **overrides["nodeSelector"]},
          f"nodeSelector {pod.get('nodeSelector')}")
    check(c["resources"] == overrides["resources"], f"resources {c['resources']}")
    check(pod["hostNetwork"] is False and "dnsPolicy" not in pod, "hostNetwork=false")
    check(pod["priorityClassName"] == "system-node-critical", "priorityClassName")
    cm = yaml.safe_load(objs["ConfigMap"]["data"]["periscope.yaml"])
    want = deep_merge(values["config"], overrides["config"])
    check(cm == want and cm["probes"]["syscall"]["select"] == [{"process_name": "postgres"}],
          f"ConfigMap periscope.yaml {cm}")
    check(
        ds["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
        != next(d for d in default if d["kind"] == "DaemonSet")["spec"]["template"]["metadata"][
            "annotations"]["checksum/config"],
        "a changed config must change the pod template (checksum/config)",
    )
    say("values land where they should: image, OTLP env, tolerations, nodeSelector, resources, config")
    # values.schema.json: Helm refuses a misspelt or mistyped value before rendering anything.
    for bad in [{"nodeselector": {"a": "b"}}, {"otlp": {"protocol": "http"}}, {"hostNetwork": "yes"}]:
        try:
            helm_render(bad)
        except helm_sdk.HelmValuesError:
            continue
        raise Failure(f"the chart rendered with invalid values {bad}")
    say("values.schema.json: Helm rejects a misspelt key, a bad enum and a wrong type")
    helm_pod_names(default)


def helm_pod_names(default: list[dict]) -> None:
    """kubernetes.enabled: the RBAC to list and watch pods, the token and the daemon's switch,
    all three only then."""
    def agent(objs: dict) -> tuple[dict, dict]:
        pod = objs["DaemonSet"]["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        return pod, {e["name"]: e.get("value") for e in c["env"]}

    off = by_kind(default)
    pod, env = agent(off)
    check(not {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"} & set(off),
          "the chart grants API access with kubernetes.enabled=false")
    check(pod["automountServiceAccountToken"] is False, "the token is mounted with kubernetes.enabled=false")
    check("PERISCOPE_KUBERNETES_ENABLED" not in env, "PERISCOPE_KUBERNETES_ENABLED set while off")

    docs = helm_render({"kubernetes": {"enabled": True}}, name="agent", namespace="monitoring")
    schema_validate(docs, "helm template (kubernetes.enabled)")
    objs = check_objects(docs, "helm template (kubernetes.enabled)")
    pod, env = agent(objs)
    check(pod["automountServiceAccountToken"] is True, "kubernetes.enabled: the token is not mounted")
    check(env.get("PERISCOPE_KUBERNETES_ENABLED") == "true", f"kubernetes.enabled: env {env}")
    check(env.get("K8S_NODE_NAME") is None and "K8S_NODE_NAME" in env,
          "kubernetes.enabled: the daemon needs K8S_NODE_NAME (from the downward API)")
    role, binding = objs["ClusterRole"], objs["ClusterRoleBinding"]
    granted = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"]
               for r in rule["resources"] for v in rule["verbs"]}
    check(granted == {("", "pods", "list"), ("", "pods", "watch")},
          f"kubernetes.enabled: the ClusterRole should grant list and watch of pods only: {sorted(granted)}")
    check(binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                 "name": role["metadata"]["name"]}, f"roleRef {binding['roleRef']}")
    sa = objs["ServiceAccount"]["metadata"]
    check(binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["name"], "namespace": sa["namespace"]}],
          f"the ClusterRoleBinding does not bind the agent's ServiceAccount: {binding['subjects']}")
    cm = yaml.safe_load(objs["ConfigMap"]["data"]["periscope.yaml"])
    check("kubernetes" not in cm, "the switch is the env var, not a second copy in the ConfigMap")
    say("kubernetes.enabled renders a ClusterRole (list, watch pods), its binding to the agent's "
        "ServiceAccount, the token mount and PERISCOPE_KUBERNETES_ENABLED; off, none of them")


# -------------------------------------------------------------------- running the real daemon

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(port: int, path: str, timeout: float = 5) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""


def wait_healthy(proc: subprocess.Popen, port: int, seconds: float, log: Path) -> float:
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        if proc.poll() is not None:
            raise Failure(f"periscope exited with {proc.returncode}: {log.read_text()[-3000:]}")
        try:
            if http_get(port, "/healthz", timeout=1)[0] == 200:
                return time.monotonic() - start
        except OSError:
            pass
        time.sleep(0.2)
    raise Failure(f"no /healthz within {seconds} s: {log.read_text()[-3000:]}")


def metric_values(text: str, name: str) -> list[tuple[dict, float]]:
    out = []
    for line in text.splitlines():
        m = re.match(rf"^{name}(?:\{{(.*)\}})? (\S+)", line)
        if m:
            labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(1) or ""))
            out.append((labels, float(m.group(2))))
    return out


def stop(proc: subprocess.Popen, grace: float, pid: int | None = None) -> int:
    """SIGTERM to the daemon (pid, when proc is a wrapper such as strace), then proc's exit."""
    os.kill(pid or proc.pid, signal.SIGTERM)
    try:
        return proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise Failure(f"periscope did not exit within {grace} s of SIGTERM") from None


def expected_families(config: dict) -> list[str]:
    probes = (config or {}).get("probes", {})
    defaults = {"block": True, "sched": True, "http": True, "tcp": True, "syscall": False}
    return [f for f, on in defaults.items() if probes.get(f, {}).get("enabled", on)]


def kubernetes_live(binary: str) -> None:
    """The daemon with the ConfigMap's file, the container's env and capabilities only."""
    plain = by_kind([d for f in sorted((DEPLOY / "kubernetes").glob("*.yaml")) for d in load_docs(f)])
    rendered = by_kind(helm_render({}))
    for origin, objs in [("deploy/kubernetes", plain), ("helm chart", rendered)]:
        ds = objs["DaemonSet"]
        pod = ds["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        config_text = objs["ConfigMap"]["data"]["periscope.yaml"]
        config = yaml.safe_load(config_text)
        port = free_port()
        downward = {"status.podIP": "127.0.0.1", "spec.nodeName": "deploy-test-node"}
        env = {"PATH": os.environ["PATH"]}
        for e in c["env"]:
            if "valueFrom" in e:
                env[e["name"]] = downward[e["valueFrom"]["fieldRef"]["fieldPath"]]
            else:
                env[e["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], e["value"])
        env["PERISCOPE_PROMETHEUS_LISTEN"] = env["PERISCOPE_PROMETHEUS_LISTEN"].replace(
            f":{c['ports'][0]['containerPort']}", f":{port}")
        caps = ",".join("+" + x.lower() for x in c["securityContext"]["capabilities"]["add"])
        with tempfile.TemporaryDirectory() as tmp:
            cfg = Path(tmp) / "periscope.yaml"
            cfg.write_text(config_text)
            log = Path(tmp) / "log"
            args = [a if a != "/etc/periscope/periscope.yaml" else str(cfg) for a in c["args"]]
            # uid 0 as in the pod (runAsUser: 0), bounding set = the added capabilities,
            # no_new_privs (allowPrivilegeEscalation: false), and a 64 KiB RLIMIT_MEMLOCK: the
            # eBPF maps are memcg-charged, not memlock-charged.
            check(c["securityContext"].get("allowPrivilegeEscalation") is False, "no_new_privs")
            cmd = ["prlimit", "--memlock=65536:65536", "setpriv", f"--bounding-set=-all,{caps}",
                   f"--inh-caps=-all,{caps}", "--no-new-privs", binary, *args]
            with log.open("w") as out:
                proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
            try:
                probe = c["startupProbe"]
                budget = probe["periodSeconds"] * probe["failureThreshold"]
                took = wait_healthy(proc, port, budget, log)
                status, body = http_get(port, c["readinessProbe"]["httpGet"]["path"])
                check(status == 200 and body.strip() == "ok", f"readiness: {status} {body!r}")
                time.sleep(1.5)
                status, text = http_get(port, "/metrics")
                check(status == 200, f"/metrics: {status}")
                attached = {l["probe"]: v for l, v in metric_values(text, "periscope_probe_attached")}
                for family in expected_families(config):
                    check(attached.get(family) == 1.0, f"{origin}: {family} not attached: {attached}")
                info = metric_values(text, "target_info")
                check(info and info[0][0].get("k8s_node_name") == "deploy-test-node",
                      f"{origin}: K8S_NODE_NAME not applied: {info}")
                if config.get("probes", {}).get("sched", {}).get("by_cgroup"):
                    series = metric_values(text, "kernel_sched_runqueue_latency_seconds_count")
                    check(any("cgroup_path" in l for l, _ in series),
                          f"{origin}: by_cgroup on but no cgroup_path series")
                with open(f"/proc/{proc.pid}/status") as f:
                    status_text = f.read()
                cap_eff = int(re.search(r"CapEff:\s+(\w+)", status_text).group(1), 16)
                check(cap_eff == caps_mask(c["securityContext"]["capabilities"]["add"]),
                      f"{origin}: CapEff {cap_eff:x} is not the container's capabilities")
                check(re.search(r"NoNewPrivs:\s+1", status_text) is not None, "no_new_privs not set")
            finally:
                code = stop(proc, pod["terminationGracePeriodSeconds"])
            check(code == 0, f"{origin}: exit {code} after SIGTERM: {log.read_text()[-2000:]}")
            say(f"{origin}: daemon with the ConfigMap's config, only {caps} and no_new_privs was healthy in "
                f"{took:.1f} s with {', '.join(expected_families(config))} attached; exit 0 on SIGTERM")


CAP_NUMBERS = {"DAC_READ_SEARCH": 2, "SYS_PTRACE": 19, "SYS_ADMIN": 21, "SYS_RESOURCE": 24,
               "PERFMON": 38, "BPF": 39}


def caps_mask(names: list[str]) -> int:
    return sum(1 << CAP_NUMBERS[n.removeprefix("CAP_")] for n in names)


# ------------------------------------------------------------------------------------ systemd

def unit_settings(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def syscall_group(name: str, seen: set[str] | None = None) -> set[str]:
    seen = seen if seen is not None else set()
    if name in seen:
        return set()
    seen.add(name)
    out = subprocess.run(["systemd-analyze", "syscall-filter", name], check=True,
                         capture_output=True, text=True).stdout
    calls: set[str] = set()
    for line in out.splitlines()[1:]:
        item = line.strip()
        if not item or item.startswith("#"):
            continue
        calls |= syscall_group(item, seen) if item.startswith("@") else {item}
    return calls


def systemd(binary: str) -> None:
    unit = DEPLOY / "systemd" / "periscope.service"
    settings = unit_settings(unit)
    (exec_start,) = settings["ExecStart"]
    check(exec_start.startswith("/usr/local/bin/periscope "), f"ExecStart={exec_start}")
    with tempfile.TemporaryDirectory() as tmp:
        # The unit as installed, but with ExecStart on the binary built here (verify checks that
        # the command exists and is executable).
        copy_path = Path(tmp) / "periscope.service"
        copy_path.write_text(unit.read_text().replace(
            "ExecStart=/usr/local/bin/periscope", f"ExecStart={binary}"))
        r = subprocess.run(["systemd-analyze", "verify", str(copy_path)], capture_output=True, text=True)
        check(r.returncode == 0 and not r.stderr.strip(),
              f"systemd-analyze verify: rc {r.returncode}: {r.stderr}")
        say("systemd-analyze verify: clean")
        r = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(copy_path)],
                           capture_output=True, text=True)
        m = re.search(r"Overall exposure level for periscope.service: ([\d.]+)", r.stdout)
        check(m is not None, f"systemd-analyze security: {r.stdout[-500:]} {r.stderr}")
        exposure = float(m.group(1))
        check(exposure <= 4.0, f"exposure {exposure} > 4.0 (the unit lost hardening)")
        say(f"systemd-analyze security --offline: exposure {exposure} (<= 4.0)")

    bounding = settings["CapabilityBoundingSet"][0].split()
    ambient = settings["AmbientCapabilities"][0].split()
    check(sorted(bounding) == sorted(readme_capabilities()), f"bounding set {bounding}")
    check(sorted(ambient) == sorted(bounding), f"ambient {ambient} != bounding {bounding}")
    check("LimitMEMLOCK" not in settings, "LimitMEMLOCK is not needed on kernels >= 5.11")
    for off in ["ProtectKernelTunables", "PrivateDevices", "ProtectProc", "ProcSubset"]:
        check(off not in settings, f"{off} would hide or lock what Periscope needs")
    allowed: set[str] = set()
    for item in " ".join(settings["SystemCallFilter"]).split():
        allowed |= syscall_group(item) if item.startswith("@") else {item}
    families = set(settings["RestrictAddressFamilies"][0].split())

    # The unit's identity and privileges, reproduced without systemd: DynamicUser picks an
    # unused uid in 61184-65519, so does this; capabilities are bounding + inheritable +
    # ambient; NoNewPrivileges; RLIMIT_MEMLOCK at a low 64 KiB.
    check(settings.get("DynamicUser") == ["yes"], "DynamicUser=yes expected")
    check(settings.get("NoNewPrivileges") == ["yes"], "NoNewPrivileges=yes expected")
    uid = 61184 + os.getpid() % 4000
    caps = ",".join("+" + c.removeprefix("CAP_").lower() for c in ambient)
    port = free_port()
    server_port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o755)
        log = Path(tmp) / "log"
        trace = Path(tmp) / "strace"
        # A root-owned HTTP server whose service.name only its /proc/PID/environ tells: reading
        # it from another uid needs CAP_SYS_PTRACE.
        server = subprocess.Popen(
            [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(server_port)],
            cwd=tmp, env={"PATH": os.environ["PATH"], "OTEL_SERVICE_NAME": "deploy-systemd-probe"},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        env = {"PATH": os.environ["PATH"], "PERISCOPE_LOG": "info",
               "PERISCOPE_PROMETHEUS_LISTEN": f"127.0.0.1:{port}"}
        cmd = ["strace", "-f", "-qq", "-o", str(trace),
               "prlimit", "--memlock=65536:65536",
               "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
               f"--bounding-set=-all,{caps}", f"--inh-caps=-all,{caps}",
               f"--ambient-caps=-all,{caps}", "--no-new-privs",
               binary, "run"]
        with log.open("w") as out:
            proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp)
        daemon = None
        try:
            took = wait_healthy(proc, port, 120, log)
            daemon = proc_child(proc.pid, binary)
            with open(f"/proc/{daemon}/status") as f:
                st = f.read()
            check(re.search(r"Uid:\s+(\d+)", st).group(1) == str(uid), "not running as the dynamic uid")
            cap_eff = int(re.search(r"CapEff:\s+(\w+)", st).group(1), 16)
            check(cap_eff == caps_mask(ambient), f"CapEff {cap_eff:x}")
            check(re.search(r"NoNewPrivs:\s+1", st) is not None, "no_new_privs not set")
            requests = 20
            for _ in range(requests):
                with urllib.request.urlopen(f"http://127.0.0.1:{server_port}/", timeout=5) as r:
                    r.read()
            deadline = time.monotonic() + 20
            counted = 0.0
            while time.monotonic() < deadline:
                text = http_get(port, "/metrics", timeout=10)[1]
                counted = sum(v for l, v in metric_values(text, "http_server_request_duration_seconds_count")
                              if l.get("service_name") == "deploy-systemd-probe")
                if counted >= requests:
                    break
                time.sleep(0.5)
            check(counted == requests,
                  f"{counted} server requests of deploy-systemd-probe counted, {requests} sent")
            attached = {l["probe"]: v for l, v in metric_values(text, "periscope_probe_attached")}
            for family in expected_families({}):
                check(attached.get(family) == 1.0, f"{family} not attached: {attached}")
        finally:
            server.terminate()
            server.wait()
            if daemon is None:
                proc.kill()
            code = stop(proc, 60, daemon) if daemon else proc.wait()
        check(code == 0, f"exit {code} after SIGTERM: {log.read_text()[-2000:]}")
        used, socket_families = traced_syscalls(trace, binary)
    # strace names the uretprobe syscall (335) syscall_0x14f: the kernel's return trampoline
    # makes it in any process with uretprobes; seccomp lets it through (Linux >= 6.12).
    used.discard("syscall_0x14f")
    # Not vacuous: the trace holds the eBPF calls that @system-service alone would deny.
    base = syscall_group("@system-service")
    check({"bpf", "perf_event_open"} <= used and not {"bpf", "perf_event_open"} & base,
          "the trace lacks bpf/perf_event_open, or @system-service already allows them")
    denied = sorted(used - allowed)
    check(not denied, f"system calls the daemon made that SystemCallFilter denies: {denied}")
    bad = sorted(socket_families - families)
    check(not bad, f"socket families outside RestrictAddressFamilies: {bad}")
    say(f"as uid {uid} with {caps}, no_new_privs, memlock 64 KiB: healthy in {took:.1f} s, "
        f"{requests}/{requests} requests of a root process named from its environ; "
        f"{len(used)} distinct syscalls, all in SystemCallFilter, no file written; sockets "
        f"{sorted(socket_families)}")


def proc_child(pid: int, binary: str) -> int:
    """The pid of `binary` among pid and its descendants (strace -> prlimit -> setpriv exec)."""
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            if os.readlink(f"/proc/{p}/exe") == os.path.realpath(binary):
                return p
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        todo += [int(c) for c in children]
    raise Failure(f"{binary} not found under pid {pid}")


FILE_CHANGES = {"mkdir", "mkdirat", "rmdir", "unlink", "unlinkat", "rename", "renameat",
                "renameat2", "link", "linkat", "symlink", "symlinkat", "chmod", "fchmod",
                "fchmodat", "chown", "fchown", "fchownat", "lchown", "truncate", "ftruncate",
                "creat", "mknod", "mknodat"}


def traced_syscalls(trace: Path, binary: str) -> tuple[set[str], set[str]]:
    """System calls and socket families of `binary` (all its threads), and a check that it
    changes no file: no file-changing call, no open for writing (ProtectSystem=strict with no
    ReadWritePaths; readOnlyRootFilesystem)."""
    lines = trace.read_text().splitlines()
    start = next(i for i, l in enumerate(lines) if re.search(rf'execve\("{re.escape(binary)}"', l))
    calls, families, writes = set(), set(), set()
    for line in lines[start + 1:]:
        m = re.match(r"^\d+\s+(?:<\.\.\. )?([a-z_0-9]+)[( ]", line)
        if m:
            calls.add(m.group(1))
        f = re.search(r"\b(?:socket|socketpair)\((AF_[A-Z0-9]+)", line)
        if f:
            families.add(f.group(1))
        o = re.search(r'\bopen(?:at)?\((?:[^,]+, )?"([^"]*)", ([A-Z_|]+)', line)
        if o and re.search(r"O_WRONLY|O_RDWR|O_CREAT", o.group(2)) and not re.search(r"= -1 ", line):
            if o.group(1) != "/dev/null":
                writes.add(o.group(1))
    check(calls, "strace saw no system calls")
    changed = sorted(calls & FILE_CHANGES)
    check(not changed, f"the daemon changed files ({changed}): ProtectSystem=strict needs ReadWritePaths")
    check(not writes, f"the daemon opened files for writing: {sorted(writes)}")
    return calls, families


# ---------------------------------------------------------------------------------- collector

def collector() -> None:
    path = DEPLOY / "otel-collector" / "config.yaml"
    cfg = yaml.safe_load(path.read_text())
    pipelines = check_pipelines(cfg)
    metric_exporters = [e.split("/")[0] for e in pipelines["metrics"]["exporters"]]
    check(set(metric_exporters) & {"prometheusremotewrite", "prometheus"},
          f"metrics go to no Prometheus exporter: {metric_exporters}")
    (traces_out,) = pipelines["traces"]["exporters"]
    check(traces_out.split("/")[0] == "otlp", f"traces exporter {traces_out}")
    check("tempo:4317" in cfg["exporters"][traces_out]["endpoint"], "traces do not go to tempo:4317")
    say(f"collector: pipelines {sorted(pipelines)} reference only defined components; "
        f"OTLP in on 4317/4318; metrics -> {metric_exporters}; traces -> Tempo")
    collector_k8s_node()


def check_pipelines(cfg: dict) -> dict:
    """Every pipeline names defined components, memory_limiter first and a batch; nothing
    defined goes unused; metrics and traces come in over OTLP on the standard ports."""
    pipelines = cfg["service"]["pipelines"]
    used = {"receivers": set(), "processors": set(), "exporters": set()}
    for name, pipe in pipelines.items():
        for section in used:
            for component in pipe.get(section, []):
                check(component in (cfg.get(section) or {}),
                      f"pipeline {name}: {section[:-1]} {component} is not defined")
                used[section].add(component)
        check(pipe["processors"][0] == "memory_limiter", f"{name}: memory_limiter must come first")
        check("batch" in pipe["processors"], f"{name}: no batch processor")
    for section, names in used.items():
        unused = set(cfg.get(section) or {}) - names
        check(not unused, f"{section} defined but in no pipeline: {sorted(unused)}")
    for ext in cfg["service"].get("extensions", []):
        check(ext in cfg.get("extensions", {}), f"extension {ext} is not defined")
    check({"metrics", "traces"} <= set(pipelines), f"pipelines {sorted(pipelines)}")
    protocols = cfg["receivers"]["otlp"]["protocols"]
    check(protocols["grpc"]["endpoint"].endswith(":4317"), "OTLP gRPC is not on 4317")
    check(protocols["http"]["endpoint"].endswith(":4318"), "OTLP HTTP is not on 4318")
    return pipelines


# The k8sattributes processor's configuration as its Go struct reads it (contrib
# processor/k8sattributesprocessor/config.go and internal/k8sconfig): the collector refuses
# unknown keys and unsupported metadata at start, which cannot be run here (no collector binary
# is installable), so the same rules are checked on the file.
K8SATTRIBUTES_KEYS = {"auth_type", "context", "passthrough", "extract", "filter", "pod_association",
                      "exclude", "wait_for_metadata", "wait_for_metadata_timeout"}
K8SATTRIBUTES_AUTH = {"none", "serviceAccount", "kubeConfig", "tlsAndColocated"}
K8SATTRIBUTES_FILTER_KEYS = {"node", "node_from_env_var", "namespace", "fields", "labels"}
K8SATTRIBUTES_EXTRACT_KEYS = {"metadata", "annotations", "labels", "otel_annotations", "service_attributes"}
K8SATTRIBUTES_METADATA = {
    "k8s.namespace.name", "k8s.pod.name", "k8s.pod.uid", "k8s.pod.hostname", "k8s.pod.start_time",
    "k8s.pod.ip", "k8s.deployment.name", "k8s.deployment.uid", "k8s.replicaset.name",
    "k8s.replicaset.uid", "k8s.daemonset.name", "k8s.daemonset.uid", "k8s.statefulset.name",
    "k8s.statefulset.uid", "k8s.job.name", "k8s.job.uid", "k8s.cronjob.name", "k8s.node.name",
    "k8s.node.uid", "k8s.container.name", "container.id", "container.image.name",
    "container.image.tag", "container.image.repo_digests", "k8s.cluster.uid",
}
# What each extracted field needs to read (besides pods): the rules the ClusterRole must grant.
K8SATTRIBUTES_NEEDS = {"k8s.namespace.name": ("", "pods"), "k8s.deployment.name": ("apps", "replicasets"),
                       "k8s.node.uid": ("", "nodes")}


def exporter_attribute(name: str) -> bool:
    """Whether Periscope's model declares the resource attribute `name` (model/resource.rs)."""
    text = (ROOT / "exporter" / "src" / "model" / "resource.rs").read_text()
    return f'"{name}"' in text


def collector_k8s_node() -> None:
    """deploy/otel-collector/k8s-node.yaml and the DaemonSet of kubernetes.yaml that runs it."""
    path = DEPLOY / "otel-collector" / "k8s-node.yaml"
    text = path.read_text()
    cfg = yaml.safe_load(text)
    pipelines = check_pipelines(cfg)
    k8s = cfg["processors"]["k8sattributes"]
    unknown = set(k8s) - K8SATTRIBUTES_KEYS
    check(not unknown, f"k8sattributes: unknown keys {sorted(unknown)}")
    check(k8s.get("auth_type", "serviceAccount") in K8SATTRIBUTES_AUTH, f"auth_type {k8s.get('auth_type')}")
    check(not k8s.get("passthrough"), "k8sattributes: passthrough would add only the pod IP")
    check(not set(k8s["filter"]) - K8SATTRIBUTES_FILTER_KEYS, f"filter keys {sorted(k8s['filter'])}")
    node_env = k8s["filter"].get("node_from_env_var")
    check(node_env == "K8S_NODE_NAME", f"k8sattributes is not filtered to the node: {k8s['filter']}")
    check(not set(k8s["extract"]) - K8SATTRIBUTES_EXTRACT_KEYS, f"extract keys {sorted(k8s['extract'])}")
    metadata = k8s["extract"]["metadata"]
    bad = [m for m in metadata if m not in K8SATTRIBUTES_METADATA]
    check(not bad, f"k8sattributes: unsupported metadata {bad}")
    for m in ["k8s.namespace.name", "k8s.pod.name", "k8s.container.name", "k8s.deployment.name",
              "k8s.statefulset.name", "k8s.daemonset.name", "k8s.job.name"]:
        check(m in metadata, f"k8sattributes does not extract {m}")
    # Association: by pod uid first, then by container id, each a resource attribute that
    # Periscope really sets.
    sources = []
    for rule in k8s["pod_association"]:
        check(set(rule) == {"sources"}, f"pod_association rule keys {sorted(rule)}")
        check(len(rule["sources"]) <= 4, "pod_association: at most 4 sources per rule")
        for src in rule["sources"]:
            check(src.get("from") in {"resource_attribute", "connection"}, f"association from {src}")
        sources.append([src.get("name") for src in rule["sources"]])
    check(sources == [["k8s.pod.uid"], ["container.id"]],
          f"association must be k8s.pod.uid, then container.id: {sources}")
    for name in ["k8s.pod.uid", "container.id"]:
        check(exporter_attribute(name), f"Periscope does not set {name}, the association would never match")
    for name, pipe in pipelines.items():
        procs = pipe["processors"]
        check("k8sattributes" in procs and procs.index("k8sattributes") < procs.index("batch"),
              f"{name}: k8sattributes must run before batch (a batch mixes resources)")

    docs = load_docs(DEPLOY / "otel-collector" / "kubernetes.yaml")
    schema_validate(docs, "deploy/otel-collector/kubernetes.yaml")
    objs = by_kind(docs)
    check(objs["ConfigMap"]["data"].get(path.name) == text,
          f"the ConfigMap's {path.name} is not deploy/otel-collector/{path.name} verbatim")
    pod = objs["DaemonSet"]["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    env = {e["name"]: e for e in c.get("env", [])}
    check(env.get(node_env, {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "spec.nodeName",
          f"the collector's {node_env} is not the downward API's spec.nodeName")
    check(f"--config=/etc/otelcol/{path.name}" in c["args"], f"collector args {c['args']}")
    sa = pod["serviceAccountName"]
    check(sa == objs["ServiceAccount"]["metadata"]["name"], "serviceAccountName names no ServiceAccount")
    binding = objs["ClusterRoleBinding"]
    check(binding["roleRef"]["name"] == objs["ClusterRole"]["metadata"]["name"], "binding names no ClusterRole")
    check(any(s["kind"] == "ServiceAccount" and s["name"] == sa for s in binding["subjects"]),
          "the ClusterRoleBinding does not bind the collector's ServiceAccount")
    granted = {(g, r, v) for rule in objs["ClusterRole"]["rules"] for g in rule["apiGroups"]
               for r in rule["resources"] for v in rule["verbs"]}
    needed = {("", "pods")} | {K8SATTRIBUTES_NEEDS[m] for m in metadata if m in K8SATTRIBUTES_NEEDS}
    for group, resource in sorted(needed):
        for verb in ["get", "list", "watch"]:
            check((group, resource, verb) in granted, f"ClusterRole lacks {verb} {group}/{resource}")
    check(all(v in {"get", "list", "watch"} for _, _, v in granted), "the ClusterRole grants more than reading")
    ports = {p["containerPort"]: p for p in c["ports"]}
    grpc = cfg["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"].rsplit(":", 1)[1]
    check(ports.get(int(grpc), {}).get("hostPort") == int(grpc),
          "the OTLP gRPC port is not a hostPort: Periscope (host network) sends to the node's address")
    say(f"k8s-node collector: k8sattributes associates by k8s.pod.uid then container.id, filtered to "
        f"the node ({node_env} from spec.nodeName), extracts {len(metadata)} fields; its DaemonSet, "
        f"ConfigMap and read-only ClusterRole are valid and agree")


# ------------------------------------------------------------------------------------ compose

HOST_PATHS = {"/sys/kernel/tracing", "/sys/fs/cgroup"}


def compose() -> None:
    base = DEPLOY / "compose"
    stack = yaml.safe_load((base / "docker-compose.yaml").read_text())
    # The Compose Specification's JSON schema as docker-compose 1.29.2 ships it (installed for
    # that file only; its code is never run).
    import importlib.util

    import jsonschema

    spec = importlib.util.find_spec("compose")
    schema_path = Path(list(spec.submodule_search_locations)[0]) / "config" / "compose_spec.json"
    schema = json.loads(schema_path.read_text())
    errors = [f"{'/'.join(map(str, e.path))}: {e.message}"
              for e in jsonschema.Draft201909Validator(schema).iter_errors(stack)]
    check(not errors, "docker-compose.yaml fails the Compose Specification schema: " + "; ".join(errors))
    bad = copy.deepcopy(stack)
    bad["services"]["periscope"]["cap-add"] = bad["services"]["periscope"].pop("cap_add")
    check(any(True for _ in jsonschema.Draft201909Validator(schema).iter_errors(bad)),
          "the Compose schema accepted a misspelt key")
    services = stack["services"]
    check({"periscope", "otel-collector", "prometheus", "tempo", "grafana"} <= set(services),
          f"services {sorted(services)}")
    mounts: dict[str, dict[str, Path | str]] = {}
    for name, svc in services.items():
        check("image" in svc, f"{name}: no image")
        if "build" not in svc:
            check(re.search(r":[\w.]*\d", svc["image"]) is not None, f"{name}: image tag not pinned")
        for dep in svc.get("depends_on", []):
            check(dep in services, f"{name} depends on unknown {dep}")
        mounts[name] = {}
        for vol in svc.get("volumes", []):
            source, target = vol.split(":")[:2]
            if source.startswith("/"):
                check(source in HOST_PATHS, f"{name}: unexpected host path {source}")
                mounts[name][target] = source
            else:
                resolved = (base / source).resolve()
                check(resolved.exists(), f"{name}: mounted {source} does not exist ({resolved})")
                check(ROOT in resolved.parents, f"{name}: {source} is outside the repository")
                mounts[name][target] = resolved
    p = services["periscope"]
    check(p.get("pid") == "host", "periscope: pid: host")
    check(not p.get("privileged"), "periscope must not be privileged")
    check(p.get("cap_drop") == ["ALL"], "periscope: cap_drop ALL")
    check(sorted(p["cap_add"]) == sorted(k8s_caps(readme_capabilities())), f"cap_add {p['cap_add']}")
    check(set(mounts["periscope"].values()) == HOST_PATHS, "periscope: tracefs and cgroup mounts")
    check((base / p["build"]["context"]).resolve() == ROOT, "periscope build context is the repo")
    check((ROOT / p["build"]["dockerfile"]).exists(), "periscope Dockerfile missing")
    dockerfile_checks(ROOT / p["build"]["dockerfile"])

    # The collector runs deploy/otel-collector/config.yaml with the compose override merged
    # over it (later --config files win; maps merge, lists are replaced).
    command = services["otel-collector"]["command"]
    configs = [c.removeprefix("--config=") for c in command if c.startswith("--config=")]
    check(configs and mounts["otel-collector"].get(configs[0]) == DEPLOY / "otel-collector" / "config.yaml",
          f"the collector's first --config is not deploy/otel-collector/config.yaml: {command}")
    col = {}
    for target in configs:
        check(target in mounts["otel-collector"], f"collector --config={target} is not mounted")
        col = deep_merge(col, yaml.safe_load(Path(mounts["otel-collector"][target]).read_text()))
    for name, pipe in col["service"]["pipelines"].items():
        for section in ["receivers", "processors", "exporters"]:
            for component in pipe.get(section, []):
                check(component in col.get(section, {}), f"compose collector: {name} uses undefined {component}")
    endpoint = p["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"]
    m = re.match(r"http://([\w-]+):(\d+)$", endpoint)
    check(m and m.group(1) == "otel-collector", f"periscope OTLP endpoint {endpoint}")
    grpc_port = col["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"].rsplit(":", 1)[1]
    check(m.group(2) == grpc_port, f"periscope sends to {m.group(2)}, the collector listens on {grpc_port}")
    # Metrics: Prometheus scrapes Periscope itself, and the collector writes none into it (no
    # series twice).
    check(not set(col["service"]["pipelines"]["metrics"]["exporters"]) & {"prometheusremotewrite", "prometheus"},
          "compose: the collector would write the metrics Prometheus already scrapes")

    prom_cfg = next(s for t, s in mounts["prometheus"].items() if t == "/etc/prometheus/prometheus.yml")
    r = subprocess.run(["promtool", "check", "config", "--syntax-only", str(prom_cfg)],
                       capture_output=True, text=True)
    check(r.returncode == 0, f"promtool check config: {r.stdout}{r.stderr}")
    prom = yaml.safe_load(Path(prom_cfg).read_text())
    rule_count = 0
    listen_port = p["environment"]["PERISCOPE_PROMETHEUS_LISTEN"].rsplit(":", 1)[1]
    targets = [t for job in prom["scrape_configs"] for sc in job.get("static_configs", []) for t in sc["targets"]]
    check(f"periscope:{listen_port}" in targets, f"Prometheus does not scrape periscope:{listen_port}: {targets}")
    for pattern in prom.get("rule_files", []):
        root = next((s for t, s in mounts["prometheus"].items() if pattern.startswith(t + "/")), None)
        check(root is not None, f"rule_files {pattern} is in no mounted directory")
        target = next(t for t in mounts["prometheus"] if pattern.startswith(t + "/"))
        found = glob.glob(str(root) + pattern[len(target):])
        check(found, f"rule_files {pattern} matches no file of {root}")
        rule_count += len(found)
    # The full check (rule files loaded and checked too) on a copy whose rule_files point at the
    # repository's files instead of the container's mount.
    with tempfile.TemporaryDirectory() as tmp:
        full = copy.deepcopy(prom)
        full["rule_files"] = [str(root) + pattern[len(target):] for pattern in prom.get("rule_files", [])
                              for target, root in mounts["prometheus"].items()
                              if pattern.startswith(target + "/")]
        (Path(tmp) / "prometheus.yml").write_text(yaml.safe_dump(full))
        r = subprocess.run(["promtool", "check", "config", str(Path(tmp) / "prometheus.yml")],
                           capture_output=True, text=True)
        check(r.returncode == 0, f"promtool check config (with the rule files): {r.stdout}{r.stderr}")

    tempo = yaml.safe_load((base / "tempo.yaml").read_text())
    tempo_grpc = tempo["distributor"]["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
    tempo_target = services["otel-collector"]["environment"]["TEMPO_OTLP_ENDPOINT"]
    check(tempo_target == "tempo:" + tempo_grpc.rsplit(":", 1)[1], f"collector -> {tempo_target}, tempo on {tempo_grpc}")
    tempo_http = tempo["server"]["http_listen_port"]

    g = mounts["grafana"]
    ds_dir = g["/etc/grafana/provisioning/datasources"]
    sources = [s for f in sorted(Path(ds_dir).glob("*.yaml")) for s in yaml.safe_load(f.read_text())["datasources"]]
    types = {s["type"]: s for s in sources}
    check(types["prometheus"]["url"] == "http://prometheus:9090", "Prometheus data source URL")
    check(types["tempo"]["url"] == f"http://tempo:{tempo_http}", "Tempo data source URL")
    check(all(s.get("uid") for s in sources), "data sources need fixed uids")
    db_dir = g["/etc/grafana/provisioning/dashboards"]
    providers = [p for f in sorted(Path(db_dir).glob("*.yaml")) for p in yaml.safe_load(f.read_text())["providers"]]
    for prov in providers:
        src = g.get(prov["options"]["path"])
        check(src == ROOT / "dashboards", f"dashboard provider path {prov['options']['path']} is not ../../dashboards")
    dashboards = sorted((ROOT / "dashboards").rglob("*.json"))
    for d in dashboards:
        json.loads(d.read_text())
    say(f"compose: valid against the Compose Specification schema; {len(services)} services, "
        f"every mounted file exists, Prometheus scrapes "
        f"periscope:{listen_port}, promtool accepts "
        f"prometheus.yml ({rule_count} rule file(s) found), ports and endpoints line up; Grafana provisions {len(dashboards)} "
        f"dashboard JSON file(s) from dashboards/")


def dockerfile_checks(path: Path) -> None:
    text = path.read_text()
    base = re.search(r"^FROM (\S+)", text, flags=re.M).group(1)
    check(":" in base and not base.endswith(":latest"), f"base image {base} not pinned")
    ignore = (path.parent / (path.name + ".dockerignore")).read_text().split()
    allowed = {l[1:] for l in ignore if l.startswith("!")}
    for src in re.findall(r"^COPY (\S+) \S+", text, flags=re.M):
        check(src in allowed, f"{path.name}: COPY {src} is excluded by the .dockerignore")
        check(src == "target/release/periscope" or (ROOT / src).exists(), f"COPY {src}: missing")


# ------------------------------------------------------------------------------------- main

def capabilities() -> None:
    caps = readme_capabilities()
    unit = unit_settings(DEPLOY / "systemd" / "periscope.service")
    for key in ["CapabilityBoundingSet", "AmbientCapabilities"]:
        check(sorted(unit[key][0].split()) == sorted(caps), f"systemd unit {key}: {unit[key]}")
    plain = [d for f in sorted((DEPLOY / "kubernetes").glob("*.yaml")) for d in load_docs(f)]
    for origin, docs in [("deploy/kubernetes", plain), ("helm chart", helm_render({}))]:
        ds = by_kind(docs)["DaemonSet"]
        for c in ds["spec"]["template"]["spec"]["containers"]:
            added = c["securityContext"]["capabilities"]["add"]
            check(sorted(added) == sorted(k8s_caps(caps)), f"{origin}: {added}")
    stack = yaml.safe_load((DEPLOY / "compose" / "docker-compose.yaml").read_text())
    added = stack["services"]["periscope"]["cap_add"]
    check(sorted(added) == sorted(k8s_caps(caps)), f"compose: {added}")
    say(f"docs/deploy.md's Privileges table ({', '.join(caps)}) has one row each; the unit, the "
        f"manifests, the chart and compose grant exactly these")


COMMANDS = {
    "kubernetes": kubernetes,
    "helm": helm,
    "kubernetes-live": kubernetes_live,
    "systemd": systemd,
    "collector": collector,
    "compose": compose,
    "capabilities": capabilities,
}


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(__doc__, file=sys.stderr)
        print("subcommands:", ", ".join(COMMANDS), file=sys.stderr)
        return 2
    args = sys.argv[2:]
    try:
        COMMANDS[sys.argv[1]](*[os.path.realpath(a) for a in args])
    except Failure as e:
        print(f"[deploy] FAIL: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

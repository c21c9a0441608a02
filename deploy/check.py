"""deploy/check: lints, renders and validates the Helm chart, the Dockerfile and the compose file.

Run through deploy/check, which installs the pinned tools first. Each check prints `ok` or
`FAIL` with the reason; the last line is `N passed, N failed`; the exit code is 1 on any failure.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any, Callable

import helm_python
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from chart import CHART, ROOT, load_values, render  # noqa: E402

KUBE_VERSIONS = ["1.29.0", "1.33.0"]
# Kinds kubernetes-validate has no schema for, allowed only because they are CRDs whose schemas
# deploy/test/validate-crds.mjs checks. Any other kind without a schema fails the check (an
# unknown kind, or an API version removed from Kubernetes, only warns in kubernetes-validate).
KNOWN_CRDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")}
VALUE_SETS = {name: CHART / "ci" / f"{name}-values.yaml" for name in ("default", "production", "minimal")}
TOOLS = Path(os.environ.get("DEPLOY_TOOLS_BIN", Path(sys.executable).parent))

passed: list[str] = []
failed: list[str] = []


def check(name: str) -> Callable[[Callable[[], None]], Callable[[], None]]:
    def run(fn: Callable[[], None]) -> Callable[[], None]:
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - every failure is reported, the run goes on
            failed.append(name)
            detail = str(e) if isinstance(e, AssertionError) else traceback.format_exc(limit=3)
            print(f"FAIL {name}\n     {detail.strip()}".replace("\n", "\n     "), flush=True)
        else:
            passed.append(name)
            print(f"ok   {name}", flush=True)
        return fn

    return run


def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def find(kind: str, objects: list[dict[str, Any]], name_suffix: str = "") -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"].endswith(name_suffix)]
    assert len(found) == 1, f"expected one {kind}{' *' + name_suffix if name_suffix else ''}, found {len(found)}"
    return found[0]


def kinds(objects: list[dict[str, Any]]) -> list[str]:
    return sorted(o["kind"] for o in objects)


RENDERED: dict[str, list[dict[str, Any]]] = {}
NOTES: dict[str, str] = {}

# ---------------------------------------------------------------------------------------------
# helm lint, strict, for every value set and both Kubernetes versions


for set_name, path in VALUE_SETS.items():
    for kv in KUBE_VERSIONS:

        @check(f"helm lint --strict ({set_name} values, Kubernetes {kv})")
        def _lint(path: Path = path, kv: str = kv) -> None:
            report = helm_python.lint(CHART, load_values([path]), strict=True, kube_version=f"v{kv}")
            bad = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2]
            assert not report.get("errors") and not bad, f"lint findings: {report}"


# ---------------------------------------------------------------------------------------------
# render every value set (install and upgrade)

for set_name, path in VALUE_SETS.items():

    @check(f"render ({set_name} values)")
    def _render(set_name: str = set_name, path: Path = path) -> None:
        objects, notes = render(load_values([path]))
        upgrade_objects, _ = render(load_values([path]), upgrade=True)
        assert kinds(objects) == kinds(upgrade_objects), "install and upgrade render different kinds"
        assert "Switchboard" in notes and "/ready" in notes, "NOTES.txt does not say how to connect"
        RENDERED[set_name] = objects
        NOTES[set_name] = notes


# ---------------------------------------------------------------------------------------------
# kubernetes-validate --strict against 1.29 and 1.33; CRDs against their own schemas


def validate_objects(set_name: str, objects: list[dict[str, Any]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / f"{set_name}.yaml"
        file.write_text(yaml.safe_dump_all(objects, sort_keys=False))
        cmd = [str(TOOLS / "kubernetes-validate"), "--strict"]
        for kv in KUBE_VERSIONS:
            cmd += ["-k", kv]
        out = run(cmd + [str(file)])
        lines = out.stdout.splitlines()
        errors = [line for line in lines if line.startswith(("ERROR", "FATAL"))]
        assert out.returncode == 0 and not errors, f"kubernetes-validate: {out.returncode}\n" + "\n".join(errors or lines)
        passes = [line for line in lines if line.startswith("INFO") and " passed " in line]
        warns = [line for line in lines if line.startswith("WARN")]
        crds = [o for o in objects if (o["apiVersion"], o["kind"]) in KNOWN_CRDS]
        plain = [o for o in objects if (o["apiVersion"], o["kind"]) not in KNOWN_CRDS]
        # Every non-CRD object must have passed against every version, and the only warnings
        # (no schema) must be the listed CRDs'.
        assert len(passes) == len(plain) * len(KUBE_VERSIONS), (
            f"{len(passes)} objects passed, expected {len(plain)} x {len(KUBE_VERSIONS)}:\n" + "\n".join(lines)
        )
        assert len(warns) == len(crds) * len(KUBE_VERSIONS), "unexpected warnings:\n" + "\n".join(warns)
        for w in warns:
            assert any(kind.lower() in w.lower() for _, kind in KNOWN_CRDS), f"a kind that is not a known CRD: {w}"
        if crds:
            crd_file = Path(tmp) / "crds.json"
            crd_file.write_text(json.dumps(crds))
            out = run(["node", str(ROOT / "deploy" / "test" / "validate-crds.mjs"), str(crd_file)])
            assert out.returncode == 0, f"CRD schema validation:\n{out.stdout}{out.stderr}"
            assert out.stdout.count("OK ") == len(crds), out.stdout


for set_name in VALUE_SETS:

    @check(f"kubernetes-validate --strict -k {' -k '.join(KUBE_VERSIONS)} + CRD schemas ({set_name} values)")
    def _validate(set_name: str = set_name) -> None:
        assert set_name in RENDERED, "not rendered"
        validate_objects(set_name, RENDERED[set_name])


@check("the validation fails on a kind that is not a known CRD, and on a removed API version")
def _validate_negative() -> None:
    bogus = [
        {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {}},
    ]
    removed = [{"apiVersion": "policy/v1beta1", "kind": "PodDisruptionBudget", "metadata": {"name": "p"},
                "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {"a": "b"}}}}]
    strict = [dict(RENDERED["default"][0], bogusField=1)]
    for objs in (bogus, removed, strict):
        try:
            validate_objects("negative", objs)
        except AssertionError:
            continue
        raise AssertionError(f"validation accepted {objs[0]['apiVersion']} {objs[0]['kind']}")


# ---------------------------------------------------------------------------------------------
# what the rendered objects must say


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return find("Deployment", objects)["spec"]["template"]["spec"]["containers"][0]


@check("default values: one pod, SQLite in a writable /data, generated secrets, hardened pod")
def _default() -> None:
    objs = RENDERED["default"]
    assert kinds(objs) == ["ConfigMap", "Deployment", "Secret", "Service", "ServiceAccount"], kinds(objs)
    dep = find("Deployment", objs)
    pod = dep["spec"]["template"]["spec"]
    c = container(objs)
    assert dep["spec"]["replicas"] == 1
    assert c["args"][:4] == ["serve", "--config=/etc/switchboard/switchboard.toml", "--listen=0.0.0.0:3000", "--shutdown-grace=30s"], c["args"]
    assert pod["terminationGracePeriodSeconds"] == 5 + 30 + 5
    assert c["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "5"]
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"] and pod["securityContext"]["runAsNonRoot"] is True
    assert {"name": "data", "mountPath": "/data"} in c["volumeMounts"]
    assert c["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert c["startupProbe"]["httpGet"]["path"] == "/health"
    env = {e["name"]: e for e in c["env"]}
    assert set(env) == {"SWITCHBOARD_NODE_ID", "SWITCHBOARD_JWT_SECRET", "SWITCHBOARD_API_KEY"}, set(env)
    secret = find("Secret", objs)
    for key in ("jwt-secret", "api-key"):
        assert len(base64.b64decode(secret["data"][key])) == 48, f"{key} not generated"
    toml = find("ConfigMap", objs)["data"]["switchboard.toml"]
    assert 'access = "claims"' in toml and 'log-format = "json"' in toml, toml


@check("production values: existingSecret, ingress-nginx stickiness, HPA on CPU and connections, PDB, monitoring, migration hook")
def _production() -> None:
    objs = RENDERED["production"]
    assert "Secret" not in kinds(objs), "the chart must not create a Secret with existingSecret"
    assert kinds(objs) == sorted(["ConfigMap", "ConfigMap", "Deployment", "HorizontalPodAutoscaler", "Ingress",
                                  "Job", "PodDisruptionBudget", "PrometheusRule", "Service", "ServiceAccount",
                                  "ServiceMonitor"]), kinds(objs)
    board = find("ConfigMap", objs, "-dashboard")
    assert board["metadata"]["labels"]["grafana_dashboard"] == "1", board["metadata"]
    shipped = (ROOT / "deploy" / "grafana" / "switchboard.json").read_text()
    assert json.loads(board["data"]["switchboard.json"]) == json.loads(shipped), "chart dashboard differs from deploy/grafana/switchboard.json (run deploy/grafana/dashboard.py)"
    dep = find("Deployment", objs)
    assert "replicas" not in dep["spec"], "the HPA owns replicas"
    pod = dep["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 10 + 45 + 5
    c = container(objs)
    assert "--shutdown-grace=45s" in c["args"]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in c["env"] if "secretKeyRef" in e.get("valueFrom", {})}
    assert set(refs) == {"SWITCHBOARD_JWT_SECRET", "SWITCHBOARD_API_KEY", "SWITCHBOARD_REDIS_URL",
                         "SWITCHBOARD_DATABASE_URL", "SWITCHBOARD_MONGODB_URL"}, set(refs)
    assert all(r["name"] == "switchboard-credentials" for r in refs.values())
    assert "optional" not in refs["SWITCHBOARD_JWT_SECRET"]
    ann = find("Ingress", objs)["metadata"]["annotations"]
    assert ann["nginx.ingress.kubernetes.io/affinity"] == "cookie"
    assert ann["nginx.ingress.kubernetes.io/session-cookie-name"] == "SBNODE"
    assert int(ann["nginx.ingress.kubernetes.io/proxy-read-timeout"]) == 3600
    hpa = find("HorizontalPodAutoscaler", objs)["spec"]
    assert [m["type"] for m in hpa["metrics"]] == ["Resource", "Pods"]
    assert hpa["metrics"][1]["pods"]["metric"]["name"] == "switchboard_connections"
    assert find("PodDisruptionBudget", objs)["spec"]["maxUnavailable"] == 1
    job = find("Job", objs)
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    jc = job["spec"]["template"]["spec"]["containers"][0]
    assert jc["args"] == ["migrate"]
    assert {e["name"] for e in jc["env"]} == {"SWITCHBOARD_DATABASE_URL", "SWITCHBOARD_MONGODB_URL"}
    sm = find("ServiceMonitor", objs)["spec"]
    assert sm["endpoints"][0]["port"] == "http" and sm["endpoints"][0]["path"] == "/metrics"
    assert sm["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    spread = pod["topologySpreadConstraints"]
    assert 'io("https://realtime.example.com"' in NOTES["production"], "NOTES.txt gives the ingress URL to connect to"
    assert [t["topologyKey"] for t in spread] == ["kubernetes.io/hostname", "topology.kubernetes.io/zone"]


@check("production values: PrometheusRule expressions are valid PromQL (promtool check rules)")
def _promtool() -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool not installed"
    rule = find("PrometheusRule", RENDERED["production"])
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "rules.yaml"
        f.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
        out = run([promtool, "check", "rules", str(f)])
        assert out.returncode == 0, out.stdout + out.stderr
        assert "SUCCESS: 8 rules found" in out.stdout, out.stdout


@check("minimal values: no PDB, HPA, Job, preStop or service account; public key mounted and passed")
def _minimal() -> None:
    objs = RENDERED["minimal"]
    assert kinds(objs) == ["ConfigMap", "Deployment", "Ingress", "Secret", "Service"], kinds(objs)
    c = container(objs)
    assert "lifecycle" not in c
    assert "--jwt-public-key-file=/etc/switchboard/jwt-public-key.pem" in c["args"]
    assert "BEGIN PUBLIC KEY" in find("ConfigMap", objs)["data"]["jwt-public-key.pem"]
    assert "SWITCHBOARD_JWT_SECRET" not in {e["name"] for e in c["env"]}
    assert find("Deployment", objs)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 10
    assert not any(
        k.startswith("nginx.ingress") for k in find("Ingress", objs)["metadata"].get("annotations") or {})


# Wrong values that must fail at install time (values.schema.json or the chart's own checks).
REFUSED = {
    "replicaCount as a string": {"replicaCount": "3"},
    "an unknown top-level key": {"replicas": 3},
    "a secret in config": {"config": {"jwt-secret": "x"}},
    "listen in config": {"config": {"listen": "0.0.0.0:1"}},
    "an unknown access mode": {"config": {"access": "everyone"}},
    "a duration without a unit": {"config": {"presence-ttl": "30"}},
    "a bad rate limit": {"config": {"rate-limit": "fast"}},
    "a non-redis Redis URL": {"redis": {"url": "http://redis:6379"}},
    "a MySQL database URL": {"database": {"url": "mysql://db/switchboard"}},
    "an ingress timeout below the ping interval": {"ingress": {"timeoutSeconds": 10}},
    "3 replicas without Redis": {"replicaCount": 3, "database": {"url": "postgres://db/sb"}},
    "3 replicas on SQLite": {"replicaCount": 3, "redis": {"url": "redis://redis:6379"}},
    "autoscaling without Redis": {"autoscaling": {"enabled": True}, "database": {"url": "postgres://db/sb"}},
    "both a public key and a secret": {"auth": {"jwtSecret": "s", "jwtPublicKey": "-----BEGIN PUBLIC KEY-----\nx\n-----END PUBLIC KEY-----\n"}},
    "a zero shutdown grace": {"shutdownGraceSeconds": 0},
    "a probe path without /": {"probes": {"readiness": {"path": "ready"}}},
}


@check(f"{len(REFUSED)} wrong value sets are refused at render time with a message")
def _refused() -> None:
    accepted = []
    for what, values in REFUSED.items():
        try:
            render(values)
        except helm_python.HelmError as e:
            assert str(e).strip(), what
            continue
        accepted.append(what)
    assert not accepted, f"accepted: {accepted}"


@check("the chart's secrets never appear in NOTES.txt")
def _notes_no_secret() -> None:
    values = {"auth": {"jwtSecret": "not-in-notes-1", "apiKey": "not-in-notes-2"}}
    _, notes = render(values)
    assert "not-in-notes" not in notes


# ---------------------------------------------------------------------------------------------
# names the binary must know: env variables and config keys (it ignores unknown variables)

BIN = Path(os.environ.get("SWITCHBOARD_BIN", ROOT / "target" / "debug" / "switchboard"))


@check("every SWITCHBOARD_* variable and config key the chart and compose file use is one the binary reads (serve --help)")
def _names() -> None:
    assert BIN.is_file() and os.access(BIN, os.X_OK), f"no switchboard binary at {BIN} (cargo build, or set SWITCHBOARD_BIN)"
    help_text = run([str(BIN), "serve", "--help"]).stdout
    known_env = set(re.findall(r"\[env:\s+(SWITCHBOARD_[A-Z_]+)=", help_text))
    known_flags = set(re.findall(r"^\s+--([a-z][a-z-]+)", help_text, re.M))
    assert len(known_env) > 20 and "listen" in known_flags, "could not read serve --help"
    used: dict[str, str] = {}
    for set_name, objects in RENDERED.items():
        for o in objects:
            if o["kind"] not in ("Deployment", "Job"):
                continue
            for c in o["spec"]["template"]["spec"]["containers"]:
                for e in c.get("env", []):
                    used.setdefault(e["name"], f"{o['kind']} ({set_name} values)")
                for a in c.get("args", []):
                    if a.startswith("--"):
                        flag = a[2:].split("=", 1)[0]
                        assert flag in known_flags, f"{o['kind']} ({set_name} values) passes --{flag}, which serve does not know"
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    for name, svc in compose["services"].items():
        env = svc.get("environment") or {}
        for k in env:
            used.setdefault(k, f"compose service {name}")
    image_env = re.findall(r"^ENV\s+(SWITCHBOARD_[A-Z_]+)=", (ROOT / "deploy" / "Dockerfile").read_text(), re.M)
    for k in image_env:
        used.setdefault(k, "deploy/Dockerfile")
    unknown = {k: where for k, where in used.items() if k.startswith("SWITCHBOARD_") and k not in known_env}
    assert not unknown, f"variables the binary does not read: {unknown}"
    schema = json.loads((CHART / "values.schema.json").read_text())
    keys = set(schema["properties"]["config"]["properties"])
    assert keys <= known_flags, f"config keys in values.schema.json that are not flags: {sorted(keys - known_flags)}"


# ---------------------------------------------------------------------------------------------
# Dockerfile, compose, load balancer


@check("hadolint deploy/Dockerfile (no findings)")
def _hadolint() -> None:
    out = run([str(TOOLS / "hadolint"), "--failure-threshold", "style", str(ROOT / "deploy" / "Dockerfile")])
    assert out.returncode == 0 and not out.stdout.strip(), out.stdout + out.stderr


@check("Dockerfile: the dependency layer's stub workspace is complete (cargo metadata --locked)")
def _docker_stub() -> None:
    # The first build stage copies only these manifests and writes stub sources: every
    # workspace member must be among them, or `cargo build --locked` fails in the image.
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    members = json.loads(run(["cargo", "metadata", "--no-deps", "--format-version", "1"],
                                 cwd=ROOT).stdout or "{}")
    names = sorted(Path(p["manifest_path"]).parent.name for p in members.get("packages", []))
    assert names, "cargo metadata found no package"
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        for f in ("Cargo.toml", "Cargo.lock"):
            shutil.copy(ROOT / f, t / f)
        for crate in names:
            assert f"COPY {crate}/Cargo.toml {crate}/Cargo.toml" in text, f"{crate}/Cargo.toml not copied"
            assert f"COPY {crate}/src {crate}/src" in text, f"{crate}/src not copied"
            (t / crate / "src").mkdir(parents=True)
            shutil.copy(ROOT / crate / "Cargo.toml", t / crate / "Cargo.toml")
            (t / crate / "src" / "main.rs").write_text("fn main() {}\n")
            (t / crate / "src" / "lib.rs").write_text("")
        out = run(["cargo", "metadata", "--locked", "--offline", "--no-deps", "--format-version", "1"], cwd=t)
        assert out.returncode == 0, out.stderr
    ignore = (ROOT / ".dockerignore").read_text().split()
    for crate in names:
        assert f"!{crate}/src/" in ignore and f"!{crate}/Cargo.toml" in ignore, f".dockerignore drops {crate}"


@check("docker-compose config validates deploy/compose.yaml (with and without the otel profile)")
def _compose() -> None:
    compose = shutil.which("docker-compose")
    assert compose, "docker-compose not installed"
    for extra in ([], ["--profile", "otel"]):
        out = run([compose, "-f", str(ROOT / "deploy" / "compose.yaml"), *extra, "config"])
        assert out.returncode == 0, out.stderr
    cfg = yaml.safe_load(out.stdout)
    services = cfg["services"]
    gateways = sorted(s for s in services if s.startswith("gateway-"))
    assert gateways == ["gateway-1", "gateway-2", "gateway-3"], gateways
    for g in gateways:
        svc = services[g]
        assert svc["depends_on"]["migrate"]["condition"] == "service_completed_successfully", g
        assert svc["read_only"] is True, g
        assert svc["stop_signal"] == "SIGTERM" and svc["stop_grace_period"], g
        env = svc["environment"]
        assert env["SWITCHBOARD_REDIS_URL"].startswith("redis://redis:6379"), g
        assert env["SWITCHBOARD_DATABASE_URL"].startswith("postgres://"), g
        assert env["SWITCHBOARD_NODE_ID"] == g
    assert services["migrate"]["command"] == ["migrate"]
    assert set(services) >= {"redis", "postgres", "migrate", "lb", "prometheus", "grafana", "otel-collector"}


@check("the load balancer config is valid (haproxy -c) and sticky, health-checked on /ready")
def _haproxy() -> None:
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    cfg = (ROOT / "deploy" / "haproxy" / "haproxy.cfg").read_text()
    assert re.search(r"^\s*cookie SBNODE insert indirect nocache", cfg, re.M), "no cookie stickiness"
    assert re.search(r"^\s*option httpchk GET /ready", cfg, re.M) or "http-check send meth GET uri /ready" in cfg
    assert re.search(r"^\s*timeout tunnel\s+3600s", cfg, re.M), "WebSocket tunnel timeout"
    out = run([haproxy, "-c", "-f", str(ROOT / "deploy" / "haproxy" / "haproxy.cfg")])
    assert out.returncode == 0, out.stdout + out.stderr


@check("deploy/grafana/switchboard.json type-checks against Grafana's Dashboard type (@grafana/schema + tsc)")
def _dashboard_types() -> None:
    out = run(["node", str(ROOT / "deploy" / "test" / "dashboard-types.mjs")])
    assert out.returncode == 0, out.stdout + out.stderr


@check("deploy/prometheus/alerts.yaml: promtool check rules and promtool test rules")
def _alerts() -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool not installed"
    here = ROOT / "deploy" / "prometheus"
    out = run([promtool, "check", "rules", str(here / "alerts.yaml")])
    assert out.returncode == 0, out.stdout + out.stderr
    out = run([promtool, "test", "rules", str(here / "alerts.test.yaml")], cwd=here)
    assert out.returncode == 0, out.stdout + out.stderr


@check("prometheus.yml is valid (promtool check config) and scrapes the three gateways")
def _prometheus() -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool not installed"
    out = run([promtool, "check", "config", "--syntax-only", str(ROOT / "deploy" / "prometheus" / "prometheus.yml")])
    assert out.returncode == 0, out.stdout + out.stderr
    cfg = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    targets = [t for job in cfg["scrape_configs"] for sc in job.get("static_configs", []) for t in sc["targets"]]
    assert {"gateway-1:3000", "gateway-2:3000", "gateway-3:3000"} <= set(targets), targets


print(f"{len(passed)} passed, {len(failed)} failed")
sys.exit(1 if failed else 0)

"""The Kubernetes manifests, checked as kustomize renders them: deploy/kubernetes/ (the base and
its optional components) and deploy/kubernetes-example/ (an overlay).

No cluster, Prometheus Operator or Grafana runs here. In their place:
- `kubectl kustomize` renders the base, the overlay, and the overlay with its components (probe,
  discovery and sharded are alternatives: each scrapes every project, so they render apart);
  sharded's StatefulSet runs the Deployment's pod, field for field, but for the shard flags;
- the core kinds validate against the Kubernetes OpenAPI schemas, offline and strict
  (kubernetes-validate: an unknown field is an error, as `kubectl apply --validate=strict` makes it);
- the operator's kinds (ServiceMonitor, Probe, ScrapeConfig, PrometheusRule) are checked for the
  fields its CRDs require and for how the operator turns them into a scrape (job label, port, address);
- the rules inside the PrometheusRule pass `promtool check rules` and equal grafana/rules/;
  the dashboard ConfigMaps hold grafana/dashboards/*.json byte for byte (test_grafana.py checks those);
- the config in the ConfigMap passes the exporter's own --check-config with the container's
  args, the ConfigMap and the Secret's keys laid out as the pod mounts them;
- every object stays under the 256 KiB that `kubectl apply` (client side) can keep in its
  last-applied-configuration annotation.

kubectl is Debian's kubernetes-client (scripts/test installs it) or any other. Without it these
tests skip, unless OMS_EXPORTER_REQUIRE_E2E=1 (set in CI), where that is a failure. The base
renders with any kubectl; the overlay needs kubectl 1.21 or later (kustomize 4: components).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

import oms_exporter
from oms_exporter.catalog import ALL_METRIC_NAMES
from oms_exporter.metrics import SELF_FAMILIES
from oms_exporter.settings import Target, parse_duration
from oms_exporter.shards import ordinal
from tests.conftest import load_module, missing, promtool, require_binary, run_exporter_once
from tests.shipped import RULES, load_rules

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
BASE = DEPLOY / "kubernetes"
OVERLAY = DEPLOY / "kubernetes-example"
COMPONENTS = ("network-policy", "probe", "discovery", "sharded")
# The overlay renders with these components enabled: probe, discovery and sharded are alternatives.
PROBE_RENDERS = {"components": ("network-policy", "probe"), "discovery": ("network-policy", "discovery")}
COMPONENT_RENDERS = {**PROBE_RENDERS, "sharded": ("network-policy", "sharded")}
# Schemas of these Kubernetes versions (kubernetes-validate ships them): the oldest release still
# in wide use when this was written, and the newest the installed package knows.
K8S_VERSIONS = ("1.29.0", "latest")
MONITORING = "monitoring.coreos.com/v1"
MONITORING_GROUP = "monitoring.coreos.com/"  # v1 and v1alpha1 (ScrapeConfig)
# kubectl's client-side apply keeps the whole object in an annotation; annotations together may
# hold at most 256 KiB (apimachinery's TotalAnnotationSizeLimitB).
ANNOTATIONS_LIMIT = 262144
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
# The Prometheus Operator's Duration (its CRDs' pattern).
DURATION = re.compile(r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$")
LABELS = {"app.kubernetes.io/name": "oms-exporter", "app.kubernetes.io/instance": "oms-exporter"}
# The fields this project sets, each one a field of the CRD (monitoring.coreos.com/v1): a typo
# would be pruned by the API server without a word, and the scrape silently differ.
SERVICE_MONITOR_SPEC = {"jobLabel", "selector", "endpoints", "namespaceSelector"}
ENDPOINT = {"port", "path", "interval", "scrapeTimeout", "scheme", "params", "metricRelabelings", "relabelings"}
RELABEL = {"sourceLabels", "separator", "targetLabel", "regex", "modulus", "replacement", "action"}
PROBE_SPEC = {"jobName", "interval", "scrapeTimeout", "prober", "module", "targets"}
PROBER = {"url", "scheme", "path", "proxyUrl"}
# monitoring.coreos.com/v1alpha1 ScrapeConfig (jobName: prometheus-operator 2024 and later).
SCRAPE_CONFIG_SPEC = {"jobName", "staticConfigs", "fileSDConfigs", "httpSDConfigs", "relabelings", "metricsPath",
                      "scrapeInterval", "scrapeTimeout", "honorLabels", "honorTimestamps", "params", "scheme",
                      "metricRelabelings", "sampleLimit"}
HTTP_SD_CONFIG = {"url", "refreshInterval"}
HTTP_SD_URL = re.compile(r"^http(s)?://.+$")  # the CRD's pattern
RULE_GROUP = {"name", "interval", "rules", "limit", "partial_response_strategy"}
RULE = {"record", "alert", "expr", "for", "keep_firing_for", "labels", "annotations"}


# --- rendering -----------------------------------------------------------------------------------
def kubectl() -> str:
    return require_binary("kubectl", package="kubernetes-client")


def kubectl_minor(path: str) -> int:
    out = subprocess.run([path, "version", "--client", "-o", "json"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return int(re.match(r"\d+", json.loads(out.stdout)["clientVersion"]["minor"]).group())  # type: ignore[union-attr]


def modern_kubectl() -> str:
    """kubectl whose kustomize knows components, patches and replacements (kubectl 1.21+)."""
    path = kubectl()
    minor = kubectl_minor(path)
    if minor < 21:
        missing(f"kubectl 1.{minor} (kustomize 2) cannot render the overlay: it needs kubectl 1.21 or later")
    return path


def kustomize(path: str, folder: Path) -> list[dict[str, Any]]:
    out = subprocess.run([path, "kustomize", str(folder)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "Warning" not in out.stderr, out.stderr  # e.g. a field kustomize deprecates
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


@cache
def _rendered(which: str) -> tuple[dict[str, Any], ...]:
    if which == "base":
        return tuple(kustomize(kubectl(), BASE))
    if which == "overlay":
        return tuple(kustomize(modern_kubectl(), OVERLAY))
    enable = COMPONENT_RENDERS[which]
    path = modern_kubectl()
    # A copy of deploy/ whose overlay lists these components, as a user enables them.
    with tempfile.TemporaryDirectory(prefix="oms-k8s-") as tmp:
        copy = Path(tmp) / "deploy"
        shutil.copytree(DEPLOY, copy)
        k = copy / "kubernetes-example" / "kustomization.yaml"
        text = k.read_text(encoding="utf-8")
        listed = re.findall(r"^  # - \.\./kubernetes/components/(\S+)", text, flags=re.MULTILINE)
        assert sorted(listed) == sorted(COMPONENTS), "the overlay should list every component, commented out"
        for name in enable:
            text = text.replace(f"  # - ../kubernetes/components/{name} ", f"  - ../kubernetes/components/{name} ")
        k.write_text(text, encoding="utf-8")
        return tuple(kustomize(path, copy / "kubernetes-example"))


def rendered(which: str) -> list[dict[str, Any]]:
    return [json.loads(json.dumps(doc)) for doc in _rendered(which)]  # a copy a test may change


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


RENDERS = ("base", "overlay", *COMPONENT_RENDERS)


# --- the generated files -----------------------------------------------------------------------
def load_generator() -> ModuleType:
    return load_module(ROOT / "scripts" / "generate_kubernetes.py")


def test_generated_files_are_current() -> None:
    files = load_generator().render()
    for path, text in files.items():
        assert path.read_text(encoding="utf-8") == text, (
            f"{path.relative_to(ROOT)} is stale: run python scripts/generate_kubernetes.py")
    on_disk = set((BASE / "generated").iterdir())
    assert on_disk == {p for p in files if p.parent == BASE / "generated"}, "a generated file without a source"


def test_generator_check_mode() -> None:
    res = subprocess.run([sys.executable, "scripts/generate_kubernetes.py", "--check"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr


def test_base_lists_every_generated_file() -> None:
    k = yaml.safe_load((BASE / "kustomization.yaml").read_text(encoding="utf-8"))
    generated = {f"generated/{p.name}" for p in (BASE / "generated").iterdir()}
    assert generated <= set(k["resources"])
    for resource in k["resources"]:
        assert (BASE / resource).is_file(), resource  # files only: kustomize 2 reads no folder there


def test_dashboard_config_maps_hold_the_dashboards() -> None:
    docs = rendered("base")
    maps = {d["metadata"]["name"]: d for d in of_kind(docs, "ConfigMap") if "grafana_dashboard" in
            d["metadata"].get("labels", {})}
    files = sorted((ROOT / "grafana" / "dashboards").glob("*.json"))
    assert len(maps) == len(files) == 3
    for path in files:
        cm = maps[f"grafana-dashboard-{path.stem}"]
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"  # a string, as the sidecar compares it
        assert cm["data"] == {path.name: path.read_text(encoding="utf-8")}
        assert json.loads(cm["data"][path.name])["uid"]


def test_prometheus_rule_holds_the_rules() -> None:
    rule = one(rendered("base"), "PrometheusRule")
    sources = sorted(p for p in RULES.glob("*.yml") if not p.name.endswith(".test.yml"))
    expected = [g for p in sources for g in yaml.safe_load(p.read_text(encoding="utf-8"))["groups"]]
    assert rule["spec"]["groups"] == expected
    assert sum(len(g["rules"]) for g in expected) == sum(len(load_rules(p)) for p in sources)


def test_rules_of_the_prometheus_rule_pass_promtool(tmp_path: Path) -> None:
    rule = one(rendered("base"), "PrometheusRule")
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False), encoding="utf-8")
    res = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    n = sum(len(g["rules"]) for g in rule["spec"]["groups"])
    assert f"{n} rules found" in res.stdout, res.stdout


# --- what renders --------------------------------------------------------------------------------
def test_base_renders() -> None:
    docs = rendered("base")
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["ConfigMap"] * 4 + ["Deployment", "PrometheusRule", "Service", "ServiceMonitor"]
    for d in docs:
        assert LABELS.items() <= d["metadata"]["labels"].items(), d["metadata"]["name"]
        assert "namespace" not in d["metadata"]  # the overlay chooses it


def test_overlay_renders() -> None:
    docs = rendered("overlay")
    namespace = one(docs, "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    ns = namespace["metadata"]["name"]
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {ns}
    assert not {"Probe", "ScrapeConfig", "NetworkPolicy"} & {d["kind"] for d in docs}  # optional, off by default
    image = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == f"registry.example.com/oms-exporter:{oms_exporter.__version__}"
    for d in docs:
        if d["apiVersion"].startswith(MONITORING_GROUP):  # what kube-prometheus-stack selects by
            assert d["metadata"]["labels"]["release"] == "kube-prometheus-stack", d["kind"]
        else:
            assert "release" not in d["metadata"]["labels"], d["kind"]
    config = config_map_of(docs)
    assert config["metadata"]["name"] != config_map_of(rendered("base"))["metadata"]["name"]  # replaced: a new hash


@pytest.mark.parametrize("which", PROBE_RENDERS)
def test_overlay_with_its_components_renders(which: str) -> None:
    docs = rendered(which)
    scrapes = {"components": "Probe", "discovery": "ScrapeConfig"}
    assert {d["kind"] for d in docs} >= {scrapes[which], "NetworkPolicy", "ServiceMonitor"}
    assert not set(scrapes.values()) - {scrapes[which]} & {d["kind"] for d in docs}  # one or the other
    args = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args.count("--oms.min-interval=50s") == 1
    for d in docs:
        if d["apiVersion"].startswith(MONITORING_GROUP):
            assert d["metadata"]["labels"]["release"] == "kube-prometheus-stack", d["kind"]


# --- core kinds against the Kubernetes schemas ------------------------------------------------------
CORE_KINDS = {"base": {"ConfigMap", "Deployment", "Service"},
              "overlay": {"ConfigMap", "Deployment", "Service", "Namespace"},
              "components": {"ConfigMap", "Deployment", "Service", "Namespace", "NetworkPolicy"},
              "discovery": {"ConfigMap", "Deployment", "Service", "Namespace", "NetworkPolicy"},
              "sharded": {"ConfigMap", "StatefulSet", "Service", "Namespace", "NetworkPolicy"}}


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("which", RENDERS)
def test_core_kinds_validate_against_the_kubernetes_schemas(which: str, version: str) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")  # the [test] extra
    if version == "latest":
        version = kubernetes_validate.latest_version()
    seen = set()
    for d in rendered(which):
        if not d["apiVersion"].startswith(MONITORING_GROUP):
            kubernetes_validate.validate(d, version, strict=True)
            seen.add(d["kind"])
    assert seen == CORE_KINDS[which]


def test_the_schema_check_catches_a_misspelt_field() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    d = one(rendered("base"), "Deployment")
    d["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesytem"] = True
    with pytest.raises(kubernetes_validate.ValidationError, match="readOnlyRootFilesytem"):
        kubernetes_validate.validate(d, K8S_VERSIONS[0], strict=True)


@pytest.mark.parametrize("which", RENDERS)
def test_every_object_fits_kubectl_apply_annotation(which: str) -> None:
    """Client-side `kubectl apply` keeps each object as compact JSON in an annotation (Go's
    encoder: <, > and & escaped): the largest, the tasks dashboard, is ~100 KB of 256 KiB."""
    for d in rendered(which):
        text = json.dumps(d, separators=(",", ":"), ensure_ascii=False)
        text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
        others = sum(len(k) + len(v) for k, v in d["metadata"].get("annotations", {}).items())
        size = len(LAST_APPLIED) + len(text.encode()) + others
        assert size < ANNOTATIONS_LIMIT, (d["kind"], d["metadata"]["name"], size)


# --- the Deployment (with components/sharded, a StatefulSet of the same pod) ------------------------
def workload(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (w,) = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]
    return w


def pod_spec(docs: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = workload(docs)["spec"]["template"]["spec"]
    return spec


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (c,) = pod_spec(docs)["containers"]
    return c  # type: ignore[no-any-return]


def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text(encoding="utf-8")


@pytest.mark.parametrize("which", RENDERS)
def test_deployment_security(which: str) -> None:
    docs = rendered(which)
    pod = pod_spec(docs)
    c = container(docs)
    user, group = re.findall(r"^USER\s+(\d+):(\d+)$", dockerfile(), re.MULTILINE)[-1]
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False
    assert pod["securityContext"] == {"runAsNonRoot": True, "runAsUser": int(user), "runAsGroup": int(group),
                                      "fsGroup": int(group), "seccompProfile": {"type": "RuntimeDefault"}}
    assert c["securityContext"] == {"runAsNonRoot": True, "allowPrivilegeEscalation": False,
                                    "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}
    # The "restricted" Pod Security Standard: no host namespaces, ports or paths; only these volumes.
    assert not {"hostNetwork", "hostPID", "hostIPC"} & set(pod)
    assert all({"configMap", "secret"} & set(v) for v in pod["volumes"])
    assert "hostPort" not in c["ports"][0]
    assert "emptyDir" not in json.dumps(pod)  # it writes no file


@pytest.mark.parametrize("which", RENDERS)
def test_deployment_ports_probes_and_resources(which: str) -> None:
    docs = rendered(which)
    c = container(docs)
    (port,) = c["ports"]
    expose = re.search(r"^EXPOSE (\d+)$", dockerfile(), re.MULTILINE)
    assert expose and port == {"name": "metrics", "containerPort": int(expose.group(1)), "protocol": "TCP"}
    assert "--web.listen-address" not in " ".join(c["args"])  # the default port, the image's
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}, probe
    limits, requests = c["resources"]["limits"], c["resources"]["requests"]
    assert requests["memory"] == "128Mi" and limits["memory"] == "384Mi"
    # docs/performance.md, "Scaling": peak RSS 309 MB at 100,000 tasks (liveness); the limit keeps 25 % above it.
    assert 309 * 1.2 < 384 * 1.048576
    assert limits["cpu"] == "1" and requests["cpu"]


def test_image_of_the_base_is_this_version() -> None:
    assert container(rendered("base"))["image"] == f"oms-exporter:{oms_exporter.__version__}"


@pytest.mark.parametrize("which", RENDERS)
def test_termination_grace_lets_a_scrape_finish(which: str) -> None:
    docs = rendered(which)
    timeouts = [e["scrapeTimeout"] for e in one(docs, "ServiceMonitor")["spec"]["endpoints"]]
    timeouts += [p["spec"]["scrapeTimeout"] for p in of_kind(docs, "Probe") + of_kind(docs, "ScrapeConfig")]
    assert pod_spec(docs)["terminationGracePeriodSeconds"] > max(parse_duration(t) for t in timeouts) + 10


def mounts(docs: list[dict[str, Any]]) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """volume name -> (its mount, the volume)."""
    volumes = {v["name"]: v for v in pod_spec(docs)["volumes"]}
    return {m["name"]: (m, volumes[m["name"]]) for m in container(docs)["volumeMounts"]}


def config_map_of(docs: list[dict[str, Any]]) -> dict[str, Any]:
    name = mounts(docs)["config"][1]["configMap"]["name"]
    (cm,) = [d for d in of_kind(docs, "ConfigMap") if d["metadata"]["name"] == name]
    return cm


@pytest.mark.parametrize("which", RENDERS)
def test_config_and_secret_are_mounted_read_only(which: str) -> None:
    docs = rendered(which)
    m = mounts(docs)
    assert set(m) == {"config", "keys"}
    for mount, _ in m.values():
        assert mount["readOnly"] is True
    keys = m["keys"][1]["secret"]
    assert keys["secretName"] == "oms-exporter-keys" and keys["defaultMode"] == 0o440
    config_arg = [a for a in container(docs)["args"] if a.startswith("--config.file=")]
    assert config_arg == [f"--config.file={m['config'][0]['mountPath']}/oms.yml"]
    assert "oms.yml" in config_map_of(docs)["data"]


SECRET_FIELDS = [f"{f}_file" for f in ("auth_token", "ak", "sk", "security_token", "iam_password")]


@pytest.mark.slow  # the program as a process, per render
@pytest.mark.parametrize("which", RENDERS)
def test_config_passes_the_exporters_check(which: str, tmp_path: Path) -> None:
    """`oms-exporter --check-config` with the container's args, on the files as the pod sees them:
    the ConfigMap's and the Secret's mount paths laid out under tmp_path, the Secret holding a
    dummy value for each key the config reads."""
    docs = rendered(which)
    m = mounts(docs)
    config_dir, secret_dir = m["config"][0]["mountPath"], m["keys"][0]["mountPath"]
    config = yaml.safe_load(config_map_of(docs)["data"]["oms.yml"])
    assert config["targets"]
    for target in config["targets"]:
        assert set(target) <= set(Target.model_fields), target
        files = [target[f] for f in SECRET_FIELDS if f in target]
        assert files, f"{target['name']}: credentials belong in the Secret, as files"
        assert not {f.removesuffix("_file") for f in SECRET_FIELDS} & set(target), "a secret in the ConfigMap"
        for path in files:
            assert Path(path).parent == Path(secret_dir), path
            key = tmp_path / secret_dir.lstrip("/") / Path(path).name
            key.parent.mkdir(parents=True, exist_ok=True)
            key.write_text("dummy-value\n", encoding="utf-8")
    at = tmp_path / config_dir.lstrip("/")
    at.mkdir(parents=True)
    text = config_map_of(docs)["data"]["oms.yml"].replace(f"{secret_dir}/", f"{tmp_path}{secret_dir}/")
    (at / "oms.yml").write_text(text, encoding="utf-8")
    args = [a.replace(f"={config_dir}/", f"={at}/") for a in container(docs)["args"]]
    # components/sharded: this host's name is no StatefulSet pod's; a pod's ordinal instead.
    args = [a.replace("--shard.index=auto", "--shard.index=2") for a in args]
    res = run_exporter_once("--check-config", *args, cwd=ROOT, timeout=60)
    assert res.returncode == 0, res.stderr
    for target in config["targets"]:
        assert f"target {target['name']}: project {target['project_id']}" in res.stdout, res.stdout


# --- Service, ServiceMonitor, Probe, PrometheusRule, NetworkPolicy --------------------------------
def duration(value: str) -> float:
    assert DURATION.match(value) and value != "0", value
    return parse_duration(value)


def readme_scrape_advice() -> tuple[str, str]:
    """scrape_interval and scrape_timeout of the README's "Point Prometheus at it" job."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text[text.index("Point Prometheus at it"):]
    interval = re.search(r"scrape_interval: (\S+)", block)
    timeout = re.search(r"scrape_timeout: (\S+)", block)
    assert interval and timeout
    return interval.group(1), timeout.group(1)


@pytest.mark.parametrize("which", RENDERS)
def test_service_monitor_scrapes_the_service(which: str) -> None:
    docs = rendered(which)
    svc, sm = one(docs, "Service"), one(docs, "ServiceMonitor")
    assert set(sm["spec"]) <= SERVICE_MONITOR_SPEC
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert svc["spec"]["selector"] == workload(docs)["spec"]["template"]["metadata"]["labels"]
    (port,) = svc["spec"]["ports"]
    assert port["targetPort"] == container(docs)["ports"][0]["name"]
    # OmsExporterDown selects job="oms-exporter": the job is the value of the jobLabel label.
    assert svc["metadata"]["labels"][sm["spec"]["jobLabel"]] == "oms-exporter"
    assert 'up{job="oms-exporter"}' in (RULES / "oms-alerts.yml").read_text(encoding="utf-8")
    (endpoint,) = sm["spec"]["endpoints"]
    assert set(endpoint) <= ENDPOINT
    assert endpoint["port"] == port["name"] and endpoint["path"] == "/metrics"
    assert (endpoint["interval"], endpoint["scrapeTimeout"]) == readme_scrape_advice()
    assert duration(endpoint["scrapeTimeout"]) <= duration(endpoint["interval"])  # Prometheus requires it
    for relabel in endpoint.get("metricRelabelings", []):
        assert set(relabel) <= RELABEL and relabel["action"] in ("keep", "drop", "replace")


def test_probe_scrapes_every_project_through_the_service() -> None:
    docs = rendered("components")
    probe, svc = one(docs, "Probe"), one(docs, "Service")
    spec = probe["spec"]
    assert set(spec) <= PROBE_SPEC and set(spec["prober"]) <= PROBER
    (port,) = svc["spec"]["ports"]
    # Prometheus scrapes from its own namespace: the Service's full name.
    assert spec["prober"]["url"] == f"{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc:{port['port']}"
    assert spec["prober"]["path"] == "/probe" and "module" not in spec  # no ?module= for the exporter
    assert spec["jobName"] == "oms"  # as examples/prometheus/probe-many-projects.yml
    assert (spec["interval"], spec["scrapeTimeout"]) == readme_scrape_advice()
    names = {t["name"] for t in yaml.safe_load(config_map_of(docs)["data"]["oms.yml"])["targets"]}
    static = spec["targets"]["staticConfig"]["static"]
    assert static and set(static) <= names, (static, names)


def test_scrape_config_scrapes_every_discovered_project_through_the_service() -> None:
    docs = rendered("discovery")
    spec, svc = one(docs, "ScrapeConfig")["spec"], one(docs, "Service")
    assert one(docs, "ScrapeConfig")["apiVersion"] == "monitoring.coreos.com/v1alpha1"
    assert set(spec) <= SCRAPE_CONFIG_SPEC
    (sd,) = spec["httpSDConfigs"]
    assert set(sd) <= HTTP_SD_CONFIG and HTTP_SD_URL.match(sd["url"])
    duration(sd["refreshInterval"])
    (port,) = svc["spec"]["ports"]
    # Prometheus asks from its own namespace: the Service's full name. The exporter answers each
    # group with the address it was reached at, so the scrapes go to the same Service.
    assert sd["url"] == f"http://{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc:{port['port']}/discovery"
    assert spec["metricsPath"] == "/probe" and "params" not in spec  # ?target= comes from __param_target
    assert not {"staticConfigs", "fileSDConfigs"} & set(spec)
    assert spec["jobName"] == "oms"  # as the Probe and examples/prometheus/discovery.yml
    assert (spec["scrapeInterval"], spec["scrapeTimeout"]) == readme_scrape_advice()
    assert duration(spec["scrapeTimeout"]) <= duration(spec["scrapeInterval"])
    # As examples/prometheus/discovery.yml: the exporter's project_id, region and project_name
    # kept once, and the instance named after the target.
    assert spec["honorLabels"] is True
    (relabel,) = spec["relabelings"]
    assert set(relabel) <= RELABEL
    assert relabel == {"sourceLabels": ["__param_target"], "targetLabel": "instance"}
    example = yaml.safe_load((ROOT / "examples" / "prometheus" / "discovery.yml").read_text(encoding="utf-8"))
    (job,) = [j for j in example["scrape_configs"] if j["job_name"] == spec["jobName"]]
    assert job["relabel_configs"] == [{"source_labels": ["__param_target"], "target_label": "instance"}]
    assert job["honor_labels"] is True and job["metrics_path"] == spec["metricsPath"]


def test_scrape_config_follows_the_overlays_namespace(tmp_path: Path) -> None:
    """The overlay's replacements write the Service's namespace into the URL: another namespace
    in the overlay moves the URL with it."""
    path = modern_kubectl()
    copy = tmp_path / "deploy"
    shutil.copytree(DEPLOY, copy)
    k = copy / "kubernetes-example" / "kustomization.yaml"
    text = k.read_text(encoding="utf-8").replace("namespace: oms-exporter", "namespace: observability")
    text = text.replace("  # - ../kubernetes/components/discovery ", "  - ../kubernetes/components/discovery ")
    k.write_text(text, encoding="utf-8")
    (sd,) = one(kustomize(path, copy / "kubernetes-example"), "ScrapeConfig")["spec"]["httpSDConfigs"]
    assert sd["url"] == "http://oms-exporter.observability.svc:10066/discovery"


@pytest.mark.parametrize("which", PROBE_RENDERS)
def test_probe_components_keep_only_the_exporters_own_metrics_from_metrics(which: str) -> None:
    (endpoint,) = one(rendered(which), "ServiceMonitor")["spec"]["endpoints"]
    (keep,) = endpoint["metricRelabelings"]
    assert keep["sourceLabels"] == ["__name__"] and keep["action"] == "keep"
    regex = re.compile(keep["regex"])  # Prometheus anchors it
    own = {f.name for f in SELF_FAMILIES} | {f.name + s for f in SELF_FAMILIES for s in ("_bucket", "_sum", "_count")}
    for name in ALL_METRIC_NAMES:
        assert bool(regex.fullmatch(name)) == (name in own), name
    assert regex.fullmatch("process_resident_memory_bytes") and regex.fullmatch("python_info")


@pytest.mark.parametrize("which", RENDERS)
def test_prometheus_rule_has_what_the_operator_requires(which: str) -> None:
    rule = one(rendered(which), "PrometheusRule")
    assert set(rule["spec"]) == {"groups"}
    names = [g["name"] for g in rule["spec"]["groups"]]
    assert len(names) == len(set(names)) >= 2
    for group in rule["spec"]["groups"]:
        assert set(group) <= RULE_GROUP and group["rules"], group["name"]
        for r in group["rules"]:
            assert set(r) <= RULE and isinstance(r["expr"], str) and r["expr"].strip()
            assert ("record" in r) != ("alert" in r)
            if "for" in r:
                duration(r["for"])
            for field in ("labels", "annotations"):
                assert all(isinstance(v, str) for v in r.get(field, {}).values())


def test_network_policy_admits_prometheus_only() -> None:
    docs = rendered("components")
    policy = one(docs, "NetworkPolicy")["spec"]
    assert policy["podSelector"]["matchLabels"] == one(docs, "Deployment")["spec"]["selector"]["matchLabels"]
    assert policy["policyTypes"] == ["Ingress"]
    (rule,) = policy["ingress"]
    # One element with both selectors: pods labelled prometheus *in* the namespace monitoring.
    assert rule["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
                             "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}]
    assert rule["ports"] == [{"port": "metrics", "protocol": "TCP"}]


# --- components/sharded ------------------------------------------------------------------------------
SHARD_FLAGS = ("--shard.count=", "--shard.index=")


def test_sharded_runs_the_deployments_pod_as_a_statefulset_of_shards() -> None:
    docs = rendered("sharded")
    assert not {"Deployment", "Probe", "ScrapeConfig"} & {d["kind"] for d in docs}
    sts = one(docs, "StatefulSet")
    replicas = sts["spec"]["replicas"]
    flags = [a for a in container(docs)["args"] if a.startswith(SHARD_FLAGS)]
    # The replica count and --shard.count are the same number; each pod's ordinal is its shard.
    assert replicas > 1 and flags == [f"--shard.count={replicas}", "--shard.index=auto"]
    assert [ordinal(f"{sts['metadata']['name']}-{i}") for i in range(replicas)] == list(range(replicas))
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    assert sts["spec"]["updateStrategy"] == {"type": "RollingUpdate"}
    # The base's pod, field for field, but for the shard flags (statefulset.yaml is a copy of
    # deployment.yaml: this keeps them from drifting apart).
    base = one(rendered("overlay"), "Deployment")
    template = json.loads(json.dumps(sts["spec"]["template"]))
    c = template["spec"]["containers"][0]
    c["args"] = [a for a in c["args"] if not a.startswith(SHARD_FLAGS)]
    assert template == base["spec"]["template"]
    assert sts["spec"]["selector"] == base["spec"]["selector"]
    assert sts["metadata"]["labels"] == base["metadata"]["labels"]
    assert sts["spec"]["revisionHistoryLimit"] == base["spec"]["revisionHistoryLimit"]


def test_sharded_scrapes_every_pod_once_under_its_name() -> None:
    docs = rendered("sharded")
    # One Service, headless and governing the StatefulSet: each pod is one endpoint of it, and the
    # ServiceMonitor scrapes each endpoint (a second Service with the same labels would scrape twice).
    (svc,) = of_kind(docs, "Service")
    assert svc["spec"]["clusterIP"] == "None"
    assert one(docs, "StatefulSet")["spec"]["serviceName"] == svc["metadata"]["name"]
    (endpoint,) = one(docs, "ServiceMonitor")["spec"]["endpoints"]
    # Every series of /metrics: each pod serves its shard's projects there, and nothing else scrapes them.
    assert endpoint["path"] == "/metrics" and "metricRelabelings" not in endpoint
    (relabel,) = endpoint["relabelings"]
    assert set(relabel) <= RELABEL
    assert relabel == {"sourceLabels": ["__meta_kubernetes_pod_name"], "targetLabel": "instance"}


def test_sharded_component_says_to_change_replicas_and_shard_count_together() -> None:
    text = (BASE / "components" / "sharded" / "kustomization.yaml").read_text(encoding="utf-8")
    assert "replicas: 3" in text and "--shard.count=3" in text and "change both together" in text
    sts = (BASE / "components" / "sharded" / "statefulset.yaml").read_text(encoding="utf-8")
    assert len(re.findall(r"CHANGE with (--shard.count|replicas)", sts)) == 2

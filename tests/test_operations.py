"""Offline checks of what ships for operations: deploy/monitoring (Grafana dashboard, Prometheus
alert rules and their promtool unit tests, ServiceMonitor, PrometheusRule) and deploy/kserve
(ServingRuntime, InferenceService).

Every metric the dashboard and the rules query is one a real server serves: a real sarnn-serve
(uvicorn, the tiny watch model, auto routing and degradation on) takes a little traffic and its
/metrics is scraped; label matchers name only labels its series carry. Expressions and rule files
are parsed by `promtool` (Debian's prometheus package, scripts/system-deps.sh) where installed,
and the alerts' behaviour is checked by `promtool test rules`; without promtool, the structure.

kubernetes-validate knows the core kinds only. The operator and KServe kinds are checked against
small schemas of the fields these manifests use (unknown fields are errors), written from the
Prometheus Operator's and KServe's API types; their containers against the core Container schema
(the newest kubernetes-validate ships, strict).
"""

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from sarnn_serve.settings import Settings
from tests.service_fixtures import TINY_MODEL, LiveServer, start_server, stop_server

ROOT = Path(__file__).resolve().parent.parent
MONITORING = ROOT / "deploy" / "monitoring"
KSERVE = ROOT / "deploy" / "kserve"
K8S = ROOT / "deploy" / "k8s"
DASHBOARD = MONITORING / "grafana-dashboard.json"
ALERTS = MONITORING / "alerts.yml"
SETTINGS = {f"SARNN_{name.upper()}" for name in Settings.model_fields}
# series Prometheus makes itself, and the labels it adds to every scraped one
PROMETHEUS_SERIES = {"up"}
DEFINITIONS = "/api/_definitions.json"  # how kubernetes-validate's schemas name their types
META, CORE = "io.k8s.apimachinery.pkg.apis.meta.v1", "io.k8s.api.core.v1"
TARGET_LABELS = {"job", "instance"}
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$job": ".*", "$model": ".*"}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or"}
PROMQL_WORDS |= {"unless", "bool", "offset", "inf", "nan"}


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _one(path: Path) -> dict:
    (doc,) = _docs(path)
    return doc


def _dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _panels() -> list[dict]:
    return [p for p in _dashboard()["panels"] if p["type"] != "row"]


def _dashboard_exprs() -> list[str]:
    exprs = [t["expr"] for p in _panels() for t in p["targets"]]
    variables = _dashboard()["templating"]["list"]
    queries = [v["query"]["query"] for v in variables if v["type"] == "query"]
    return exprs + [re.fullmatch(r"label_values\((.*), \w+\)", q).group(1) for q in queries]


def _rules(groups: list[dict]) -> list[dict]:
    return [rule for group in groups for rule in group["rules"]]


def _alert_exprs() -> list[str]:
    return [rule["expr"] for rule in _rules(yaml.safe_load(ALERTS.read_text())["groups"])]


def _promql(expr: str) -> str:
    """A dashboard expression with Grafana's variables replaced by values PromQL parses."""
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    return expr


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (not functions, keywords or label names)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.])[a-zA-Z_:][\w:]*", expr):
        if not expr[match.end() :].lstrip().startswith("(") and match.group() not in PROMQL_WORDS:
            names.add(match.group())
    return names


def label_matchers(expr: str) -> Iterator[tuple[str, set[str]]]:
    """Each selector's metric name and the label names its matchers use."""
    for name, body in re.findall(r"([a-zA-Z_:][\w:]*)\{([^}]*)\}", expr):
        yield name, set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", body))


def test_metric_names_helper() -> None:
    expr = 'histogram_quantile(0.99, sum by (le, m) (rate(a_bucket{x="y(z)"}[5m]))) / on (m) b > 1'
    assert metric_names(expr) == {"a_bucket", "b"}
    assert dict(label_matchers('a{x="1", y=~"2"} + b{z!="3"}')) == {"a": {"x", "y"}, "b": {"z"}}


# --- what a real server serves ----------------------------------------------------------------


@pytest.fixture(scope="module")
def served_series(
    served_models: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, set[str]]:
    """Every series name a real server's /metrics serves after a little traffic, with the label
    names its samples carry (none for a family no sample of which exists yet)."""
    env = {"SARNN_ENGINE_PATH": "auto", "SARNN_DEGRADE_QUEUE_MS": "60000"}
    server: LiveServer = start_server(served_models, tmp_path_factory.mktemp("ops"), env)
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            sid = client.post("/v1/sessions", json={"model": TINY_MODEL, "degrade": True}).json()
            chunk = {"seq": 0, "inputs": [[0.5] * 6] * 4}
            assert client.post(f"/v1/sessions/{sid['id']}/chunks", json=chunk).status_code == 200
            assert client.get("/v1/sessions/no-such-session").status_code == 404
            assert client.delete(f"/v1/sessions/{sid['id']}").status_code in (200, 204)
            text = client.get("/metrics").text
    finally:
        stop_server(server)
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    series: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for suffix in suffixes.get(family.type, [""]):
            series.setdefault(family.name + suffix, set())
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels)
    return series


@pytest.mark.parametrize("source", ["dashboard", "alerts"])
def test_every_metric_queried_is_served(source: str, served_series: dict[str, set[str]]) -> None:
    exprs = _dashboard_exprs() if source == "dashboard" else _alert_exprs()
    assert exprs
    for expr in exprs:
        names = metric_names(_promql(expr))
        assert names, f"no metric in {expr!r}"
        unknown = names - set(served_series) - PROMETHEUS_SERIES
        assert not unknown, f"{expr!r}: not served: {sorted(unknown)}"
        for name, labels in label_matchers(expr):
            carried = served_series.get(name)
            if name in PROMETHEUS_SERIES or not carried:
                continue
            missing = labels - carried - TARGET_LABELS
            assert not missing, f"{expr!r}: {name} has no label {sorted(missing)}"


def test_metric_checks_catch_a_wrong_name(served_series: dict[str, set[str]]) -> None:
    """The checks above fail on a misspelt metric and on a label the series lacks."""
    assert "sarnn_request_total" not in served_series
    assert "sarnn_requests_total" in served_series
    assert "model" not in served_series["sarnn_requests_total"]
    assert {"endpoint", "status"} <= served_series["sarnn_requests_total"]


# --- the dashboard ----------------------------------------------------------------------------


def test_dashboard_structure() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] == "sarnn-serve" and dashboard["title"] == "sarnn-serve"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert {"job", "model"} <= set(variables)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    used: set[str] = set()
    for panel in _panels():
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["description"] and panel["fieldConfig"]["defaults"]["unit"]
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            used |= set(re.findall(r"\$\w+", target["expr"]))
    assert used <= set(GRAFANA_VARIABLES), used
    # panels do not overlap: every cell of the 24-column grid has one owner
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:
        g = panel["gridPos"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[x, y]}"
                cells[x, y] = panel["title"]


def test_dashboard_saving_is_not_shown_below_zero() -> None:
    """A model that updates every neuron spends more multiply-adds than dense (its coordinator):
    the panel shows no saving, and says why."""
    (panel,) = [p for p in _panels() if p["title"].startswith("Multiply-adds saved")]
    assert panel["targets"][0]["expr"].startswith("clamp_min(")
    assert "coordinator" in panel["description"]


def _promtool() -> str | None:
    return shutil.which("promtool")


def _run_promtool(*args: str, cwd: Path) -> None:
    run = subprocess.run([_promtool(), *args], capture_output=True, text=True, cwd=cwd)
    assert run.returncode == 0, run.stdout + run.stderr


def test_dashboard_expressions_parse(tmp_path: Path) -> None:
    if _promtool() is None:
        pytest.skip("promtool is not installed (scripts/system-deps.sh installs prometheus)")
    rules = [
        {"record": f"dashboard:expr_{i}", "expr": _promql(expr)}
        for i, expr in enumerate(_dashboard_exprs())
    ]
    (tmp_path / "dashboard.rules.yml").write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]})
    )
    _run_promtool("check", "rules", "dashboard.rules.yml", cwd=tmp_path)


# --- alert rules ------------------------------------------------------------------------------


def test_alert_rules_structure() -> None:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    alerts = _rules(groups)
    names = [rule["alert"] for rule in alerts]
    assert len(names) == len(set(names)) and "SarnnServeDown" in names
    for rule in alerts:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]
        assert 'job="sarnn-serve"' in rule["expr"], f"{rule['alert']}: other jobs' series"
    tested = set(re.findall(r"alertname: (\w+)", (MONITORING / "alerts.test.yml").read_text()))
    assert tested == set(names), "every alert has a promtool unit test"


def test_promtool_checks_and_unit_tests_the_rules() -> None:
    if _promtool() is None:
        pytest.skip("promtool is not installed (scripts/system-deps.sh installs prometheus)")
    _run_promtool("check", "rules", ALERTS.name, cwd=MONITORING)
    _run_promtool("test", "rules", "alerts.test.yml", cwd=MONITORING)


# --- Prometheus Operator and KServe kinds -----------------------------------------------------


def _core(name: str) -> dict:
    """A core type, e.g. "io.k8s.api.core.v1.Container", from kubernetes-validate's schemas."""
    return {"$ref": f"{DEFINITIONS}#/$defs/{name}"}


def _object(properties: dict, required: tuple[str, ...] = ()) -> dict:
    return {
        "type": "object",
        "properties": properties,
        "required": list(required),
        "additionalProperties": False,
    }


def _labels() -> dict:
    return {"type": "object", "additionalProperties": {"type": "string"}}


def _resource(api_version: str, kind: str, spec: dict) -> dict:
    return _object(
        {
            "apiVersion": {"const": api_version},
            "kind": {"const": kind},
            "metadata": _core(f"{META}.ObjectMeta"),
            "spec": spec,
        },
        ("apiVersion", "kind", "metadata", "spec"),
    )


STRING = {"type": "string"}
RULE = _object(
    {
        "alert": STRING,
        "record": STRING,
        "expr": STRING,
        "for": STRING,
        "labels": _labels(),
        "annotations": _labels(),
    },
    ("expr",),
)
SCHEMAS = {
    # monitoring.coreos.com/v1 ServiceMonitorSpec, Endpoint; PrometheusRuleSpec, RuleGroup, Rule
    "ServiceMonitor": _resource(
        "monitoring.coreos.com/v1",
        "ServiceMonitor",
        _object(
            {
                "selector": _core(f"{META}.LabelSelector"),
                "jobLabel": STRING,
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": _object(
                        {
                            "port": STRING,
                            "path": STRING,
                            "interval": STRING,
                            "scrapeTimeout": STRING,
                        },
                        ("port",),
                    ),
                },
            },
            ("selector", "endpoints"),
        ),
    ),
    "PrometheusRule": _resource(
        "monitoring.coreos.com/v1",
        "PrometheusRule",
        _object(
            {
                "groups": {
                    "type": "array",
                    "items": _object(
                        {
                            "name": STRING,
                            "interval": STRING,
                            "rules": {"type": "array", "items": RULE},
                        },
                        ("name", "rules"),
                    ),
                }
            },
            ("groups",),
        ),
    ),
    # serving.kserve.io/v1alpha1 ServingRuntimeSpec (with ServingRuntimePodSpec inlined)
    "ServingRuntime": _resource(
        "serving.kserve.io/v1alpha1",
        "ServingRuntime",
        _object(
            {
                "annotations": _labels(),
                "labels": _labels(),
                "supportedModelFormats": {
                    "type": "array",
                    "minItems": 1,
                    "items": _object(
                        {
                            "name": STRING,
                            "version": STRING,
                            "autoSelect": {"type": "boolean"},
                            "priority": {"type": "integer", "minimum": 1},
                        },
                        ("name",),
                    ),
                },
                "protocolVersions": {
                    "type": "array",
                    "items": {"enum": ["v1", "v2", "grpc-v1", "grpc-v2"]},
                },
                "multiModel": {"type": "boolean"},
                "containers": {"type": "array", "minItems": 1, "items": _core(f"{CORE}.Container")},
            },
            ("supportedModelFormats", "containers"),
        ),
    ),
    # serving.kserve.io/v1beta1 InferenceServiceSpec, PredictorSpec (ComponentExtensionSpec),
    # ModelSpec, ModelFormat
    "InferenceService": _resource(
        "serving.kserve.io/v1beta1",
        "InferenceService",
        _object(
            {
                "predictor": _object(
                    {
                        "minReplicas": {"type": "integer", "minimum": 0},
                        "maxReplicas": {"type": "integer", "minimum": 0},
                        "model": _object(
                            {
                                "modelFormat": _object(
                                    {"name": STRING, "version": STRING}, ("name",)
                                ),
                                "runtime": STRING,
                                "protocolVersion": {"enum": ["v1", "v2", "grpc-v1", "grpc-v2"]},
                                "storageUri": STRING,
                                "resources": _core(f"{CORE}.ResourceRequirements"),
                                "env": {"type": "array", "items": _core(f"{CORE}.EnvVar")},
                            },
                            ("modelFormat",),
                        ),
                    },
                    ("model",),
                )
            },
            ("predictor",),
        ),
    ),
}


def _validate(doc: dict) -> None:
    """`doc` against its kind's schema; core types from kubernetes-validate's newest (strict)."""
    pytest.importorskip("kubernetes_validate", reason="kubernetes-validate (dev extra)")
    import jsonschema
    from kubernetes_validate import utils
    from referencing import Registry, Resource

    path = f"kubernetes-json-schema/v{utils.latest_version()}-local-strict/_definitions.json"
    definitions = Resource.from_contents(utils.schema_contents(path, ""))
    registry = Registry().with_resource(DEFINITIONS, definitions)
    validator = jsonschema.Draft202012Validator(SCHEMAS[doc["kind"]], registry=registry)
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
    assert not errors, "; ".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors)


OPERATOR_AND_KSERVE = [
    MONITORING / "servicemonitor.yaml",
    MONITORING / "prometheusrule.yaml",
    KSERVE / "servingruntime.yaml",
    KSERVE / "inferenceservice.yaml",
]


@pytest.mark.parametrize("path", OPERATOR_AND_KSERVE, ids=lambda p: p.name)
def test_custom_kinds_validate_against_their_schemas(path: Path) -> None:
    _validate(_one(path))


def test_schemas_refuse_an_unknown_field() -> None:
    doc = _one(KSERVE / "inferenceservice.yaml")
    doc["spec"]["predictor"]["model"]["storageURI"] = "pvc://x/"  # the field is storageUri
    with pytest.raises(AssertionError, match="storageURI"):
        _validate(doc)
    runtime = _one(KSERVE / "servingruntime.yaml")
    runtime["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/readyz"
    with pytest.raises(AssertionError, match="paht"):
        _validate(runtime)


def test_prometheus_rule_holds_the_alert_rules(tmp_path: Path) -> None:
    rule = _one(MONITORING / "prometheusrule.yaml")
    assert rule["spec"]["groups"] == yaml.safe_load(ALERTS.read_text())["groups"]


def test_service_monitor_scrapes_the_service() -> None:
    monitor = _one(MONITORING / "servicemonitor.yaml")["spec"]
    service = _one(K8S / "service.yaml")
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    # the job label (the Service's name) is the one the rules select
    assert "jobLabel" not in monitor and service["metadata"]["name"] == "sarnn-serve"


@pytest.mark.parametrize("directory", [MONITORING, KSERVE], ids=lambda p: p.name)
def test_kustomization_lists_every_manifest(directory: Path) -> None:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    manifests = {p.name for p in directory.glob("*.yaml") if p.name != "kustomization.yaml"}
    assert set(kustomization["resources"]) == manifests
    for generator in kustomization.get("configMapGenerator", []):
        for file in generator["files"]:
            assert (directory / file).is_file(), file


def test_kserve_runtime_serves_what_the_inference_service_asks() -> None:
    runtime = _one(KSERVE / "servingruntime.yaml")
    isvc = _one(KSERVE / "inferenceservice.yaml")["spec"]["predictor"]
    spec = runtime["spec"]
    model = isvc["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"] in [
        {"name": f["name"], "version": f["version"]} for f in spec["supportedModelFormats"]
    ]
    assert model["protocolVersion"] in spec["protocolVersions"]
    # sessions live in one replica's memory unless the runtime is given Redis
    (container,) = spec["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    if env.get("SARNN_STORE") != "redis":
        assert isvc["minReplicas"] == isvc["maxReplicas"] == 1
    assert container["name"] == "kserve-container"
    assert set(env) <= SETTINGS, "an env var that is no setting"
    assert env["SARNN_MODEL_DIR"] == "/mnt/models"  # where KServe puts the storageUri
    port = int(env["SARNN_PORT"])
    assert [p["containerPort"] for p in container["ports"]] == [port]
    assert spec["annotations"]["prometheus.kserve.io/port"] == str(port)
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port}
    # the image's user, and settings that parse
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    user = re.findall(r"^USER (\d+)", dockerfile, re.M)[-1]
    assert str(container["securityContext"]["runAsUser"]) == user
    Settings(**{k.removeprefix("SARNN_").lower(): v for k, v in env.items()})
    kustomization = yaml.safe_load((KSERVE / "kustomization.yaml").read_text())
    assert container["image"].split(":")[0] in {i["name"] for i in kustomization["images"]}

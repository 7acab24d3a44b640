"""Offline checks of the Redis Sentinel variants: deploy/k8s-sentinel (a kustomize overlay of
deploy/k8s) and docker/compose.sentinel.yaml (an override of docker/compose.yaml).

The overlay is rendered by `kubectl kustomize` (kubectl's built-in kustomize, no cluster) and
every object validated strictly against the oldest and newest Kubernetes schemas that
kubernetes-validate ships; the pieces must fit together (the servers' Sentinel list names the
StatefulSet's pods, the master name and quorum agree, the network policy lets them talk). The
init script that chooses a pod's role runs here under sh, with a stand-in `redis-cli` playing
Sentinels that do not answer (the first start) or that name another master (after a failover):
nothing else can play a Kubernetes pod's peers on this machine. The compose override is merged
as compose merges (mappings deep, lists replaced) and checked the same way; its Sentinel
command runs under sh to write the config a Sentinel starts from.
"""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy_fixtures import DOCKER, ROOT, SETTINGS, redis_flags, schema_versions

OVERLAY = ROOT / "deploy" / "k8s-sentinel"
COMPOSE_SENTINEL = DOCKER / "compose.sentinel.yaml"
MONITOR = re.compile(r"^sentinel monitor (\S+) (\S+) 6379 (\d+)$", re.M)


# --- Kubernetes ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rendered() -> dict[tuple[str, str], dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (its kustomize renders the overlay)")
    run = subprocess.run(
        [kubectl, "kustomize", str(OVERLAY)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    docs = [d for d in yaml.safe_load_all(run.stdout) if d]
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def test_the_overlay_validates_against_kubernetes_schemas(rendered: dict) -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate (dev extra)")
    for version in schema_versions():
        for (kind, name), doc in rendered.items():
            try:
                kv.validate(doc, version, strict=True)
            except kv.ValidationError as exc:
                pytest.fail(f"{kind} {name} against {version}: {exc.message}")


def _containers(sts: dict) -> dict[str, dict]:
    return {c["name"]: c for c in sts["spec"]["template"]["spec"]["containers"]}


def _init_script(sts: dict) -> str:
    (init,) = sts["spec"]["template"]["spec"]["initContainers"]
    assert init["command"][:2] == ["sh", "-c"]
    return init["command"][2]


def test_servers_find_the_master_through_the_sentinel_pods(rendered: dict) -> None:
    sts = rendered[("StatefulSet", "sarnn-redis")]
    pods = sts["spec"]["replicas"]
    assert pods == 3
    service = rendered[("Service", "sarnn-redis")]["spec"]
    assert service["clusterIP"] == "None" and service["publishNotReadyAddresses"] is True
    assert sts["spec"]["serviceName"] == "sarnn-redis"
    assert {p["port"] for p in service["ports"]} == {6379, 26379}

    server = rendered[("Deployment", "sarnn-serve")]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in server["env"]}
    assert set(env) - {"FORWARDED_ALLOW_IPS"} <= SETTINGS, "an env var that is no setting"
    sentinels = env["SARNN_REDIS_SENTINELS"].split(",")
    assert sentinels == [f"sarnn-redis-{i}.sarnn-redis:26379" for i in range(pods)]
    assert int(env["SARNN_REDIS_WAIT_REPLICAS"]) == 1

    script = _init_script(sts)
    ((name, first_master, quorum),) = MONITOR.findall(script.replace("$master", "MASTER"))
    assert name == env["SARNN_REDIS_MASTER_NAME"] == "sarnn" and first_master == "MASTER"
    assert pods // 2 < int(quorum) <= pods, "a majority of the Sentinels"
    assert f"sentinel get-master-addr-by-name {name}" in script

    containers = _containers(sts)
    sentinel = containers["sentinel"]
    assert sentinel["args"] == ["/conf/sentinel.conf", "--sentinel"]
    assert {p["containerPort"] for p in sentinel["ports"]} == {26379}
    redis = containers["redis"]
    assert redis["args"][0] == "/conf/redis.conf"
    flags = redis_flags(redis["args"][1:])
    assert flags["appendonly"] == "yes" and flags["maxmemory-policy"] == "noeviction"
    for container in (redis, sentinel):  # the config both read is the init container's
        assert {m["name"]: m["mountPath"] for m in container["volumeMounts"]}["conf"] == "/conf"


def test_redis_pods_reach_each_other_and_a_drain_keeps_a_quorum(rendered: dict) -> None:
    policy = rendered[("NetworkPolicy", "sarnn-redis")]["spec"]
    (rule,) = policy["ingress"]
    sources = [s["podSelector"]["matchLabels"]["app.kubernetes.io/name"] for s in rule["from"]]
    assert sorted(sources) == ["sarnn-redis", "sarnn-serve"]
    assert sorted(p["port"] for p in rule["ports"]) == [6379, 26379]
    pdb = rendered[("PodDisruptionBudget", "sarnn-redis")]["spec"]
    assert pdb["maxUnavailable"] == 1
    sts = rendered[("StatefulSet", "sarnn-redis")]["spec"]
    assert pdb["selector"]["matchLabels"] == sts["selector"]["matchLabels"]


def _stand_in_redis_cli(bin_dir: Path, answer: str | None) -> None:
    """A `redis-cli` that answers get-master-addr-by-name with `answer` (None: unreachable)."""
    bin_dir.mkdir()
    body = f'echo "{answer}"; echo 6379' if answer else "exit 1"
    cli = bin_dir / "redis-cli"
    cli.write_text(f"#!/bin/sh\n{body}\n")
    cli.chmod(0o755)


@pytest.mark.parametrize(
    ("pod", "sentinels_say", "master"),
    [
        (0, None, "sarnn-redis-0.sarnn-redis"),  # first start: pod 0 is the master
        (1, None, "sarnn-redis-0.sarnn-redis"),
        (0, "sarnn-redis-2.sarnn-redis", "sarnn-redis-2.sarnn-redis"),  # after a failover
        (2, "sarnn-redis-2.sarnn-redis", "sarnn-redis-2.sarnn-redis"),
    ],
)
def test_the_init_script_gives_each_pod_its_role(
    rendered: dict, tmp_path: Path, pod: int, sentinels_say: str | None, master: str
) -> None:
    if shutil.which("sh") is None or shutil.which("timeout") is None:
        pytest.skip("needs sh and timeout")
    script = _init_script(rendered[("StatefulSet", "sarnn-redis")])
    conf = tmp_path / "conf"
    conf.mkdir()
    _stand_in_redis_cli(tmp_path / "bin", sentinels_say)
    env = {"PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "HOSTNAME": f"sarnn-redis-{pod}"}
    run = subprocess.run(
        ["sh", "-c", script.replace("/conf/", f"{conf}/")], env=env, capture_output=True, timeout=30
    )
    assert run.returncode == 0, run.stderr
    me = f"sarnn-redis-{pod}.sarnn-redis"
    redis_conf = (conf / "redis.conf").read_text().splitlines()
    assert redis_conf[0] == f"replica-announce-ip {me}"
    assert redis_conf[1:] == ([] if master == me else [f"replicaof {master} 6379"])
    sentinel_conf = (conf / "sentinel.conf").read_text()
    assert MONITOR.findall(sentinel_conf) == [("sarnn", master, "2")]
    assert f"sentinel announce-ip {me}\n" in sentinel_conf


# --- compose ------------------------------------------------------------------------------------


def _merge(base: dict, override: dict) -> dict:
    """Compose's merge of an override file: mappings deep, anything else replaced."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


@pytest.fixture(scope="module")
def stack() -> dict:
    base = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    override = yaml.safe_load(COMPOSE_SENTINEL.read_text())
    return _merge(base, {k: v for k, v in override.items() if not k.startswith("x-")})


def test_compose_sentinel_stack_fits_together(stack: dict) -> None:
    services = stack["services"]
    env = services["sarnn"]["environment"]
    assert set(env) <= SETTINGS, "an env var that is no setting"
    hosts = [item.rsplit(":", 1) for item in env["SARNN_REDIS_SENTINELS"].split(",")]
    assert all(port == "26379" and host in services for host, port in hosts)
    assert len(hosts) == 3
    assert set(services["sarnn"]["depends_on"]) == {"redis", *(h for h, _ in hosts)}
    name = env["SARNN_REDIS_MASTER_NAME"]
    for host, _ in hosts:
        sentinel = services[host]
        assert sentinel["environment"]["SENTINEL_NAME"] == host
        assert sentinel["tmpfs"] == ["/etc/sentinel"]
        ((monitored, master, quorum),) = MONITOR.findall(sentinel["command"][2])
        assert (monitored, master) == (name, "redis") and int(quorum) == 2
    data = [s for s in services if s == "redis" or s.startswith("redis-replica-")]
    assert len(data) == 3
    for service in data:
        flags = redis_flags(services[service]["command"])
        assert flags["appendonly"] == "yes" and flags["maxmemory-policy"] == "noeviction"
        assert flags["replica-announce-ip"] == service
        assert flags.get("replicaof") == (None if service == "redis" else "redis 6379")
    volumes = {v.split(":")[0] for s in data for v in services[s]["volumes"]}
    assert volumes <= set(stack["volumes"]) and len(volumes) == 3


def test_compose_sentinel_command_writes_its_config(stack: dict, tmp_path: Path) -> None:
    script = stack["services"]["sentinel-2"]["command"][2]
    script = script.replace("$$", "$").replace("/etc/sentinel/", f"{tmp_path}/")
    script = script.replace("exec redis-server", "echo redis-server")
    run = subprocess.run(
        ["sh", "-c", script],
        env={"PATH": os.environ["PATH"], "SENTINEL_NAME": "sentinel-2"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.returncode == 0, run.stderr
    conf = (tmp_path / "sentinel.conf").read_text()
    assert "sentinel announce-ip sentinel-2\n" in conf
    assert MONITOR.findall(conf) == [("sarnn", "redis", "2")]
    assert run.stdout.split() == ["redis-server", f"{tmp_path}/sentinel.conf", "--sentinel"]

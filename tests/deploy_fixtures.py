"""Helpers of the deployment suites (test_deploy_manifests, test_deploy_redis_ha): where the
deployment files are, the SARNN_ variables that are settings, the Kubernetes schema versions to
validate against, and redis-server's flags as a manifest or compose file passes them.
"""

from pathlib import Path

import pytest

from sarnn_serve.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
SETTINGS = {f"SARNN_{name.upper()}" for name in Settings.model_fields}


def schema_versions() -> list[str]:
    """The oldest and the newest Kubernetes schema versions kubernetes-validate ships (skips the
    test without kubernetes-validate)."""
    kv = pytest.importorskip("kubernetes_validate.utils", reason="kubernetes-validate (dev extra)")
    versions = kv.all_versions()
    return sorted({versions[0], versions[-1]})


def redis_flags(args: list[str]) -> dict[str, str]:
    """redis-server's --options and their values (several words joined by a space)."""
    flags: dict[str, list[str]] = {}
    for arg in args:
        if arg.startswith("--"):
            name = arg[2:]
            flags[name] = []
        elif arg != "redis-server":
            flags[name].append(arg)
    return {name: " ".join(values) for name, values in flags.items()}

"""A cluster under faults: redis-server (AOF), 3 replicas and haproxy on loopback, sessions
streamed through the balancer while replicas and Redis are killed and restarted
(`scripts/cluster_faults.py` with fewer sessions and steps)."""

import importlib.util
import shutil
from pathlib import Path
from types import ModuleType

import pytest

from tests.service_fixtures import TINY_MODEL

# starts a dozen processes; streams the watch data (`train`)
pytestmark = [pytest.mark.slow, pytest.mark.train]

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "cluster_faults.py"


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("cluster_faults", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not on PATH")
@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not on PATH")
def test_cluster_survives_faults_exactly_once(served_models: Path) -> None:
    pytest.importorskip("redis", reason="redis-py is not installed (pip install .[redis])")
    cf = _load_script()
    args = cf.parser().parse_args(
        ["--sessions", "6", "--steps", "240", "--interval", "0.15",
         "--model-dir", str(served_models), "--model", TINY_MODEL]
    )  # fmt: skip
    report = cf.run(args)
    assert not report["fatal"], report["fatal"]
    assert report["lost_chunks"] == 0
    assert report["doubled_chunks"] == 0
    assert report["sessions_with_wrong_totals"] == 0
    assert report["sessions_differing_from_clean_run"] == 0
    retryable = ("5", "409 concurrent_update", "409 seq_conflict", "409 session_rolled_back",
                 "timeout", "connection ", "ws_")  # fmt: skip
    assert all(kind.startswith(retryable) for kind in report["errors"]), report["errors"]
    assert len(report["faults"]) == 5
    assert all(f["recovery_s"] is not None for f in report["faults"])
    assert report["ok"]

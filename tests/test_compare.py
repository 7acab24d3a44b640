"""benchmarks/compare.py without its peer (CI does not install MLServer): a short run against
sarnn-serve with two workers is clean and lands in every output, WebSocket on the memory store
and REST on Redis; the table has a row per transport and divides steps/s by the peer's."""

import json
import shutil
from pathlib import Path

import pytest

from benchmarks import compare

# starts sarnn-serve and redis-server processes; streams the watch data (`train`)
pytestmark = [pytest.mark.slow, pytest.mark.train]


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not on PATH")
def test_ours_only_run(tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = ["--transports", "ws-binary", "rest", "--samples", "4", "--clients", "4",
            "--duration", "2", "--warmup", "0.5", "--workers", "2", "--out", str(out)]  # fmt: skip
    assert compare.main(argv) == 0
    runs = json.loads((out / "compare.json").read_text())["runs"]
    assert [r["transport"] for r in runs] == ["ws-binary", "rest"]
    assert [r["server"]["store"] for r in runs] == ["memory", "redis"]
    for run in runs:
        figures = run["figures"]
        assert figures["achieved_steps_per_s"] > 0
        assert figures["errors"] == 0, figures["error_kinds"]
        assert figures["server_cpu"]["total"] > 0  # summed over the workers
    assert runs[1]["redis_cpu"] is not None
    assert (out / "compare.md").read_text().count("| ours ") == 2
    assert (out / "compare.png").stat().st_size > 0


def record(transport: str, steps: float, samples: int = 32, clients: int = 64) -> dict:
    """A run record as run_load makes it, with made-up figures."""
    figures = {
        "achieved_steps_per_s": steps,
        "messages_per_s": steps / samples,
        "latency_ms": {"p50": 1.0, "p99": 2.0},
        "errors": 0,
        "server_cpu": {"total": 1.0},
        "client_cpu": {"total": 0.5},
        "load_avg_1m": 2.0,
    }
    return {"transport": transport, "samples": samples, "clients": clients,
            "server": {"label": f"server of {transport}"}, "figures": figures,
            "redis_cpu": 0.1 if transport == "rest" else None}  # fmt: skip


def test_table_divides_by_the_peer() -> None:
    records = [record("v2", 1000.0), record("ws-binary", 4000.0), record("ws-json", 2500.0),
               record("rest", 1500.0), record("ws-binary", 999.0, clients=16)]  # fmt: skip
    meta = {"command": ["benchmarks/compare.py"], "started": "now", "host": "h", "cpus": 2,
            "commit": "c", "duration": 3.0, "warmup": 1.0, "repeats": 1,
            "servers": {"v2 runs": {"label": "peer"}}}  # fmt: skip
    markdown = compare.render_markdown(records, meta)
    sections = markdown.split("## ")[1:]
    assert [s.splitlines()[0] for s in sections] == [
        "32 samples/message x 16 clients",
        "32 samples/message x 64 clients",
    ]
    rows = [line.strip("| ").split(" | ") for line in sections[1].splitlines()[4:]]
    ratios = {row[0]: row[-1] for row in rows}
    assert ratios == {
        "ours WebSocket binary": "4.00",
        "ours WebSocket JSON columns": "2.50",
        "ours REST columns": "1.50",
        "MLServer v2 REST": "1.00",
    }
    assert "1.00 + 0.10 redis" in sections[1]
    # no peer run in that shape: no ratio
    assert sections[0].strip().endswith("| - |")

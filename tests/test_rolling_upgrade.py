"""A rolling upgrade on one real Redis: a replica of the release before the versioned record
(commit FORMAT_1_COMMIT, its code taken from git) and a replica of this one serve the same
sessions, every chunk sent to either at random and some resent to the other as a retry; then
the old replica is gone and two replicas of this release, writing format 2, carry on.

Counted: errors (any answer but 200), lost chunks (a session's steps or next_seq short of what
was sent), doubled chunks (a first send answered as a replay, a retry answered as new, or steps
beyond what was sent). All three must be 0, and every step's answer equal to the same chunks
sent to one replica of this release.
"""

import json
import os
import random
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.service_fixtures import (
    TINY_MODEL,
    UNLIMITED,
    LiveServer,
    free_port,
    start_server,
    stop_server,
)

pytestmark = pytest.mark.slow

FORMAT_1_COMMIT = "5b06023"  # the last commit whose replicas read and write only format 1
REPO = Path(__file__).resolve().parent.parent
FEATURES = 6
SESSIONS = 6
CHUNKS = 24  # per session while old and new replicas share the store
MORE_CHUNKS = 8  # per session once only this release's replicas remain
STEPS = 3


@pytest.fixture(scope="module")
def old_release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The source tree of FORMAT_1_COMMIT."""
    git = shutil.which("git")
    if git is None or not (REPO / ".git").exists():
        pytest.skip("needs the git history of the repository")
    tree = tmp_path_factory.mktemp("old-release")
    archive = subprocess.run(
        [git, "-C", str(REPO), "archive", FORMAT_1_COMMIT, "sarnn_serve"], capture_output=True
    )
    if archive.returncode:
        pytest.skip(f"commit {FORMAT_1_COMMIT} is not in this checkout")
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    return tree


@pytest.fixture(scope="module")
def shared_models(
    old_release: Path, served_models: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The served models with cards the old release loads too: card fields it does not know
    (added since, all at their defaults for this model) are left out."""
    known = subprocess.run(
        [sys.executable, "-c", "import json; from sarnn_serve.card import ModelCard; "
         "print(json.dumps(list(ModelCard.model_fields)))"],
        cwd=old_release,
        env={**os.environ, "PYTHONPATH": str(old_release)},
        capture_output=True,
        check=True,
    )  # fmt: skip
    fields = set(json.loads(known.stdout))
    models = tmp_path_factory.mktemp("shared") / "models"
    shutil.copytree(served_models, models)
    for card_path in models.glob("*/model.json"):
        card = json.loads(card_path.read_text())
        card_path.write_text(json.dumps({k: v for k, v in card.items() if k in fields}))
    return models


def start_old(tree: Path, models: Path, tmp: Path, env: dict[str, str]) -> LiveServer:
    """A replica running the code in `tree` (without the native kernel, which this checkout
    builds for its own code)."""
    port = free_port()
    log_path = tmp / f"old-{port}.log"
    full_env = {
        **os.environ,
        **UNLIMITED,
        **env,
        "PYTHONPATH": str(tree),
        "SARNN_NATIVE_KERNEL": "false",
        "SARNN_MODEL_DIR": str(models),
        "SARNN_PORT": str(port),
    }
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "sarnn_serve.cli", "serve"],
            cwd=tree,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = LiveServer(f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}", process, log_path)
    deadline = time.monotonic() + 60
    while True:
        assert process.poll() is None, f"old replica exited:\n{server.log()}"
        assert time.monotonic() < deadline, f"old replica not ready:\n{server.log()}"
        try:
            if httpx.get(f"{server.url}/readyz", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.2)


def chunk_rows(session: int, seq: int) -> list[list[float]]:
    return [
        [0.03 * ((session * 31 + seq * 7 + t * 3 + f) % 17) - 0.2 for f in range(FEATURES)]
        for t in range(STEPS)
    ]


def body(session: int, seq: int) -> dict:
    return {"seq": seq, "inputs": chunk_rows(session, seq), "include_mask": seq % 3 == 0}


class Tally:
    """Answers per session and what went wrong."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.doubled: list[str] = []
        self.steps: dict[str, list[dict]] = {}

    def send(self, url: str, sid: str, payload: dict, retry: bool) -> None:
        r = httpx.post(f"{url}/v1/sessions/{sid}/chunks", json=payload, timeout=30)
        if r.status_code != 200:
            self.errors.append(f"{url} {sid} seq {payload['seq']}: {r.status_code} {r.text}")
            return
        answer = r.json()
        if answer["replayed"] is not retry:
            self.doubled.append(f"{url} {sid} seq {payload['seq']}: replayed={answer['replayed']}")
        if retry:
            if answer["steps"] != self.steps[sid][-STEPS:]:
                self.errors.append(f"{url} {sid} seq {payload['seq']}: replayed otherwise")
        else:
            self.steps.setdefault(sid, []).extend(answer["steps"])


def reference(url: str, chunks: int) -> list[list[dict]]:
    """Each session's steps when all its chunks go to one replica of this release."""
    out = []
    with httpx.Client(base_url=url, timeout=30) as c:
        for s in range(SESSIONS):
            sid = c.post("/v1/sessions", json={"model": TINY_MODEL}).json()["id"]
            steps = []
            for seq in range(chunks):
                r = c.post(f"/v1/sessions/{sid}/chunks", json=body(s, seq))
                assert r.status_code == 200, r.text
                steps += r.json()["steps"]
            out.append(steps)
            c.delete(f"/v1/sessions/{sid}")
    return out


def drive(tally: Tally, sids: list[str], urls: list[str], seqs: range, rng: random.Random) -> None:
    """Every session's chunks in `seqs`, sessions interleaved, each chunk to a random replica
    and one in four resent to another replica."""
    for seq in seqs:
        for s, sid in enumerate(sids):
            first = rng.choice(urls)
            tally.send(first, sid, body(s, seq), retry=False)
            if rng.random() < 0.25:
                tally.send(rng.choice([u for u in urls if u != first]), sid, body(s, seq), True)


@pytest.fixture
def redis_env(redis_url: str) -> dict[str, str]:
    return {
        "SARNN_STORE": "redis",
        "SARNN_REDIS_URL": redis_url,
        "SARNN_REDIS_PREFIX": f"upgrade-{uuid.uuid4().hex}",
    }


def test_old_and_new_replicas_share_sessions(
    old_release: Path, shared_models: Path, tmp_path: Path, redis_env: dict[str, str]
) -> None:
    rng = random.Random(21)
    tally = Tally()
    old = start_old(old_release, shared_models, tmp_path, redis_env)
    new = start_server(shared_models, tmp_path, {**redis_env, "SARNN_RECORD_FORMAT": "1"})
    servers: list[LiveServer] = [old, new]
    try:
        urls = [old.url, new.url]
        sids = []
        for s in range(SESSIONS):
            r = httpx.post(f"{urls[s % 2]}/v1/sessions", json={"model": TINY_MODEL}, timeout=30)
            assert r.status_code == 201, r.text
            sids.append(r.json()["id"])
        drive(tally, sids, urls, range(CHUNKS), rng)

        # the upgrade completes: the old replica goes, two of this release write format 2
        stop_server(servers.pop(0))
        servers.append(start_server(shared_models, tmp_path, redis_env))
        stop_server(servers.pop(0))
        servers.append(start_server(shared_models, tmp_path, redis_env))
        urls = [s.url for s in servers]
        drive(tally, sids, urls, range(CHUNKS, CHUNKS + MORE_CHUNKS), rng)

        total = CHUNKS + MORE_CHUNKS
        lost = []
        for sid in sids:
            summary = httpx.get(f"{urls[0]}/v1/sessions/{sid}", timeout=30).json()
            if summary.get("next_seq") != total or summary.get("steps") != total * STEPS:
                lost.append(f"{sid}: {summary}")
        assert (tally.errors, lost, tally.doubled) == ([], [], []), "errors, lost, doubled"
        assert [tally.steps[sid] for sid in sids] == reference(urls[1], total)
        for sid in sids:
            assert httpx.delete(f"{urls[1]}/v1/sessions/{sid}", timeout=30).status_code == 200
    finally:
        for server in servers:
            stop_server(server)

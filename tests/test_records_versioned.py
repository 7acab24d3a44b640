"""The session record's format version and named fields (`sarnn_serve.records`).

In-process: a record the previous release wrote (format 1, a positional list; its bytes kept
here) is read, and format 1 written again is byte for byte what that release wrote, so its
replicas read what this one writes during a rolling upgrade; format 2 is a map with "v": 2; a
newer writer's extra fields are ignored; damaged records are refused naming the field.

On a live server over a real Redis, records planted in the store: an unreadable record fails its
own session only, with a JSON error, on every route (DELETE removes it); a state of the wrong
length or a threshold out of range fails that session's chunk before anything is applied, while
another session's chunk in the same moment is answered.
"""

import asyncio
import json
import math
import uuid
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import httpx
import msgpack
import numpy as np
import pytest
from websockets.asyncio.client import connect

from sarnn_serve import records
from sarnn_serve.records import PackedOutputs, RecordUnreadable
from sarnn_serve.results import StepOutputs
from sarnn_serve.sessions import SessionRecord
from tests.service_fixtures import TINY_MODEL, LiveServer, start_server, stop_server

# SessionRecord.encode() of the release before format 2 (commit 5b06023) for `written_before()`
FORMAT_1 = bytes.fromhex(
    "dc0014aa732d666f726d61742d31a977617463682d677275ac616239303138343731643039cb3fd666666666"
    "6666cb408c200000000000c40c0000803e000000bf0000803fa5616c696365072b78cb41d954fc40000000cb"
    "41d954fc41600000c410000102030405060708090a0b0c0d0e0fc43096280302c4180000003f0000a0bf0000"
    "0040000000000000008000006040c406030001000100920ac406e00008000040cb3fd0000000000000c41001"
    "010101010101010101010101010101cb3fd3333333333333cbbfc0000000000000c3cb3fd999999999999a"
)


def written_before() -> SessionRecord:
    """The record whose format 1 bytes are FORMAT_1."""
    logits = np.array([[0.5, -1.25], [2.0, 0.0], [-0.0, 3.5]], np.float32)
    masks = np.zeros((3, 10), bool)
    masks[0, :3] = masks[1, 4] = masks[2, 9] = True
    out = StepOutputs.from_graph(40, logits, masks, include_mask=True)
    return SessionRecord(
        id="s-format-1",
        model="watch-gru",
        model_version="ab9018471d09",
        threshold=0.35,
        ttl_s=900.0,
        state=np.array([0.25, -0.5, 1.0], np.float32),
        owner="alice",
        next_seq=7,
        steps=43,
        updates=120,
        created=1.7e9,
        last_seen=1.7e9 + 5.5,
        last_digest=bytes(range(16)),
        last_outputs=PackedOutputs.of(out),
        recent_rate=0.25,
        last_request=b"\x01" * 16,
        target_rate=0.3,
        control_offset=-0.125,
        degrade=True,
        last_threshold=0.4,
    )


def same_record(a: SessionRecord, b: SessionRecord) -> None:
    for f in fields(SessionRecord):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if f.name == "state":
            assert x.tobytes() == y.tobytes()
        else:
            assert x == y, f.name


def test_the_record_fields_are_the_formats_fields() -> None:
    assert tuple(f.name for f in fields(SessionRecord)) == records.V1_FIELDS


def test_a_record_the_previous_release_wrote_is_read() -> None:
    back = SessionRecord.decode(FORMAT_1)
    same_record(back, written_before())
    masks = back.last_outputs.unpack().masks
    assert masks.shape == (3, 10) and masks.sum() == 5 and masks[2, 9]


def test_format_1_is_written_as_the_previous_release_wrote_it() -> None:
    assert written_before().encode(1) == FORMAT_1


def test_format_2_is_a_map_of_named_fields() -> None:
    record = written_before()
    raw = msgpack.unpackb(record.encode())
    assert raw["v"] == 2 == records.FORMAT
    assert set(raw) == {"v", *records.V1_FIELDS}
    assert raw["id"] == "s-format-1" and raw["next_seq"] == 7
    assert raw["last_outputs"]["hidden"] == 10 and raw["last_outputs"]["steps"] == 3
    same_record(SessionRecord.decode(record.encode()), record)


def test_a_newer_writers_extra_fields_are_ignored() -> None:
    record = written_before()
    raw = msgpack.unpackb(record.encode())
    raw["coming_later"] = {"anything": [1, 2]}
    raw["last_outputs"]["also_new"] = b"x"
    same_record(SessionRecord.decode(msgpack.packb(raw)), record)
    positional = msgpack.unpackb(FORMAT_1)
    same_record(SessionRecord.decode(msgpack.packb([*positional, "one more"])), record)


def test_fields_a_writer_left_out_take_their_defaults() -> None:
    raw = msgpack.unpackb(written_before().encode())
    for name in ("last_threshold", "degrade", "control_offset", "target_rate", "last_request"):
        del raw[name]
    back = SessionRecord.decode(msgpack.packb(raw))
    assert back.last_threshold is None and back.target_rate is None
    assert back.degrade is False and back.control_offset == 0.0 and back.last_request == b""
    older = msgpack.unpackb(FORMAT_1)[:15]  # a list from before the last five fields
    assert SessionRecord.decode(msgpack.packb(older)).next_seq == 7


def damaged(change: str) -> bytes:
    raw = msgpack.unpackb(written_before().encode())
    out = raw["last_outputs"]
    match change:
        case "garbage":
            return b"\xc1not a record"
        case "not a map or list":
            return msgpack.packb("hello")
        case "newer format":
            return msgpack.packb({**raw, "v": 3})
        case "no id":
            del raw["id"]
        case "threshold 7":
            raw["threshold"] = 7.0
        case "threshold nan":
            raw["threshold"] = math.nan
        case "threshold text":
            raw["threshold"] = "0.5"
        case "ttl 0":
            raw["ttl_s"] = 0
        case "negative seq":
            raw["next_seq"] = -1
        case "state odd bytes":
            raw["state"] = b"\0" * 5
        case "state inf":
            raw["state"] = np.array([1.0, np.inf], np.float32).tobytes()
        case "degrade 1":
            raw["degrade"] = 1
        case "short logits":
            out["logits"] = out["logits"][:-4]
        case "masks of another width":
            out["hidden"] = 17
    return msgpack.packb(raw)


@pytest.mark.parametrize(
    "change",
    [
        "garbage",
        "not a map or list",
        "newer format",
        "no id",
        "threshold 7",
        "threshold nan",
        "threshold text",
        "ttl 0",
        "negative seq",
        "state odd bytes",
        "state inf",
        "degrade 1",
        "short logits",
        "masks of another width",
    ],
)
def test_a_damaged_record_is_refused_naming_why(change: str) -> None:
    with pytest.raises(RecordUnreadable) as info:
        SessionRecord.decode(damaged(change))
    word = {"newer format": "format 3", "no id": "id", "threshold 7": "threshold"}.get(change)
    if word:
        assert word in str(info.value)


def test_a_damaged_format_1_record_is_refused() -> None:
    raw = msgpack.unpackb(FORMAT_1)
    raw[3] = "x"  # a field inserted before the threshold shifts every later one
    with pytest.raises(RecordUnreadable, match="threshold"):
        SessionRecord.decode(msgpack.packb(raw))
    raw = msgpack.unpackb(FORMAT_1)
    raw[13] = b"\x93\x01\x02"  # outputs that are not the format 1 list
    with pytest.raises(RecordUnreadable, match="last_outputs"):
        SessionRecord.decode(msgpack.packb(raw))


# --- on a live server over a real Redis ---------------------------------------------------------

FEATURES = 6
PREFIX = f"records-{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
def server(
    served_models: Path, tmp_path_factory: pytest.TempPathFactory, redis_url: str
) -> Iterator[LiveServer]:
    env = {"SARNN_STORE": "redis", "SARNN_REDIS_URL": redis_url, "SARNN_REDIS_PREFIX": PREFIX}
    live = start_server(served_models, tmp_path_factory.mktemp("records"), env)
    yield live
    stop_server(live)


@pytest.fixture
def redis(redis_url: str) -> Iterator[Any]:
    import redis as redis_py

    client = redis_py.Redis.from_url(redis_url)
    yield client
    client.close()


def rows(steps: int) -> list[list[float]]:
    return [[0.05 * ((t * 7 + f) % 13) for f in range(FEATURES)] for t in range(steps)]


def open_session(c: httpx.Client, chunks: int = 1) -> str:
    r = c.post("/v1/sessions", json={"model": TINY_MODEL})
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    for seq in range(chunks):
        r = c.post(f"/v1/sessions/{sid}/chunks", json={"seq": seq, "inputs": rows(4)})
        assert r.status_code == 200, r.text
    return sid


def plant(redis: Any, sid: str, change: Any) -> tuple[bytes, int]:
    """Write a record of `sid` as another replica would (at the next version): `change` maps
    the format 2 fields of the current one to new bytes, or is the bytes themselves. Returns
    the record it replaced and the new version."""
    key = f"{PREFIX}:s:{sid}"
    data, version = redis.hmget(key, "data", "version")
    new = change(msgpack.unpackb(data)) if callable(change) else change
    redis.hset(key, mapping={"data": new, "version": int(version) + 1})
    return data, int(version) + 1


def unreadable(r: httpx.Response) -> dict:
    assert r.status_code == 500, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()["error"]
    assert body["code"] == "session_unreadable", body
    return body


async def stream_refused(server: LiveServer, sid: str) -> dict:
    async with connect(f"{server.ws_url}/v1/sessions/{sid}/stream", compression=None) as ws:
        frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert frame["type"] == "error", frame
    return frame


@pytest.mark.slow
async def test_an_unreadable_record_fails_its_session_only(server: LiveServer, redis: Any) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        bad, good = open_session(c), open_session(c)
        plant(redis, bad, b"\xc1 damaged beyond reading")
        for r in (
            c.get(f"/v1/sessions/{bad}"),
            c.post(f"/v1/sessions/{bad}/chunks", json={"seq": 1, "inputs": rows(2)}),
        ):
            assert unreadable(r)["session"] == bad
        frame = await stream_refused(server, bad)
        assert frame["error"]["code"] == "session_unreadable"
        r = c.post(f"/v1/sessions/{good}/chunks", json={"seq": 1, "inputs": rows(2)})
        assert r.status_code == 200, r.text
        gone = c.delete(f"/v1/sessions/{bad}")
        assert gone.status_code == 200, gone.text
        assert gone.json()["id"] == bad and gone.json()["deleted"] is True
        assert c.get(f"/v1/sessions/{bad}").json()["error"]["code"] == "session_deleted"


def field(raw: dict | list, name: str) -> str | int:
    """Where a field is in a record of either format."""
    return name if isinstance(raw, dict) else {"threshold": 3, "state": 5}[name]


def wrong_state(raw: dict | list) -> bytes:
    raw[field(raw, "state")] += b"\0\0\0\0"
    return msgpack.packb(raw)


def wrong_threshold(raw: dict | list) -> bytes:
    raw[field(raw, "threshold")] = 7.5
    return msgpack.packb(raw)


@pytest.mark.slow
@pytest.mark.parametrize("change", [wrong_state, wrong_threshold])
async def test_a_bad_record_fails_its_chunk_before_anything_is_applied(
    server: LiveServer, redis: Any, change: Any
) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
        with httpx.Client(base_url=server.url, timeout=30) as sync:
            bad, good = open_session(sync), open_session(sync)
        _, version = plant(redis, bad, change)
        for _ in range(5):  # the two chunks arrive together, into one micro-batch if they can
            seq = (await c.get(f"/v1/sessions/{good}")).json()["next_seq"]
            mine, theirs = await asyncio.gather(
                c.post(f"/v1/sessions/{bad}/chunks", json={"seq": 1, "inputs": rows(8)}),
                c.post(f"/v1/sessions/{good}/chunks", json={"seq": seq, "inputs": rows(8)}),
            )
            unreadable(mine)
            assert theirs.status_code == 200, theirs.text
        assert int(redis.hget(f"{PREFIX}:s:{bad}", "version")) == version


@pytest.mark.slow
async def test_records_of_a_newer_and_an_older_writer_are_served(
    server: LiveServer, redis: Any
) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        newer, older = open_session(c, chunks=2), open_session(c, chunks=2)

        def with_more(raw: dict) -> bytes:
            return msgpack.packb(
                {**raw, "shard": 3, "last_outputs": {**raw["last_outputs"], "x": 1}}
            )

        def as_format_1(raw: dict) -> bytes:
            return SessionRecord.decode(msgpack.packb(raw)).encode(1) + b""

        plant(redis, newer, with_more)
        plant(redis, older, as_format_1)
        for sid in (newer, older):
            assert c.get(f"/v1/sessions/{sid}").json()["next_seq"] == 2
            retry = c.post(f"/v1/sessions/{sid}/chunks", json={"seq": 1, "inputs": rows(4)})
            assert retry.status_code == 200 and retry.json()["replayed"] is True, retry.text
            r = c.post(f"/v1/sessions/{sid}/chunks", json={"seq": 2, "inputs": rows(4)})
            assert r.status_code == 200 and r.json()["replayed"] is False, r.text

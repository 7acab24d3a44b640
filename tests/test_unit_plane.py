"""The data plane in-process: a real ModelCard, a fake engine in a real thread pool, MemoryStore,
Monitor and Settings; no HTTP server and no ONNX graph.

The fake engine (tests.fixtures.FakeEngine) is deterministic, so a session fed in chunks must
give exactly what one run over its whole history gives.
"""

from collections.abc import Awaitable

import numpy as np
import pytest

from sarnn_serve.api import codec
from sarnn_serve.auth import Principal
from sarnn_serve.errors import (
    Forbidden,
    ModelNotFound,
    ModelUnavailable,
    RetryMismatch,
    SeqConflict,
    SessionNotFound,
    SessionRolledBack,
    TooManyRequests,
)
from sarnn_serve.registry import LoadedModel
from sarnn_serve.results import ChunkResult
from sarnn_serve.routing import Router
from sarnn_serve.schemas import SessionCreate
from sarnn_serve.service import DataPlane
from sarnn_serve.settings import Settings
from tests.fixtures import CARD, MODEL, FakeEngine, MakePlane, anonymous, chunk, solo

KEYS = "a,b,root:admin"


def history(steps: int) -> np.ndarray:
    """Steps of multiples of 1/8: sums are exact, so chunked and whole runs agree bit for bit."""
    rng = np.random.default_rng(0)
    return (rng.integers(-16, 17, (steps, CARD.n_features)) / 8).astype(np.float32)


def engine_calls(plane: DataPlane) -> int:
    return len(plane.registry.get(MODEL).engine.calls)


def totals(plane: DataPlane) -> tuple[float | None, ...]:
    """Steps and updates accounted so far, in the live stats and in Prometheus."""
    stats = plane.model_stats(MODEL)
    prom = plane.monitor.prom.registry.get_sample_value
    return (
        stats["steps"],
        stats["updates"],
        prom("sarnn_steps_total", {"model": MODEL}),
        prom("sarnn_neuron_updates_total", {"model": MODEL}),
    )


def assert_same_answer(a: ChunkResult, b: ChunkResult) -> None:
    """The same chunk answer, apart from `replayed`."""
    assert (a.session_id, a.seq, a.model, a.chunk, a.session) == (
        b.session_id,
        b.seq,
        b.model,
        b.chunk,
        b.session,
    )
    assert a.outputs.first_index == b.outputs.first_index
    np.testing.assert_array_equal(a.outputs.logits, b.outputs.logits)
    np.testing.assert_array_equal(a.outputs.counts, b.outputs.counts)
    if a.outputs.masks is None or b.outputs.masks is None:
        assert a.outputs.masks is b.outputs.masks
    else:
        np.testing.assert_array_equal(a.outputs.masks, b.outputs.masks)


# --- sessions and chunks ------------------------------------------------------------------------


async def test_chunks_continue_the_session_state(make_plane: MakePlane) -> None:
    plane = await make_plane()
    me = anonymous()
    created = await plane.create_session(me, SessionCreate())
    sid = created["id"]
    assert created["next_seq"] == 0 and created["steps"] == 0
    x = history(11)
    parts = [x[:4], x[4:5], x[5:]]
    answers = [await plane.advance(me, sid, chunk(seq, part)) for seq, part in enumerate(parts)]
    ref = solo(x, np.zeros(CARD.state_size, np.float32), CARD.threshold)
    np.testing.assert_array_equal(np.concatenate([a.outputs.logits for a in answers]), ref.logits)
    counts = np.concatenate([a.outputs.counts for a in answers])
    np.testing.assert_array_equal(counts, ref.updates.sum(axis=-1))
    assert [a.outputs.first_index for a in answers] == [0, 4, 5]
    summary = await plane.get_session(me, sid)
    assert summary["next_seq"] == 3 and summary["steps"] == 11
    assert summary["updates"] == int(counts.sum())
    assert totals(plane) == (11, summary["updates"], 11, summary["updates"])


async def test_a_retry_is_answered_again_without_being_applied(make_plane: MakePlane) -> None:
    plane = await make_plane()
    me = anonymous()
    sid = (await plane.create_session(me, SessionCreate()))["id"]
    x = history(6)
    first = await plane.advance(me, sid, chunk(0, x, include_mask=True))
    assert first.replayed is False and first.outputs.masks is not None
    calls, accounted = engine_calls(plane), totals(plane)
    assert accounted == (6, first.chunk.updates, 6, first.chunk.updates)
    summary = await plane.get_session(me, sid)
    again = await plane.advance(me, sid, chunk(0, x, include_mask=True))
    assert again.replayed is True
    assert_same_answer(again, first)
    assert codec.chunk_json(again) == codec.chunk_json(first).replace(
        b'"replayed":false', b'"replayed":true'
    )
    assert engine_calls(plane) == calls
    assert totals(plane) == accounted
    assert await plane.get_session(me, sid) == summary


@pytest.mark.parametrize("change", ["inputs", "include_mask"])
async def test_a_retry_with_other_inputs_or_options_changes_nothing(
    make_plane: MakePlane, change: str
) -> None:
    plane = await make_plane()
    me = anonymous()
    sid = (await plane.create_session(me, SessionCreate()))["id"]
    x = history(9)
    first = await plane.advance(me, sid, chunk(0, x[:5]))
    summary, calls = await plane.get_session(me, sid), engine_calls(plane)
    retry = chunk(0, x[:5] + 1) if change == "inputs" else chunk(0, x[:5], include_mask=True)
    with pytest.raises(RetryMismatch) as info:
        await plane.advance(me, sid, retry)
    assert info.value.status == 409
    assert info.value.detail == {"expected_seq": 1, "got_seq": 0}
    assert await plane.get_session(me, sid) == summary
    assert engine_calls(plane) == calls
    assert_same_answer(await plane.advance(me, sid, chunk(0, x[:5])), first)
    second = await plane.advance(me, sid, chunk(1, x[5:]))
    ref = solo(x, np.zeros(CARD.state_size, np.float32), CARD.threshold)
    np.testing.assert_array_equal(second.outputs.logits, ref.logits[5:])


async def test_a_seq_gap_is_a_conflict(make_plane: MakePlane) -> None:
    """A seq ahead of the session's next one is a rollback to resend from (the store may have
    lost acknowledged chunks); a stale one that is not the last is a conflict. Neither changes
    the session."""
    plane = await make_plane()
    me = anonymous()
    sid = (await plane.create_session(me, SessionCreate()))["id"]
    x = history(4)
    for bad in (1, 5):
        with pytest.raises(SessionRolledBack) as ahead:
            await plane.advance(me, sid, chunk(bad, x))
        assert ahead.value.detail["expected_seq"] == 0
    await plane.advance(me, sid, chunk(0, x))
    await plane.advance(me, sid, chunk(1, x))
    summary = await plane.get_session(me, sid)
    with pytest.raises(SeqConflict) as info:  # neither the next seq nor a retry of the last
        await plane.advance(me, sid, chunk(0, x))
    assert info.value.detail == {"expected_seq": 2, "got_seq": 0}
    with pytest.raises(SessionRolledBack) as ahead:
        await plane.advance(me, sid, chunk(3, x))
    assert ahead.value.detail["expected_seq"] == 2
    assert await plane.get_session(me, sid) == summary


# --- callers ------------------------------------------------------------------------------------


async def test_with_keys_another_key_is_told_the_session_does_not_exist(
    make_plane: MakePlane,
) -> None:
    plane = await make_plane(Settings(api_keys=KEYS))
    alice, bob, root = (plane.authenticate(f"Bearer {k}", None) for k in ("a", "b", "root"))
    assert root.admin and not alice.admin and alice.id != bob.id
    sid = (await plane.create_session(alice, SessionCreate()))["id"]
    x = history(3)
    await plane.advance(alice, sid, chunk(0, x))
    summary = await plane.get_session(alice, sid)

    async def hidden(action: Awaitable) -> None:
        with pytest.raises(SessionNotFound) as info:
            await action
        assert info.value.code == "session_not_found" and info.value.detail["reason"] == "unknown"

    async def watch(caller: Principal) -> None:
        async with plane.watch(caller, sid):
            pass

    await hidden(plane.get_session(bob, sid))
    await hidden(plane.advance(bob, sid, chunk(1, x)))
    await hidden(plane.advance(bob, sid, chunk(0, x)))  # not even a replay of the last answer
    await hidden(plane.delete_session(bob, sid))
    await hidden(watch(bob))
    assert await plane.get_session(alice, sid) == summary
    assert plane.activity.watchers == {}

    assert await plane.get_session(root, sid) == summary
    async with plane.watch(root, sid) as events:
        await plane.advance(root, sid, chunk(1, x))
        assert events.get_nowait()["seq"] == 1
    assert (await plane.delete_session(root, sid))["next_seq"] == 2
    with pytest.raises(SessionNotFound) as info:
        await plane.get_session(alice, sid)
    assert info.value.detail["reason"] == "deleted"


async def test_listing_sessions_is_off_without_keys_unless_enabled(make_plane: MakePlane) -> None:
    plane = await make_plane()
    with pytest.raises(Forbidden):
        await plane.list_sessions(anonymous())

    plane = await make_plane(Settings(list_sessions=True))
    one, two = anonymous("10.0.0.1"), anonymous("10.0.0.2")
    s1 = (await plane.create_session(one, SessionCreate()))["id"]
    s2 = (await plane.create_session(two, SessionCreate()))["id"]
    assert await plane.list_sessions(one) == []  # listed once a chunk was applied
    await plane.advance(one, s1, chunk(0, history(2)))
    await plane.advance(two, s2, chunk(0, history(2)))
    newest_first = [{"id": s2, "model": MODEL}, {"id": s1, "model": MODEL}]
    assert await plane.list_sessions(one) == newest_first  # keys off: everyone sees everything
    await plane.delete_session(one, s2)
    assert await plane.list_sessions(two) == [{"id": s1, "model": MODEL}]


async def test_with_keys_a_key_lists_its_own_sessions_and_admin_all(make_plane: MakePlane) -> None:
    plane = await make_plane(Settings(api_keys=KEYS))
    alice, bob, root = (plane.authenticate(f"Bearer {k}", None) for k in ("a", "b", "root"))
    mine = (await plane.create_session(alice, SessionCreate()))["id"]
    theirs = (await plane.create_session(bob, SessionCreate()))["id"]
    await plane.advance(alice, mine, chunk(0, history(2)))
    await plane.advance(bob, theirs, chunk(0, history(2)))
    assert await plane.list_sessions(alice) == [{"id": mine, "model": MODEL}]
    assert await plane.list_sessions(bob) == [{"id": theirs, "model": MODEL}]
    assert [s["id"] for s in await plane.list_sessions(root)] == [theirs, mine]


# --- quotas -------------------------------------------------------------------------------------


async def test_creation_rate_is_limited_per_caller(make_plane: MakePlane) -> None:
    plane = await make_plane(Settings(session_create_rate=1.0, session_create_burst=2))
    me, other = anonymous("10.0.0.1"), anonymous("10.0.0.2")
    for _ in range(2):
        await plane.create_session(me, SessionCreate())
    with pytest.raises(TooManyRequests) as info:
        await plane.create_session(me, SessionCreate())
    assert info.value.code == "rate_limited"
    assert 0.5 < info.value.retry_after_s <= 1.0
    await plane.create_session(other, SessionCreate())
    assert await plane.store.active() == {MODEL: 3}
    assert plane.monitor.active[MODEL] == 3


async def test_owner_cap_refuses_a_session_and_evicts_nothing(make_plane: MakePlane) -> None:
    settings = Settings(max_sessions_per_key=2, max_sessions=3)
    plane = await make_plane(settings)
    me, other = anonymous("10.0.0.1"), anonymous("10.0.0.2")
    mine = [(await plane.create_session(me, SessionCreate()))["id"] for _ in range(2)]
    theirs = (await plane.create_session(other, SessionCreate()))["id"]  # the store is full
    with pytest.raises(TooManyRequests) as info:
        await plane.create_session(me, SessionCreate())
    assert info.value.code == "session_quota" and info.value.retry_after_s == 1.0
    for sid in mine:
        await plane.get_session(me, sid)
    await plane.get_session(other, theirs)
    await plane.sweep()
    assert await plane.store.active() == {MODEL: 3}
    assert plane.monitor.active[MODEL] == 3
    await plane.delete_session(me, mine[0])
    await plane.create_session(me, SessionCreate())


# --- model versions -----------------------------------------------------------------------------


async def test_sessions_stay_on_their_version_until_it_is_released(make_plane: MakePlane) -> None:
    """A new version serves new sessions; a session opened before keeps its version (and its
    engine) until the drained version is released, then it is told its model is gone."""
    plane = await make_plane()
    me = anonymous()
    old = (await plane.create_session(me, SessionCreate()))["id"]
    await plane.advance(me, old, chunk(0, history(3)))
    v1 = plane.registry.get(MODEL)
    v2 = LoadedModel(CARD.model_copy(update={"version": "v2"}), FakeEngine())
    assert plane.add_model(v2, Router("dense", None)) is v1
    new = await plane.create_session(me, SessionCreate())
    assert new["model_version"] == "v2"
    calls = len(v1.engine.calls), len(v2.engine.calls)
    await plane.advance(me, old, chunk(1, history(2)))
    assert (len(v1.engine.calls), len(v2.engine.calls)) == (calls[0] + 1, calls[1])
    assert (await plane.get_session(me, old))["model_version"] == CARD.version
    assert await plane.release_drained(idle_s=3600) == []  # used a moment ago: still draining
    assert [m.key for m in await plane.release_drained(idle_s=0)] == [v1.key]
    with pytest.raises(ModelUnavailable):
        await plane.advance(me, old, chunk(2, history(1)))
    with pytest.raises(ModelUnavailable):
        plane.batcher(v1.card)  # a request that looked the version up before the release
    await plane.advance(me, new["id"], chunk(0, history(2)))


async def test_an_unloaded_model_takes_no_new_sessions_but_serves_its_own(
    make_plane: MakePlane,
) -> None:
    plane = await make_plane()
    me = anonymous()
    sid = (await plane.create_session(me, SessionCreate()))["id"]
    plane.registry.retire(MODEL)
    with pytest.raises(ModelNotFound):
        await plane.create_session(me, SessionCreate(model=MODEL))
    answer = await plane.advance(me, sid, chunk(0, history(2)))
    assert answer.outputs.first_index == 0

"""The stored forms: SessionRecord and a chunk's packed outputs round-trip exactly (in both
record formats) and stay within the size bound sessions.py documents."""

import numpy as np
import pytest

from sarnn_serve.records import PackedOutputs
from sarnn_serve.results import StepOutputs
from sarnn_serve.sessions import SessionRecord, new_session_id

SLACK = 16  # bytes of msgpack framing beyond the documented per-part sizes


def outputs(steps: int, classes: int, hidden: int, include_mask: bool) -> StepOutputs:
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((steps, classes)).astype(np.float32)
    logits[0, 0] = -0.0
    logits[-1, -1] = np.finfo(np.float32).smallest_subnormal
    return StepOutputs.from_graph(123_456, logits, rng.random((steps, hidden)) < 0.5, include_mask)


def record(last: StepOutputs | None, hidden: int = 13) -> SessionRecord:
    """A record with every field away from its default, at the largest sizes ids reach."""
    return SessionRecord(
        id=new_session_id(),
        model="watch-gru",
        model_version="ab9018471d09",
        threshold=0.35,
        ttl_s=7 * 24 * 3600.0,
        state=np.random.default_rng(1).standard_normal(hidden).astype(np.float32),
        owner="key-0123456789ab",
        next_seq=2**63 - 1,
        steps=2**40,
        updates=2**45,
        created=1.7e9 + 0.123,
        last_seen=1.7e9 + 9.875,
        last_digest=bytes(range(16)),
        last_outputs=None if last is None else PackedOutputs.of(last),
        recent_rate=0.125,
    )


def assert_same_outputs(a: StepOutputs | None, b: StepOutputs | None) -> None:
    if a is None or b is None:
        assert a is b
        return
    assert a.first_index == b.first_index
    assert a.logits.dtype == b.logits.dtype == np.float32
    assert a.logits.tobytes() == b.logits.tobytes()  # bit for bit, -0.0 and subnormals included
    assert a.counts.dtype == b.counts.dtype == np.uint16
    np.testing.assert_array_equal(a.counts, b.counts)
    if a.masks is None or b.masks is None:
        assert a.masks is b.masks
    else:
        assert a.masks.dtype == b.masks.dtype == bool and a.masks.shape == b.masks.shape
        np.testing.assert_array_equal(a.masks, b.masks)


@pytest.mark.parametrize("hidden", [1, 8, 13, 128])
@pytest.mark.parametrize("include_mask", [False, True])
def test_packed_outputs_round_trip_exactly(hidden: int, include_mask: bool) -> None:
    out = outputs(37, 7, hidden, include_mask)
    back = PackedOutputs.of(out).unpack()
    assert_same_outputs(back, out)
    assert back.steps == 37
    assert (back.masks is not None) == include_mask


def test_step_outputs_count_updates_per_step() -> None:
    updates = np.zeros((3, 5), bool)
    updates[1, :2] = True
    updates[2, :] = True
    out = StepOutputs.from_graph(4, np.zeros((3, 2), np.float32), updates, include_mask=False)
    np.testing.assert_array_equal(out.counts, [0, 2, 5])
    assert out.masks is None


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("last", ["none", "outputs", "outputs_with_masks"])
def test_session_record_round_trips(last: str, version: int) -> None:
    last_outputs = {
        "none": None,
        "outputs": outputs(5, 3, 13, include_mask=False),
        "outputs_with_masks": outputs(5, 3, 13, include_mask=True),
    }[last]
    rec = record(last_outputs)
    back = SessionRecord.decode(rec.encode(version))
    for name in (
        "id", "model", "model_version", "threshold", "ttl_s", "owner", "next_seq", "steps",
        "updates", "created", "last_seen", "last_digest", "recent_rate",
    ):  # fmt: skip
        assert getattr(back, name) == getattr(rec, name), name
    assert back.state.dtype == np.float32 and back.state.tobytes() == rec.state.tobytes()
    back.state[0] = 1.0  # decoded arrays are writable copies, not views of the bytes
    assert_same_outputs(back.last_outputs and back.last_outputs.unpack(), last_outputs)


def test_record_size_is_bounded_at_the_largest_chunk() -> None:
    steps, classes, hidden = 4096, 7, 128
    size = {
        masks: len(record(outputs(steps, classes, hidden, masks), hidden).encode())
        for masks in (True, False)
    }
    fields_and_state = 450 + 4 * hidden + SLACK
    assert size[True] <= fields_and_state + steps * (4 * classes + 2 + hidden // 8)
    assert size[False] <= fields_and_state + steps * (4 * classes + 2)

"""The stored form of a session record: a format version, named fields, and their checks.

Format 2 (written by default) is a msgpack map {"v": 2, <field>: <value>, ...}, the last
chunk's outputs a nested map. Format 1, the previous release's, is a msgpack list of the same
fields in `V1_FIELDS` order, the outputs packed as `PackedOutputs.v1`; it is read, and written
while a rolling upgrade from that release is under way (SARNN_RECORD_FORMAT=1), since that
release reads nothing else.

A reader keeps the fields it knows and ignores the others (a newer release's: it must give each
field it adds a default that is right when the field is absent, and raise the format version
only for a change an older reader would misread). A missing field takes its default. A missing
required field, a value of the wrong type or out of range, or bytes that are no record raise
RecordUnreadable, which fails that one session and nothing else.
"""

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from sarnn_serve.results import StepOutputs

FORMAT = 2
FORMATS = (1, 2)


class RecordUnreadable(ValueError):
    """Stored bytes that are not a session record this release can read (the message says why)."""


@dataclass(frozen=True)
class PackedOutputs:
    """A chunk's outputs as stored (logits float32 [T,C], counts uint16 [T], masks as bits
    [T, ceil(H/8)]): about 4C + 2 bytes per step, plus H/8 with masks. Unpacked into
    StepOutputs only when a retry needs them."""

    first_index: int
    steps: int
    classes: int
    logits: bytes
    counts: bytes
    hidden: int | None = None  # with masks, their width
    masks: bytes | None = None

    @classmethod
    def of(cls, out: StepOutputs) -> "PackedOutputs":
        t, c = out.logits.shape
        masks = None if out.masks is None else np.packbits(out.masks, axis=1).tobytes()
        hidden = None if out.masks is None else out.masks.shape[1]
        logits = np.ascontiguousarray(out.logits, np.float32).tobytes()
        counts = np.ascontiguousarray(out.counts, np.uint16).tobytes()
        return cls(out.first_index, t, c, logits, counts, hidden, masks)

    def unpack(self) -> StepOutputs:
        masks = None
        if self.masks is not None:
            bits = np.frombuffer(self.masks, np.uint8).reshape(self.steps, -1)
            masks = np.unpackbits(bits, axis=1, count=self.hidden).astype(bool)
        return StepOutputs(
            self.first_index,
            np.frombuffer(self.logits, np.float32).reshape(self.steps, self.classes),
            np.frombuffer(self.counts, np.uint16),
            masks,
        )

    @property
    def size(self) -> int:
        """Bytes held."""
        return len(self.logits) + len(self.counts) + len(self.masks or b"")

    def v1(self) -> bytes:
        """Format 1: msgpack [first_index, T, C, logits, counts, [H, mask bits] or nil]."""
        masks = None if self.masks is None else [self.hidden, self.masks]
        return msgpack.packb(
            [self.first_index, self.steps, self.classes, self.logits, self.counts, masks]
        )

    def v2(self) -> dict[str, Any]:
        return {
            "first_index": self.first_index,
            "steps": self.steps,
            "classes": self.classes,
            "logits": self.logits,
            "counts": self.counts,
            "hidden": self.hidden,
            "masks": self.masks,
        }

    @classmethod
    def from_v1(cls, data: Any) -> "PackedOutputs":
        if not isinstance(data, bytes):
            raise RecordUnreadable("last_outputs: not bytes")
        try:
            first, t, c, logits, counts, masks = msgpack.unpackb(data)
        except Exception as exc:
            raise RecordUnreadable(f"last_outputs: not the format 1 list ({exc})") from None
        hidden, bits = masks if isinstance(masks, list) and len(masks) == 2 else (None, masks)
        return cls._checked(first, t, c, logits, counts, hidden, bits)

    @classmethod
    def from_v2(cls, data: Any) -> "PackedOutputs":
        if not isinstance(data, dict):
            raise RecordUnreadable("last_outputs: not a map")
        names = ("first_index", "steps", "classes", "logits", "counts")
        if any(name not in data for name in names):
            raise RecordUnreadable(f"last_outputs: needs {', '.join(names)}")
        return cls._checked(*(data[name] for name in names), data.get("hidden"), data.get("masks"))

    @classmethod
    def _checked(
        cls, first: Any, t: Any, c: Any, logits: Any, counts: Any, hidden: Any, masks: Any
    ) -> "PackedOutputs":
        ok = (
            _count(first)
            and _count(t)
            and _count(c)
            and c > 0
            and isinstance(logits, bytes)
            and len(logits) == 4 * t * c
            and isinstance(counts, bytes)
            and len(counts) == 2 * t
        )
        if ok and masks is not None:
            ok = _count(hidden) and hidden > 0 and isinstance(masks, bytes)
            ok = ok and len(masks) == t * ((hidden + 7) // 8)
        if not ok:
            raise RecordUnreadable("last_outputs: sizes or types do not fit together")
        return cls(first, t, c, logits, counts, hidden if masks is not None else None, masks)


# --- fields ---------------------------------------------------------------------------------


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**64


def _real(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _unit(v: Any) -> bool:
    return _real(v) and 0 <= v <= 1


def _rate(v: Any) -> bool:
    return v is None or (_real(v) and 0 < v <= 1)


def _maybe_unit(v: Any) -> bool:
    return v is None or _unit(v)


def _text(v: Any) -> bool:
    return isinstance(v, str)


def _blob(v: Any) -> bool:
    return isinstance(v, bytes)


def _positive(v: Any) -> bool:
    return _real(v) and v > 0


def _flag(v: Any) -> bool:
    return isinstance(v, bool)


def _any(v: Any) -> bool:
    return True  # checked when converted


REQUIRED = None
# name -> (check, what it must be, default factory or REQUIRED), in format 1's order
FIELDS: dict[str, tuple[Callable[[Any], bool], str, Callable[[], Any] | None]] = {
    "id": (_text, "text", REQUIRED),
    "model": (_text, "text", REQUIRED),
    "model_version": (_text, "text", REQUIRED),
    "threshold": (_unit, "a number in [0, 1]", REQUIRED),
    "ttl_s": (_positive, "a positive number", REQUIRED),
    "state": (_blob, "bytes", REQUIRED),
    "owner": (_text, "text", str),
    "next_seq": (_count, "a count", int),
    "steps": (_count, "a count", int),
    "updates": (_count, "a count", int),
    "created": (_real, "a time", time.time),
    "last_seen": (_real, "a time", time.time),
    "last_digest": (_blob, "bytes", bytes),
    "last_outputs": (_any, "", lambda: None),
    "recent_rate": (_unit, "a number in [0, 1]", lambda: 1.0),
    "last_request": (_blob, "bytes", bytes),
    "target_rate": (_rate, "nil or a number in (0, 1]", lambda: None),
    "control_offset": (_real, "a number", float),
    "degrade": (_flag, "a boolean", bool),
    "last_threshold": (_maybe_unit, "nil or a number in [0, 1]", lambda: None),
}
V1_FIELDS = tuple(FIELDS)


def encode(fields: dict[str, Any], version: int = FORMAT) -> bytes:
    """A record's stored bytes in format `version` (1 or 2). `fields` holds every name of
    FIELDS; `state` is a float32 array and `last_outputs` PackedOutputs or None."""
    values = dict(fields)
    values["state"] = np.ascontiguousarray(fields["state"], np.float32).tobytes()
    last = fields["last_outputs"]
    if version == 1:
        values["last_outputs"] = None if last is None else last.v1()
        return msgpack.packb([values[name] for name in V1_FIELDS])
    values["last_outputs"] = None if last is None else last.v2()
    return msgpack.packb({"v": FORMAT, **values})


def decode(data: bytes) -> dict[str, Any]:
    """The fields of a stored record, in either format, checked (RecordUnreadable if not)."""
    try:
        raw = msgpack.unpackb(data)
    except Exception as exc:
        raise RecordUnreadable(f"not msgpack ({exc})") from None
    if isinstance(raw, list):
        values, version = dict(zip(V1_FIELDS, raw, strict=False)), 1
    elif isinstance(raw, dict) and raw.get("v") == FORMAT:
        values, version = raw, 2
    elif isinstance(raw, dict) and "v" in raw:
        raise RecordUnreadable(f"format {raw['v']!r}, which this release cannot read")
    else:
        raise RecordUnreadable("not a session record")
    fields = {}
    for name, (check, what, default) in FIELDS.items():
        if name not in values:
            if default is REQUIRED:
                raise RecordUnreadable(f"{name}: missing")
            fields[name] = default()
        elif check(value := values[name]):
            fields[name] = value
        else:
            raise RecordUnreadable(f"{name}: {_show(value)} is not {what}")
    state = fields["state"]
    if len(state) % 4:
        raise RecordUnreadable(f"state: {len(state)} bytes are no float32 vector")
    fields["state"] = np.frombuffer(state, np.float32).copy()
    if not np.isfinite(fields["state"]).all():
        raise RecordUnreadable("state: not finite")
    last = fields["last_outputs"]
    if last is not None:
        fields["last_outputs"] = (PackedOutputs.from_v1 if version == 1 else PackedOutputs.from_v2)(
            last
        )
    return fields


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."

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


@dataclass(slots=True)
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
        if type(data) is not dict:
            raise RecordUnreadable("last_outputs: not a map")
        try:
            first, t, c = data["first_index"], data["steps"], data["classes"]
            logits, counts = data["logits"], data["counts"]
        except KeyError as exc:
            raise RecordUnreadable(f"last_outputs: {exc.args[0]} missing") from None
        return cls._checked(first, t, c, logits, counts, data.get("hidden"), data.get("masks"))

    @classmethod
    def _checked(
        cls, first: Any, t: Any, c: Any, logits: Any, counts: Any, hidden: Any, masks: Any
    ) -> "PackedOutputs":
        ok = (
            type(first) is type(t) is type(c) is int
            and first >= 0
            and t >= 0
            and c > 0
            and type(logits) is type(counts) is bytes
            and len(logits) == 4 * t * c
            and len(counts) == 2 * t
        )
        if masks is None:
            hidden = None
        elif ok:
            ok = type(hidden) is int and hidden > 0 and type(masks) is bytes
            ok = ok and len(masks) == t * ((hidden + 7) // 8)
        if not ok:
            raise RecordUnreadable("last_outputs: sizes or types do not fit together")
        return cls(first, t, c, logits, counts, hidden, masks)


# --- fields ---------------------------------------------------------------------------------

TEXT, BLOB, COUNT, FLAG = (str,), (bytes,), (int,), (bool,)
REAL = (float, int)
MAYBE_REAL = (float, int, type(None))
REQUIRED = None
# name -> (the types its value may have, default factory or REQUIRED), in format 1's order
FIELDS: dict[str, tuple[tuple[type, ...], Callable[[], Any] | None]] = {
    "id": (TEXT, REQUIRED),
    "model": (TEXT, REQUIRED),
    "model_version": (TEXT, REQUIRED),
    "threshold": (REAL, REQUIRED),
    "ttl_s": (REAL, REQUIRED),
    "state": (BLOB, REQUIRED),
    "owner": (TEXT, str),
    "next_seq": (COUNT, int),
    "steps": (COUNT, int),
    "updates": (COUNT, int),
    "created": (REAL, time.time),
    "last_seen": (REAL, time.time),
    "last_digest": (BLOB, bytes),
    "last_outputs": ((bytes, dict, type(None)), lambda: None),
    "recent_rate": (REAL, lambda: 1.0),
    "last_request": (BLOB, bytes),
    "target_rate": (MAYBE_REAL, lambda: None),
    "control_offset": (REAL, float),
    "degrade": (FLAG, bool),
    "last_threshold": (MAYBE_REAL, lambda: None),
}
_SCHEMA = tuple((name, types, default) for name, (types, default) in FIELDS.items())


def _check_ranges(f: dict[str, Any]) -> None:
    """The numbers' ranges (NaN is in none)."""

    def refuse(name: str, what: str) -> None:
        raise RecordUnreadable(f"{name}: {_show(f[name])} is not {what}")

    for name in ("threshold", "recent_rate"):
        if not 0 <= f[name] <= 1:
            refuse(name, "in [0, 1]")
    if not 0 < f["ttl_s"] < math.inf:
        refuse("ttl_s", "a positive number")
    for name in ("next_seq", "steps", "updates"):
        if f[name] < 0:
            refuse(name, "a count")
    for name in ("created", "last_seen", "control_offset"):
        if f[name] - f[name] != 0:
            refuse(name, "a finite number")
    if f["target_rate"] is not None and not 0 < f["target_rate"] <= 1:
        refuse("target_rate", "nil or in (0, 1]")
    if f["last_threshold"] is not None and not 0 <= f["last_threshold"] <= 1:
        refuse("last_threshold", "nil or in [0, 1]")


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


def decode(data: bytes, trusted: bool = False) -> dict[str, Any]:
    """The fields of a stored record, in either format, checked (RecordUnreadable if not);
    `trusted`: bytes this process wrote itself (an in-process store), in format 2 not checked."""
    try:
        raw = msgpack.unpackb(data)
    except Exception as exc:
        raise RecordUnreadable(f"not msgpack ({exc})") from None
    if trusted and type(raw) is dict:
        fields = {name: raw[name] for name in V1_FIELDS}
        fields["state"] = np.frombuffer(fields["state"], np.float32).copy()
        if (last := fields["last_outputs"]) is not None:
            fields["last_outputs"] = PackedOutputs(**last)
        return fields
    if isinstance(raw, list):
        values, version = dict(zip(V1_FIELDS, raw, strict=False)), 1
    elif isinstance(raw, dict) and raw.get("v") == FORMAT:
        values, version = raw, 2
    elif isinstance(raw, dict) and "v" in raw:
        raise RecordUnreadable(f"format {raw['v']!r}, which this release cannot read")
    else:
        raise RecordUnreadable("not a session record")
    fields = {}
    for name, types, default in _SCHEMA:
        value = values.get(name, values)  # `values` itself stands for "absent"
        if value is values:
            if default is REQUIRED:
                raise RecordUnreadable(f"{name}: missing")
            fields[name] = default()
        elif type(value) in types:
            fields[name] = value
        else:
            raise RecordUnreadable(f"{name}: {_show(value)} is of type {type(value).__name__}")
    _check_ranges(fields)
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

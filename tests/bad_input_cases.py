"""Tables of bad input for `test_bad_inputs.py`: id -> the input and the error it must get.

Sized for a server started with SARNN_MAX_CHUNK_STEPS=50, SARNN_MAX_BODY_BYTES=20000 and
SARNN_WS_MAX_MESSAGE_BYTES=20000, serving the tiny watch model (F = 6 features). A chunk's
`seq` is 1: the session under test has applied chunk 0, so a bad chunk that slipped through
would advance it, and the test would see it.
"""

import gzip
import json
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

FEATURES = 6
MAX_STEPS = 50
MAX_BYTES = 20000
MODEL = "watch-tiny"
JSON_TYPE = "application/json"
CHUNKS_PATH = "/v1/sessions/{sid}/chunks"
PREDICT_PATH = f"/v1/models/{MODEL}/predict"
NAN, INF = float("nan"), float("inf")


def recording(seed: int, steps: int) -> list[list[float]]:
    """Watch-like raw samples (float32 values, so JSON round-trips them exactly)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 1.0, (steps, FEATURES)) * [0.6, 0.6, 0.6, 1.5, 1.5, 1.5]
    return x.astype(np.float32).tolist()


HISTORY = recording(1, 12)  # chunk 0 of every session under test
NEXT = recording(2, 9)  # the good chunk 1 sent after each bad input
ROW = [0.1, -0.2, 0.3, 1.0, -1.5, 0.25]
LONG = [ROW] * MAX_STEPS
OMIT = object()


@dataclass(frozen=True)
class Case:
    """A bad input and the error it must get. `body` is a JSON/msgpack value, or raw text or
    bytes sent as they are."""

    body: Any
    status: int = 422
    code: str = "invalid_input"
    field: str | None = None


@dataclass(frozen=True)
class Http(Case):
    """An HTTP request: `body` bytes go as they are, anything else as JSON; `path` may name
    {sid} (the session under test), {swapped} (its id with letters swapped to the other case)
    and {deleted} (a deleted session)."""

    method: str = "POST"
    path: str = CHUNKS_PATH
    content_type: str | None = JSON_TYPE
    headers: tuple[tuple[str, str], ...] = ()
    chunked: bool = False


@dataclass(frozen=True)
class WsOpen(Case):
    """A WebSocket URL (path and query, `body`) refused with an error frame, then `close`."""

    close: int = 4400


def chunk(**fields: Any) -> dict:
    """A chunk body: seq 1 and one good step unless overridden; fields set to OMIT are left out."""
    body = {"seq": 1, "inputs": [ROW], **fields}
    return {k: v for k, v in body.items() if v is not OMIT}


def row(j: int, value: Any) -> list:
    """ROW with feature j replaced."""
    return [*ROW[:j], value, *ROW[j + 1 :]]


def bad(field: str | None, body: Any, **kw: Any) -> Case:
    return Case(body, field=field, **kw)


def bad_json(text: str | bytes, **kw: Any) -> Case:
    return Case(text, code="invalid_json", field="body", **kw)


def fixmap(n: int, *items: Any) -> bytes:
    """A msgpack map of n pairs, its keys and values given in turn (bytes: already packed), for
    maps msgpack.packb will not write."""
    return bytes([0x80 | n]) + b"".join(
        i if isinstance(i, bytes) else msgpack.packb(i) for i in items
    )


GOOD_PAIRS = ("seq", 1, "inputs", [ROW])
PADDED_CHUNK = json.dumps({"seq": 1, "inputs": NEXT}) + " " * MAX_BYTES

# --- chunks: the same value on REST (JSON), WebSocket JSON text and WebSocket msgpack ---------

CHUNKS: dict[str, Case] = {
    "seq missing": bad("seq", chunk(seq=OMIT)),
    "seq null": bad("seq", chunk(seq=None)),
    "seq negative": bad("seq", chunk(seq=-1)),
    "seq most negative int64": bad("seq", chunk(seq=-(2**63))),
    "seq 2**63": bad("seq", chunk(seq=2**63)),
    "seq 2**64-1": bad("seq", chunk(seq=2**64 - 1)),
    "seq fractional": bad("seq", chunk(seq=1.5)),
    "seq float with integral value": bad("seq", chunk(seq=1.0)),
    "seq NaN": bad("seq", chunk(seq=NAN)),
    "seq numeric string": bad("seq", chunk(seq="1")),
    "seq word": bad("seq", chunk(seq="one")),
    "seq true": bad("seq", chunk(seq=True)),
    "seq false": bad("seq", chunk(seq=False)),
    "seq list": bad("seq", chunk(seq=[1])),
    "seq object": bad("seq", chunk(seq={"n": 1})),
    "seq gap": Case(chunk(seq=2), 409, "session_rolled_back"),
    "seq far ahead": Case(chunk(seq=2**63 - 1), 409, "session_rolled_back"),
    "retry of seq 0 with other inputs": Case(chunk(seq=0), 409, "retry_mismatch"),
    "retry of seq 0 with a step fewer": Case(
        chunk(seq=0, inputs=HISTORY[:-1]), 409, "retry_mismatch"
    ),
    "retry of seq 0 asking for masks": Case(
        chunk(seq=0, inputs=HISTORY, include_mask=True), 409, "retry_mismatch"
    ),
    "inputs missing": bad("inputs", chunk(inputs=OMIT)),
    "inputs null": bad("inputs", chunk(inputs=None)),
    "inputs empty": bad("inputs", chunk(inputs=[])),
    "inputs a string": bad("inputs", chunk(inputs="abc")),
    "inputs a number": bad("inputs", chunk(inputs=5)),
    "inputs true": bad("inputs", chunk(inputs=True)),
    "inputs an object": bad("inputs", chunk(inputs={"0": ROW})),
    "inputs one flat step": bad("inputs[0]", chunk(inputs=ROW)),
    "inputs three-dimensional": bad("inputs[0][0]", chunk(inputs=[[ROW]])),
    "empty step": bad("inputs[0]", chunk(inputs=[[]])),
    "empty step after a good one": bad("inputs[1]", chunk(inputs=[ROW, []])),
    "step null": bad("inputs[1]", chunk(inputs=[ROW, None])),
    "step a string": bad("inputs[0]", chunk(inputs=["0.1,-0.2,0.3,1.0,-1.5,0.25"])),
    "step an object": bad("inputs[0]", chunk(inputs=[{"ax": 0.1}])),
    "one feature": bad("inputs[0]", chunk(inputs=[[0.5]])),
    "five features": bad("inputs[0]", chunk(inputs=[ROW[:5]])),
    "seven features": bad("inputs[0]", chunk(inputs=[[*ROW, 0.0]])),
    "ragged rows: short second": bad("inputs[1]", chunk(inputs=[ROW, ROW[:3]])),
    "ragged rows: long third": bad("inputs[2]", chunk(inputs=[ROW, ROW, [*ROW, 1.0]])),
    "numeric string value": bad("inputs[0][2]", chunk(inputs=[row(2, "0.3")])),
    "empty string value": bad("inputs[0][1]", chunk(inputs=[row(1, "")])),
    "null value": bad("inputs[0][3]", chunk(inputs=[row(3, None)])),
    "true value": bad("inputs[0][4]", chunk(inputs=[row(4, True)])),
    "false value": bad("inputs[1][0]", chunk(inputs=[ROW, row(0, False)])),
    "list value": bad("inputs[0][0]", chunk(inputs=[row(0, [1.0])])),
    "object value": bad("inputs[0][5]", chunk(inputs=[row(5, {"v": 1})])),
    "NaN value": bad("inputs[1][5]", chunk(inputs=[ROW, row(5, NAN)])),
    "Infinity value": bad("inputs[0][2]", chunk(inputs=[row(2, INF)])),
    "value beyond the input bound": bad("inputs[0][1]", chunk(inputs=[row(1, 2e9)])),
    "negative value beyond the bound": bad("inputs[0][4]", chunk(inputs=[row(4, -1.5e9)])),
    "-Infinity value": bad("inputs[0][0]", chunk(inputs=[row(0, -INF)])),
    "float32 overflow 1e39": bad("inputs[0][0]", chunk(inputs=[row(0, 1e39)])),
    "float32 overflow -3.5e38": bad("inputs[1][3]", chunk(inputs=[ROW, row(3, -3.5e38)])),
    "float64 max": bad("inputs[0][1]", chunk(inputs=[row(1, 1.7976931348623157e308)])),
    "bad value deep in a long chunk": bad("inputs[49][5]", chunk(inputs=[*LONG[:49], row(5, "x")])),
    "short row deep in a long chunk": bad("inputs[37]", chunk(inputs=[*LONG[:37], ROW[:5]])),
    "51 steps": Case(chunk(inputs=[ROW] * 51), 413, "payload_too_large", "inputs"),
    # malformed at any size: 422 before 413
    "51 steps with a short row": bad("inputs[50]", chunk(inputs=[*LONG, ROW[:5]])),
    "51 steps with a string value": bad("inputs[50][0]", chunk(inputs=[*LONG, row(0, "x")])),
    "include_mask a word": bad("include_mask", chunk(include_mask="maybe")),
    "include_mask the string true": bad("include_mask", chunk(include_mask="true")),
    "include_mask 1": bad("include_mask", chunk(include_mask=1)),
    "include_mask 0": bad("include_mask", chunk(include_mask=0)),
    "include_mask null": bad("include_mask", chunk(include_mask=None)),
    "include_mask a list": bad("include_mask", chunk(include_mask=[True])),
    "unknown field": bad("foo", chunk(foo=1)),
    "two unknown fields": bad("zeta", chunk(zeta=1, alpha=2)),
    "misspelled Seq": bad("seq", chunk(seq=OMIT, Seq=1)),
    "threshold in a chunk": bad("threshold", chunk(threshold=0.3)),
    "model in a chunk": bad("model", chunk(model=MODEL)),
    "session_id in a chunk": bad("session_id", chunk(session_id="abc")),
    "type in a chunk": bad("type", chunk(type="chunk")),
    "empty key": bad("", chunk(**{"": 1})),
    "dotted key": bad("a.b", chunk(**{"a.b": 1})),
    "numeric key": bad("0", chunk(**{"0": 1})),
    "empty object": bad("seq", {}),
    "body a list": bad("body", [1, [ROW]]),
    "body a list of chunks": bad("body", [chunk()]),
    "body null": bad("body", None),
    "body a string": bad("body", "seq=1"),
    "body a number": bad("body", 1),
    "body true": bad("body", True),
}

# --- JSON text: REST bodies and WebSocket text frames ------------------------------------------

GOOD_TEXT = json.dumps(chunk())
ROW_TEXT = json.dumps(ROW)

JSON_TEXT: dict[str, Case] = {
    "truncated object": bad_json(GOOD_TEXT[:-3]),
    "unterminated string": bad_json('{"seq": 1, "inputs'),
    "trailing comma in object": bad_json(GOOD_TEXT[:-1] + ",}"),
    "trailing comma in array": bad_json(f'{{"seq": 1, "inputs": [{ROW_TEXT},]}}'),
    "single quotes": bad_json(GOOD_TEXT.replace('"', "'")),
    "unquoted keys": bad_json(f"{{seq: 1, inputs: [{ROW_TEXT}]}}"),
    "comment": bad_json(f'{{"seq": 1, /* one */ "inputs": [{ROW_TEXT}]}}'),
    "trailing garbage": bad_json(GOOD_TEXT + " x"),
    "two documents": bad_json(GOOD_TEXT + GOOD_TEXT),
    "leading zero": bad_json(f'{{"seq": 01, "inputs": [{ROW_TEXT}]}}'),
    "hex number": bad_json(f'{{"seq": 0x1, "inputs": [{ROW_TEXT}]}}'),
    "plus sign": bad_json(f'{{"seq": +1, "inputs": [{ROW_TEXT}]}}'),
    "bare decimal point": bad_json('{"seq": 1, "inputs": [[.5, 0, 0, 0, 0, 0]]}'),
    "trailing decimal point": bad_json('{"seq": 1, "inputs": [[1., 0, 0, 0, 0, 0]]}'),
    "raw newline in a key": bad_json(GOOD_TEXT[:-1] + ', "a\nb": 1}'),
    "invalid escape": bad_json(GOOD_TEXT[:-1] + ', "\\x41": 1}'),
    "whitespace only": bad_json(" \n\t "),
    "bare word": bad_json("hello"),
    "Python None": bad_json('{"seq": 1, "inputs": [[None, 0, 0, 0, 0, 0]]}'),
    "Python True": bad_json(GOOD_TEXT[:-1] + ', "include_mask": True}'),
    "misspelled literal": bad_json(GOOD_TEXT[:-1] + ', "include_mask": tru}'),
    "arrays nested 5000 deep": bad_json('{"seq": 1, "inputs": ' + "[" * 5000 + "]" * 5000 + "}"),
    "objects nested 3000 deep": bad_json('{"a":' * 3000 + "1" + "}" * 3000),
    "integer beyond float32": bad(
        "inputs[0][4]", f'{{"seq": 1, "inputs": [[0, 0, 0, 0, {2**128}, 0]]}}'
    ),
    "5000-digit integer": bad_json('{"seq": 1, "inputs": [[' + "9" * 5000 + ", 0, 0, 0, 0, 0]]}"),
    "duplicate key, the last bad": bad("seq", f'{{"seq": 1, "inputs": [{ROW_TEXT}], "seq": "x"}}'),
    "arrays nested 600 deep": bad(
        "inputs[0][0]", '{"seq": 1, "inputs": ' + "[" * 600 + "]" * 600 + "}"
    ),
    "NaN literal as seq": bad("seq", f'{{"seq": NaN, "inputs": [{ROW_TEXT}]}}'),
    "1e400 as seq": bad("seq", f'{{"seq": 1e400, "inputs": [{ROW_TEXT}]}}'),
    "1e400 in a step": bad("inputs[0][0]", '{"seq": 1, "inputs": [[1e400, 0, 0, 0, 0, 0]]}'),
    "-1e400 in a step": bad("inputs[0][1]", '{"seq": 1, "inputs": [[0, -1e400, 0, 0, 0, 0]]}'),
    "lone surrogate string in a step": bad(
        "inputs[0][5]", '{"seq": 1, "inputs": [[0, 0, 0, 0, 0, "\\ud800"]]}'
    ),
}

# --- REST only: bodies, encodings and content types of POST /v1/sessions/{id}/chunks -----------

GOOD_BYTES = GOOD_TEXT.encode()


def chunk_http(body: Any, field: str | None = "body", **kw: Any) -> Http:
    return Http(body, field=field, **kw)


CHUNK_HTTP: dict[str, Http] = {
    "empty body": chunk_http(b""),
    "NUL bytes": chunk_http(b"\x00\x00\x00", code="invalid_json"),
    "not UTF-8 (0xff)": chunk_http(b'{"seq": 1, "inputs": [[0.1, \xff]]}', code="invalid_json"),
    "Latin-1 key": chunk_http(GOOD_BYTES[:-1] + b', "caf\xe9": 1}', code="invalid_json"),
    "lone surrogate key": chunk_http(GOOD_BYTES[:-1] + b', "\\udc00": 1}'),
    "gzip body": chunk_http(
        gzip.compress(GOOD_BYTES), code="invalid_json", headers=(("content-encoding", "gzip"),)
    ),
    "text/plain": chunk_http(GOOD_BYTES, content_type="text/plain"),
    "form-urlencoded": chunk_http(
        b"seq=1&inputs=0.1,0.2", content_type="application/x-www-form-urlencoded"
    ),
    "multipart form": chunk_http(
        b'--x\r\nContent-Disposition: form-data; name="seq"\r\n\r\n1\r\n--x--\r\n',
        content_type="multipart/form-data; boundary=x",
    ),
    "application/xml": chunk_http(b"<chunk seq='1'/>", content_type="application/xml"),
    "msgpack body": chunk_http(msgpack.packb(chunk()), content_type="application/msgpack"),
    "no content type": chunk_http(GOOD_BYTES, content_type=None),
    "content type 'json'": chunk_http(GOOD_BYTES, content_type="json"),
    "application/json-seq": chunk_http(GOOD_BYTES, content_type="application/json-seq"),
    "seq in the query, not the body": chunk_http(
        {"inputs": [ROW]}, "seq", path=CHUNKS_PATH + "?seq=1"
    ),
    "over the body limit (Content-Length)": chunk_http(
        PADDED_CHUNK.encode(), status=413, code="payload_too_large"
    ),
    "over the body limit (chunked)": chunk_http(
        PADDED_CHUNK.encode(), status=413, code="payload_too_large", chunked=True
    ),
}

# --- REST: POST /v1/sessions -------------------------------------------------------------------


def create(body: Any, field: str | None, path: str = "/v1/sessions", **kw: Any) -> Http:
    return Http(body, field=field, path=path, **kw)


def no_model(body: Any, **kw: Any) -> Http:
    return create(body, None, status=404, code="model_not_found", **kw)


CREATE: dict[str, Http] = {
    "threshold 0": create({"threshold": 0}, "threshold"),
    "threshold 1": create({"threshold": 1}, "threshold"),
    "threshold negative": create({"threshold": -0.5}, "threshold"),
    "threshold -0.0": create({"threshold": -0.0}, "threshold"),
    "threshold 1.5": create({"threshold": 1.5}, "threshold"),
    "threshold underflowing to 0": create(b'{"threshold": 1e-400}', "threshold"),
    "threshold rounding to 1": create(b'{"threshold": 0.99999999999999999}', "threshold"),
    "threshold NaN": create(b'{"threshold": NaN}', "threshold"),
    "threshold Infinity": create(b'{"threshold": Infinity}', "threshold"),
    "threshold -Infinity": create(b'{"threshold": -Infinity}', "threshold"),
    "threshold 1e400": create(b'{"threshold": 1e400}', "threshold"),
    "threshold a 400-digit integer": create(b'{"threshold": 1' + b"0" * 400 + b"}", "threshold"),
    "threshold a string": create({"threshold": "0.5"}, "threshold"),
    "threshold true": create({"threshold": True}, "threshold"),
    "threshold false": create({"threshold": False}, "threshold"),
    "threshold a list": create({"threshold": [0.5]}, "threshold"),
    "threshold an object": create({"threshold": {"value": 0.5}}, "threshold"),
    "idle_timeout_s 0": create({"idle_timeout_s": 0}, "idle_timeout_s"),
    "idle_timeout_s 1e-38": create({"idle_timeout_s": 1e-38}, "idle_timeout_s"),
    "idle_timeout_s just under a second": create({"idle_timeout_s": 0.999}, "idle_timeout_s"),
    "idle_timeout_s negative": create({"idle_timeout_s": -1}, "idle_timeout_s"),
    "idle_timeout_s just over 7 days": create({"idle_timeout_s": 604800.001}, "idle_timeout_s"),
    "idle_timeout_s 1e9": create({"idle_timeout_s": 1e9}, "idle_timeout_s"),
    "idle_timeout_s NaN": create(b'{"idle_timeout_s": NaN}', "idle_timeout_s"),
    "idle_timeout_s Infinity": create(b'{"idle_timeout_s": Infinity}', "idle_timeout_s"),
    "idle_timeout_s 1e400": create(b'{"idle_timeout_s": 1e400}', "idle_timeout_s"),
    "idle_timeout_s a string": create({"idle_timeout_s": "60"}, "idle_timeout_s"),
    "idle_timeout_s true": create({"idle_timeout_s": True}, "idle_timeout_s"),
    "idle_timeout_s a list": create({"idle_timeout_s": [60]}, "idle_timeout_s"),
    "model a number": create({"model": 5}, "model"),
    "model true": create({"model": True}, "model"),
    "model a list": create({"model": [MODEL]}, "model"),
    "model an object": create({"model": {"name": MODEL}}, "model"),
    "model empty": no_model({"model": ""}),
    "model unknown": no_model({"model": "nope"}),
    "model in upper case": no_model({"model": MODEL.upper()}),
    "model with a leading space": no_model({"model": f" {MODEL}"}),
    "model with a NUL": no_model({"model": f"{MODEL}\x00"}),
    "model a path": no_model({"model": f"../{MODEL}"}),
    "model a duplicate key, the last unknown": no_model(
        f'{{"model": "{MODEL}", "model": "nope"}}'.encode()
    ),
    "model a lone surrogate": no_model(b'{"model": "\\ud800"}'),
    "model with a lone surrogate inside": no_model(b'{"model": "a\\udc00b"}'),
    "unknown field": create({"bogus": 1}, "bogus"),
    "misspelled Threshold": create({"Threshold": 0.5}, "Threshold"),
    "delete_on_close (a WebSocket parameter)": create({"delete_on_close": True}, "delete_on_close"),
    "seq in a create": create({"seq": 0}, "seq"),
    "two bad fields: the first is named": create(
        {"threshold": 2, "idle_timeout_s": -1}, "threshold"
    ),
    "body a list": create([{"model": MODEL}], "body"),
    "body null": create(None, "body"),
    "body a string": create("watch-tiny", "body"),
    "empty body": create(b"", "body"),
    "malformed JSON": create(b'{"threshold": 0.5', "body", code="invalid_json"),
    "not UTF-8": create(b'{"model": "\xff"}', "body", code="invalid_json"),
    "text/plain": create(b"{}", "body", content_type="text/plain"),
    "threshold in the query, not the body": create(
        {"threshold": 2}, "threshold", path="/v1/sessions?threshold=0.5"
    ),
    "over the body limit": create(
        b"{" + b" " * MAX_BYTES + b"}", "body", status=413, code="payload_too_large"
    ),
}

# --- REST: POST /v1/models/{name}/predict -----------------------------------------------------

SEQ = [ROW, ROW]


def predict(body: Any, field: str | None, path: str = PREDICT_PATH, **kw: Any) -> Http:
    return Http(body, field=field, path=path, **kw)


PREDICT: dict[str, Http] = {
    "inputs missing": predict({}, "inputs"),
    "inputs null": predict({"inputs": None}, "inputs"),
    "no sequences": predict({"inputs": []}, "inputs"),
    "inputs a string": predict({"inputs": "abc"}, "inputs"),
    "a sequence without steps": predict({"inputs": [[]]}, "inputs[0]"),
    "second sequence without steps": predict({"inputs": [SEQ, []]}, "inputs[1]"),
    "empty step": predict({"inputs": [[[]]]}, "inputs[0][0]"),
    "missing batch dimension": predict({"inputs": SEQ}, "inputs[0][0]"),
    "four-dimensional": predict({"inputs": [[SEQ]]}, "inputs[0][0][0]"),
    "five features in the second sequence": predict({"inputs": [SEQ, [ROW[:5]]]}, "inputs[1][0]"),
    "ragged rows": predict({"inputs": [[ROW, ROW[:2]]]}, "inputs[0][1]"),
    "string value": predict({"inputs": [[ROW, row(2, "1")]]}, "inputs[0][1][2]"),
    "boolean value": predict({"inputs": [[row(4, True)]]}, "inputs[0][0][4]"),
    "null value": predict({"inputs": [SEQ, [row(0, None)]]}, "inputs[1][0][0]"),
    "NaN value": predict(b'{"inputs": [[[1, 2, 3, 4, 5, NaN]]]}', "inputs[0][0][5]"),
    "Infinity value": predict(b'{"inputs": [[[Infinity, 2, 3, 4, 5, 6]]]}', "inputs[0][0][0]"),
    "1e400 value": predict(b'{"inputs": [[[1, 1e400, 3, 4, 5, 6]]]}', "inputs[0][0][1]"),
    "float32 overflow": predict({"inputs": [[row(3, 1e39)]]}, "inputs[0][0][3]"),
    # malformed at any size: 422 before 413
    "257 sequences, the last with a short row": predict(
        {"inputs": [[ROW]] * 256 + [[ROW[:5]]]}, "inputs[256][0]"
    ),
    "51 steps with a short row": predict({"inputs": [[ROW] * 50 + [ROW[:5]]]}, "inputs[0][50]"),
    "257 sequences": predict(
        {"inputs": [[ROW]] * 257}, "inputs", status=413, code="payload_too_large"
    ),
    "51 steps": predict(
        {"inputs": [SEQ, [ROW] * 51]}, "inputs[1]", status=413, code="payload_too_large"
    ),
    "threshold 0": predict({"inputs": [SEQ], "threshold": 0}, "threshold"),
    "threshold 1": predict({"inputs": [SEQ], "threshold": 1}, "threshold"),
    "threshold negative": predict({"inputs": [SEQ], "threshold": -0.1}, "threshold"),
    "threshold NaN": predict(
        f'{{"inputs": [[{ROW_TEXT}]], "threshold": NaN}}'.encode(), "threshold"
    ),
    "threshold a string": predict({"inputs": [SEQ], "threshold": "0.5"}, "threshold"),
    "threshold true": predict({"inputs": [SEQ], "threshold": True}, "threshold"),
    "include_steps a word": predict({"inputs": [SEQ], "include_steps": "yes"}, "include_steps"),
    "include_steps 1": predict({"inputs": [SEQ], "include_steps": 1}, "include_steps"),
    "include_steps null": predict({"inputs": [SEQ], "include_steps": None}, "include_steps"),
    "include_mask 0": predict({"inputs": [SEQ], "include_mask": 0}, "include_mask"),
    "seq in a predict": predict({"inputs": [SEQ], "seq": 0}, "seq"),
    "model in the body": predict({"inputs": [SEQ], "model": MODEL}, "model"),
    "body a list": predict([SEQ], "body"),
    "malformed JSON": predict(b'{"inputs": [[', "body", code="invalid_json"),
    "text/plain": predict({"inputs": [SEQ]}, "body", content_type="text/plain"),
    "over the body limit": predict(
        json.dumps({"inputs": [SEQ]}).encode() + b" " * MAX_BYTES,
        "body",
        status=413,
        code="payload_too_large",
    ),
    "unknown model": predict(
        {"inputs": [SEQ]}, None, path="/v1/models/nope/predict", status=404, code="model_not_found"
    ),
    "model name in upper case": predict(
        {"inputs": [SEQ]},
        None,
        path=f"/v1/models/{MODEL.upper()}/predict",
        status=404,
        code="model_not_found",
    ),
    "model name a NUL": predict(
        {"inputs": [SEQ]}, None, path="/v1/models/%00/predict", status=404, code="model_not_found"
    ),
    "unknown model and a malformed body": predict(
        b"{", "body", path="/v1/models/nope/predict", code="invalid_json"
    ),
}

# --- REST: methods, paths and ids --------------------------------------------------------------


def call(method: str, path: str, status: int, code: str, body: Any = b"") -> Http:
    return Http(body, status, code, method=method, path=path)


def wrong_method(method: str, path: str) -> Http:
    return call(method, path, 405, "method_not_allowed", b"{}" if method != "GET" else b"")


def no_route(method: str, path: str) -> Http:
    return call(method, path, 404, "not_found")


def no_session(method: str, path: str, code: str = "session_not_found") -> Http:
    return call(method, path, 404, code, chunk() if path.endswith("chunks") else b"")


PATHS: dict[str, Http] = {
    "PUT /v1/sessions": wrong_method("PUT", "/v1/sessions"),
    "DELETE /v1/sessions": wrong_method("DELETE", "/v1/sessions"),
    "PATCH /v1/sessions": wrong_method("PATCH", "/v1/sessions"),
    "OPTIONS /v1/sessions": wrong_method("OPTIONS", "/v1/sessions"),
    "POST /v1/sessions/{id}": wrong_method("POST", "/v1/sessions/{sid}"),
    "PUT /v1/sessions/{id}": wrong_method("PUT", "/v1/sessions/{sid}"),
    "PATCH /v1/sessions/{id}": wrong_method("PATCH", "/v1/sessions/{sid}"),
    "TRACE /v1/sessions/{id}": wrong_method("TRACE", "/v1/sessions/{sid}"),
    "GET /v1/sessions/{id}/chunks": wrong_method("GET", CHUNKS_PATH),
    "PUT /v1/sessions/{id}/chunks": wrong_method("PUT", CHUNKS_PATH),
    "DELETE /v1/sessions/{id}/chunks": wrong_method("DELETE", CHUNKS_PATH),
    "GET /v1/models/{name}/predict": wrong_method("GET", PREDICT_PATH),
    "PUT /v1/models/{name}/predict": wrong_method("PUT", PREDICT_PATH),
    "POST /v1/models": wrong_method("POST", "/v1/models"),
    "POST /v1/models/{name}": wrong_method("POST", f"/v1/models/{MODEL}"),
    "DELETE /v1/models/{name}": wrong_method("DELETE", f"/v1/models/{MODEL}"),
    "POST /v1/models/{name}/stats": wrong_method("POST", f"/v1/models/{MODEL}/stats"),
    "POST /healthz": wrong_method("POST", "/healthz"),
    "POST /metrics": wrong_method("POST", "/metrics"),
    "GET /v1/session": no_route("GET", "/v1/session"),
    "GET /v3/sessions": no_route("GET", "/v3/sessions"),
    "POST /v1/sessions/{id}/chunk": no_route("POST", "/v1/sessions/{sid}/chunk"),
    "POST /v1/sessions/{id}/chunks/1": no_route("POST", CHUNKS_PATH + "/1"),
    "GET /v1/sessions/{id}/stream over HTTP": no_route("GET", "/v1/sessions/{sid}/stream"),
    "GET /v1/stream over HTTP": no_route("GET", "/v1/stream"),
    "GET /v1/sessions/..%2fmodels": no_route("GET", "/v1/sessions/..%2fmodels"),
    "GET /v1/models/{name}/predict/x": no_route("GET", PREDICT_PATH + "/x"),
    "GET an unknown session": no_session("GET", "/v1/sessions/nope"),
    "DELETE an unknown session": no_session("DELETE", "/v1/sessions/nope"),
    "chunk to an unknown session": no_session("POST", "/v1/sessions/nope/chunks"),
    "GET a NUL session id": no_session("GET", "/v1/sessions/%00"),
    "GET a session id with a trailing space": no_session("GET", "/v1/sessions/{sid}%20"),
    "GET a session id in the other case": no_session("GET", "/v1/sessions/{swapped}"),
    "GET a 3000-character session id": no_session("GET", "/v1/sessions/" + "a" * 3000),
    "GET the session id '..'": no_session("GET", "/v1/sessions/%2e%2e"),
    "chunk to a session id in the other case": no_session("POST", "/v1/sessions/{swapped}/chunks"),
    "GET a deleted session": no_session("GET", "/v1/sessions/{deleted}", "session_deleted"),
    "DELETE a deleted session": no_session("DELETE", "/v1/sessions/{deleted}", "session_deleted"),
    "chunk to a deleted session": no_session(
        "POST", "/v1/sessions/{deleted}/chunks", "session_deleted"
    ),
    "GET an unknown model": call("GET", "/v1/models/nope", 404, "model_not_found"),
    "GET an unknown model's stats": call("GET", "/v1/models/nope/stats", 404, "model_not_found"),
    "GET a model named 0xff": call("GET", "/v1/models/%ff", 404, "model_not_found"),
    "GET /v1/sessions (listing is off)": call("GET", "/v1/sessions", 403, "forbidden"),
}

# --- WebSocket frames (both stream routes) -----------------------------------------------------

WS_FRAMES: dict[str, Case] = {
    "empty text frame": bad_json(""),
    "empty binary frame": bad_json(b""),
    "msgpack garbage (0xc1)": bad_json(b"\xc1\x00\xff"),
    "msgpack truncated": bad_json(msgpack.packb(chunk())[:-3]),
    "msgpack with trailing bytes": bad_json(msgpack.packb(chunk()) + b"\x00"),
    "msgpack nested 2000 deep": bad_json(b"\x91" * 2000 + b"\x90"),
    "msgpack map32 header claiming 2**32-1 pairs": bad_json(b"\xdf\xff\xff\xff\xff"),
    "msgpack array32 header claiming 2**32-1 items": bad_json(b"\xdd\xff\xff\xff\xff"),
    "msgpack bin32 header claiming 4 GiB": bad_json(b"\xc6\xff\xff\xff\xff"),
    "msgpack str32 header claiming 4 GiB": bad_json(b"\xdb\xff\xff\xff\xff"),
    "msgpack str not UTF-8": bad_json(fixmap(3, *GOOD_PAIRS, b"\xa2\xc3\x28", 1)),
    "msgpack str a CESU-8 surrogate": bad_json(fixmap(3, *GOOD_PAIRS, b"\xa3\xed\xa0\x80", 1)),
    "msgpack int key": bad_json(msgpack.packb({**chunk(), 7: 1})),
    "msgpack nil key": bad_json(msgpack.packb({**chunk(), None: 1})),
    "msgpack bool key": bad_json(msgpack.packb({**chunk(), True: 1})),
    "msgpack float key": bad_json(msgpack.packb({**chunk(), 1.5: 1})),
    "msgpack array key": bad_json(fixmap(3, *GOOD_PAIRS, [1], 1)),
    "msgpack map key": bad_json(fixmap(3, *GOOD_PAIRS, {"a": 1}, 1)),
    "msgpack ext key": bad_json(msgpack.packb({**chunk(), msgpack.ExtType(1, b"x"): 1})),
    "msgpack array": bad("body", msgpack.packb([1, [ROW]])),
    "msgpack str": bad("body", msgpack.packb("seq=1")),
    "msgpack nil": bad("body", msgpack.packb(None)),
    "msgpack int": bad("body", msgpack.packb(1)),
    "msgpack true": bad("body", msgpack.packb(True)),
    "msgpack bin": bad("body", msgpack.packb(b"{}")),
    "msgpack ext": bad("body", msgpack.packb(msgpack.ExtType(1, b"x"))),
    "msgpack bytes keys": bad("body", msgpack.packb({b"seq": 1, b"inputs": [ROW]})),
    "msgpack mixed bytes and str keys": bad(
        "body", msgpack.packb({**chunk(), b"include_mask": False})
    ),
    "msgpack bytes seq": bad("seq", msgpack.packb(chunk(seq=b"1"))),
    "msgpack bytes inputs": bad("inputs", msgpack.packb(chunk(inputs=b"abc"))),
    "msgpack bytes step": bad("inputs[0]", msgpack.packb(chunk(inputs=[bytes(6)]))),
    "msgpack bytes value": bad("inputs[0][0]", msgpack.packb(chunk(inputs=[row(0, b"\x01")]))),
    "msgpack bytes include_mask": bad("include_mask", msgpack.packb(chunk(include_mask=b"\x01"))),
    "msgpack map with bytes keys as a value": bad(
        "inputs[0][0]", msgpack.packb(chunk(inputs=[row(0, {b"k": 1})]))
    ),
    "msgpack map with bytes keys in an unknown field": bad(
        "meta", msgpack.packb(chunk(meta={b"k": b"v"}))
    ),
    "msgpack ext seq": bad("seq", msgpack.packb(chunk(seq=msgpack.ExtType(5, b"\x01")))),
    "msgpack ext value": bad(
        "inputs[0][2]", msgpack.packb(chunk(inputs=[row(2, msgpack.ExtType(5, b"\x01"))]))
    ),
    "msgpack ext step": bad(
        "inputs[1]", msgpack.packb(chunk(inputs=[ROW, msgpack.ExtType(5, b"")]))
    ),
    "msgpack timestamp seq": bad("seq", msgpack.packb(chunk(seq=msgpack.Timestamp(1, 0)))),
    "msgpack timestamp value": bad(
        "inputs[0][0]", msgpack.packb(chunk(inputs=[row(0, msgpack.Timestamp(1, 0))]))
    ),
    "msgpack float32 NaN": bad(
        "inputs[0][5]", msgpack.packb(chunk(inputs=[row(5, NAN)]), use_single_float=True)
    ),
    "JSON in a binary frame": bad_json(GOOD_BYTES),
    "msgpack in a text frame": bad_json(msgpack.packb(chunk()).decode("latin-1")),
    "text frame over the limit": Case(PADDED_CHUNK, 413, "payload_too_large", "body"),
    "msgpack frame over the limit": Case(
        msgpack.packb({"seq": 1, "inputs": [ROW] * 400}), 413, "payload_too_large", "body"
    ),
    "text frame over the limit in bytes, not in characters": Case(
        GOOD_TEXT[:-1] + ', "pad": "' + "€" * 7000 + '"}',
        413,
        "payload_too_large",
        "body",
    ),
}

# Frames the WebSocket layer refuses by closing the socket (a close frame, no error frame):
# id -> (frame, sent as text, close code).
WS_CLOSE: dict[str, tuple[bytes | str, bool, int]] = {
    "text frame over twice the limit": ("x" * (2 * MAX_BYTES + 1), True, 1009),
    "binary frame over twice the limit": (bytes(2 * MAX_BYTES + 1), False, 1009),
    "text frame not UTF-8": (GOOD_BYTES[:-2] + b"\xff]}", True, 1007),
}

# --- WebSocket query parameters and paths ------------------------------------------------------


def query(q: str, field: str | None, **kw: Any) -> WsOpen:
    return WsOpen(f"/v1/stream?{q}", field=field, **kw)


def unknown_model(q: str) -> WsOpen:
    return query(q, None, status=404, code="model_not_found")


WS_QUERY: dict[str, WsOpen] = {
    "threshold=nan": query("threshold=nan", "threshold"),
    "threshold=NaN": query("threshold=NaN", "threshold"),
    "threshold=inf": query("threshold=inf", "threshold"),
    "threshold=-inf": query("threshold=-inf", "threshold"),
    "threshold=Infinity": query("threshold=Infinity", "threshold"),
    "threshold=1.5": query("threshold=1.5", "threshold"),
    "threshold=0": query("threshold=0", "threshold"),
    "threshold=1": query("threshold=1", "threshold"),
    "threshold=-0.5": query("threshold=-0.5", "threshold"),
    "threshold=abc": query("threshold=abc", "threshold"),
    "threshold empty": query("threshold=", "threshold"),
    "threshold without a value": query("threshold", "threshold"),
    "threshold=true": query("threshold=true", "threshold"),
    "threshold=0,5": query("threshold=0,5", "threshold"),
    "threshold hex float": query("threshold=0x1p-1", "threshold"),
    "threshold=1e-400": query("threshold=1e-400", "threshold"),
    "threshold=1e400": query("threshold=1e400", "threshold"),
    "threshold with a zero-width space": query("threshold=%E2%80%8B0.5", "threshold"),
    "idle_timeout_s=nan": query("idle_timeout_s=nan", "idle_timeout_s"),
    "idle_timeout_s=inf": query("idle_timeout_s=inf", "idle_timeout_s"),
    "idle_timeout_s=-inf": query("idle_timeout_s=-inf", "idle_timeout_s"),
    "idle_timeout_s=1e9": query("idle_timeout_s=1e9", "idle_timeout_s"),
    "idle_timeout_s=1e-38": query("idle_timeout_s=1e-38", "idle_timeout_s"),
    "idle_timeout_s=604801": query("idle_timeout_s=604801", "idle_timeout_s"),
    "idle_timeout_s=1e400": query("idle_timeout_s=1e400", "idle_timeout_s"),
    "idle_timeout_s=-1": query("idle_timeout_s=-1", "idle_timeout_s"),
    "idle_timeout_s=0": query("idle_timeout_s=0", "idle_timeout_s"),
    "idle_timeout_s=abc": query("idle_timeout_s=abc", "idle_timeout_s"),
    "idle_timeout_s empty": query("idle_timeout_s=", "idle_timeout_s"),
    "model=unknown": unknown_model("model=unknown"),
    "model empty": unknown_model("model="),
    "model in upper case": unknown_model(f"model={MODEL.upper()}"),
    "model a NUL": unknown_model("model=%00"),
    "model an encoded surrogate": unknown_model("model=%ED%A0%80"),
    "model=%ff": unknown_model("model=%ff"),
    "delete_on_close=maybe": query("delete_on_close=maybe", "delete_on_close"),
    "delete_on_close=2": query("delete_on_close=2", "delete_on_close"),
    "delete_on_close empty": query("delete_on_close=", "delete_on_close"),
    "unknown parameter": query("foo=1", "foo"),
    "misspelled Threshold": query("Threshold=0.5", "Threshold"),
    "seq as a parameter": query("seq=0", "seq"),
    "session_id as a parameter": query("session_id=abc", "session_id"),
    "bare unknown name": query("x", "x"),
    "empty parameter name": query("=1", ""),
    "parameter name with a NUL": query("model%00=x", "model\x00"),
    "two bad parameters: the first field is named": query(
        "idle_timeout_s=-1&threshold=2", "threshold"
    ),
}

WS_SESSION: dict[str, WsOpen] = {
    "unknown session": WsOpen("/v1/sessions/nope/stream", 404, "session_not_found", close=4404),
    "deleted session": WsOpen("/v1/sessions/{deleted}/stream", 404, "session_deleted", close=4404),
    "NUL session id": WsOpen("/v1/sessions/%00/stream", 404, "session_not_found", close=4404),
    "session id in the other case": WsOpen(
        "/v1/sessions/{swapped}/stream", 404, "session_not_found", close=4404
    ),
    "3000-character session id": WsOpen(
        "/v1/sessions/" + "a" * 3000 + "/stream", 404, "session_not_found", close=4404
    ),
    "delete_on_close=maybe": WsOpen(
        "/v1/sessions/{sid}/stream?delete_on_close=maybe",
        field="delete_on_close",
    ),
}

# WebSocket paths without a WebSocket route: the handshake is refused with an HTTP 4xx.
WS_NO_ROUTE: dict[str, str] = {
    "/v1/streams": "/v1/streams",
    "/v1/stream/extra": "/v1/stream/extra",
    "/v1/sessions": "/v1/sessions",
    "/v1/sessions/{id}/chunks": CHUNKS_PATH,
    "/v1/models/{name}": f"/v1/models/{MODEL}",
}

TABLES: dict[str, dict] = {
    "chunks": CHUNKS,
    "json text": JSON_TEXT,
    "chunk http": CHUNK_HTTP,
    "create": CREATE,
    "predict": PREDICT,
    "paths": PATHS,
    "ws frames": WS_FRAMES,
    "ws close": WS_CLOSE,
    "ws query": WS_QUERY,
    "ws session": WS_SESSION,
    "ws no route": WS_NO_ROUTE,
}

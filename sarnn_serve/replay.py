"""`sarnn-serve replay`: stream a recorded sensor file into a running server (the client of
`sarnn_serve.client`, over a WebSocket).

    sarnn-serve replay --url ws://127.0.0.1:8000 [--model NAME]
        (--csv FILE | --dataset watch --recording N) [--rate HZ | --max-speed] [--chunk 1]
        [--threshold T] [--format json|msgpack|raw] [--keep-session] [--no-progress]
        [--api-key KEY]

The model card (GET /v1/models/{name}) says which features the model reads and its sampling
rate. A CSV file (read by sarnn_serve.client.recordings, as training reads one) has a header row
of column names; the columns named by the card's feature_names are used in that order (other
columns are ignored) and an optional column `label` holds the true class (a class label of the
card, or its index, or `idle` for a sensor at rest: a stream file of `python -m export streams
--csv`). `--dataset watch --recording N` takes held-out (test) recording N of the watch data
(needs the training extra: seglearn).

The samples go to a new session in messages of --chunk samples, at --rate samples per second
(default: the card's sample_rate_hz) on absolute deadlines, or back to back with --max-speed.
A lost connection or a restarting server is retried (for up to 30 s a message) without losing
or doubling a step. At the end a summary: steps, accuracy against the true label (per step
from 2 s after each labelled bout starts, idle rows never, and the last step's prediction),
update rate (and, with idle rows, on idle and on active rows apart) and multiply-adds dense,
selective and saved, from the session's totals. --format raw sends the binary protocol
of sarnn_serve.frames (float32 rows in, class indices and update counts out).

This module never imports torch (nor does export.data, which --dataset uses).
"""

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sarnn_serve.client import ApiError, AsyncClient, ClientError, Retry, SessionInfo
from sarnn_serve.client.recordings import LABEL_COLUMN, read_csv

WARMUP_S = 2.0
IDLE_LABEL = "idle"  # a row of a sensor at rest: not scored, its update rate reported apart
RETRY_S = 30.0  # how long a request is retried (a restarting server) before replay gives up
ENCODINGS = {"json": "json", "msgpack": "msgpack", "raw": "binary"}


class ReplayError(Exception):
    """A problem the user can fix (bad file, unknown model, server error): printed, exit 1/2."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class Recording:
    """Samples in the model's feature order and, where known, the true label of each row."""

    source: str
    x: np.ndarray
    labels: list[str | None] = field(default_factory=list)

    @property
    def known_label(self) -> str | None:
        """The label when every row has the same known one (a whole-recording label)."""
        distinct = set(self.labels)
        if len(distinct) == 1:
            return next(iter(distinct))
        return None


@dataclass
class Outcome:
    """What came back: per-step predicted labels and the last answer's session totals."""

    session: SessionInfo
    predictions: list[str]
    updates: list[int]
    messages: int
    seconds: float


# ------------------------------------------------------------------------------------------
# inputs


def _true_label(value: str, class_labels: list[str], where: str) -> str | None:
    value = value.strip()
    if value == "":
        return None
    if value in class_labels or value == IDLE_LABEL:
        return value
    try:
        index = int(value)
    except ValueError:
        index = -1
    if 0 <= index < len(class_labels):
        return class_labels[index]
    raise ReplayError(
        f"{where}: label {value!r} is neither a class of the model "
        f"({', '.join(class_labels)}) nor a class index 0..{len(class_labels) - 1}"
    )


def load_csv(path: Path, card: dict) -> Recording:
    """Read a CSV with a header row (sarnn_serve.recordings); pick the card's feature columns by
    name and, if there is one, the `label` column."""
    try:
        table = read_csv(path, features=card["feature_names"], label_column=LABEL_COLUMN)
    except ValueError as exc:
        raise ReplayError(str(exc)) from None
    labels: list[str | None] = []
    if table.labels is not None:
        labels = [
            _true_label(value, card["class_labels"], f"{path}, line {line}")
            for value, line in zip(table.labels, table.lines, strict=True)
        ]
    if all(label is None for label in labels):
        labels = []
    return Recording(str(path), table.x, labels)


def load_dataset_recording(name: str, index: int, card: dict) -> Recording:
    """Held-out recording `index` of a dataset from export.data (imported lazily)."""
    if name != "watch":
        raise ReplayError(f"unknown dataset {name!r}; only 'watch' is supported")
    try:
        from export.data import load_watch

        data = load_watch()
    except ImportError as exc:
        raise ReplayError(
            f"--dataset watch needs the training extra (seglearn): {exc}; "
            "install it with: pip install 'sarnn-serve[train]'"
        ) from None
    if not 0 <= index < len(data.test):
        raise ReplayError(
            f"--recording {index} out of range: the watch data has {len(data.test)} held-out "
            f"recordings (0..{len(data.test) - 1})"
        )
    features: list[str] = card["feature_names"]
    missing = [f for f in features if f not in data.feature_names]
    if missing:
        raise ReplayError(
            f"the watch data lacks feature(s) {', '.join(missing)} needed by model {card['name']}"
        )
    rec = data.test[index]
    x = rec.x[:, [data.feature_names.index(f) for f in features]]
    true = data.class_labels[rec.label]
    label = true if true in card["class_labels"] else None
    source = f"watch test recording {index} (subject {rec.subject})"
    return Recording(source, np.ascontiguousarray(x, dtype=np.float32), [label] * len(x))


# ------------------------------------------------------------------------------------------
# server


async def fetch_card(client: AsyncClient, model: str | None) -> dict:
    """The card of `model`, or of the server's default model when none is named."""
    try:
        return await client.model(model)
    except ValueError as exc:
        raise ReplayError(f"{exc}; pass --model") from None
    except ApiError as exc:
        if exc.code == "model_not_found":
            raise ReplayError(f"the server has no model {model!r}") from None
        raise ReplayError(f"cannot fetch the model card: {exc}", 1) from None
    except ClientError as exc:
        where = client.http_url
        raise ReplayError(f"cannot fetch the model card from {where}: {exc}", 1) from None


async def stream(
    client: AsyncClient,
    card: dict,
    rec: Recording,
    *,
    rate: float | None,
    chunk: int,
    threshold: float | None,
    fmt: str,
    keep_session: bool,
    progress: bool,
) -> Outcome:
    """Send the recording chunk by chunk to a new session; collect every step's prediction."""
    from tqdm import tqdm

    predictions: list[str] = []
    updates: list[int] = []
    n_messages = 0
    try:
        session = await client.open(card["name"], threshold=threshold, encoding=ENCODINGS[fmt])
    except ClientError as exc:
        raise ReplayError(f"the server refused the session: {exc}", 1) from None
    try:
        bar = tqdm(
            total=len(rec.x), unit="step", desc="replay", file=sys.stderr, disable=not progress
        )
        started = time.perf_counter()
        with bar:
            for begin in range(0, len(rec.x), chunk):
                rows = rec.x[begin : begin + chunk]
                if rate:
                    delay = started + begin / rate - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                answer = await session.send(rows)
                predictions.extend(answer.labels)
                updates.extend(int(u) for u in answer.updates)
                n_messages += 1
                bar.update(len(rows))
        seconds = time.perf_counter() - started
        totals = await session.summary()
    except ClientError as exc:
        raise ReplayError(f"the server failed message {n_messages}: {exc}", 1) from None
    finally:
        await (session.detach() if keep_session else session.close())
    return Outcome(totals, predictions, updates, n_messages, seconds)


# ------------------------------------------------------------------------------------------
# summary


def summary(card: dict, rec: Recording, out: Outcome, rate: float | None, chunk: int) -> str:
    """The printed report: one `name  value` line per figure."""
    s = out.session
    steps = s.steps
    lines = [
        f"replayed         {rec.source}",
        f"model            {card['name']} (version {card['version']}, {card['cell']}, "
        f"H={card['hidden']})",
        f"session          {s.id} (threshold {s.threshold:g})",
        f"steps            {steps}",
        f"messages         {out.messages} of up to {chunk} step{'s' * (chunk > 1)}",
        f"elapsed          {out.seconds:.2f} s ({steps / max(out.seconds, 1e-9):.1f} steps/s, "
        + (f"paced at {rate:g} samples/s)" if rate else "max speed)"),
    ]
    data_rate = card.get("sample_rate_hz") or rate
    skip = round(WARMUP_S * data_rate) if data_rate else 0
    if rec.labels:
        true = rec.known_label
        lines.append(f"true label       {true if true is not None else 'per row (varies)'}")
        scored = [(out.predictions[i], rec.labels[i]) for i in scored_rows(rec.labels, skip)]
        after = f"after the first {WARMUP_S:g} s" if data_rate else "all steps (rate unknown)"
        if scored:
            acc = sum(p == t for p, t in scored) / len(scored)
            lines.append(f"step accuracy    {acc:.4f} ({after}: {len(scored)} steps)")
        else:
            lines.append(f"step accuracy    - (no labelled steps {after})")
        last_true = None if rec.labels[-1] == IDLE_LABEL else rec.labels[-1]
        verdict = (
            "unknown"
            if last_true is None
            else "correct"
            if (out.predictions[-1] == last_true)
            else f"wrong, true {last_true}"
        )
        lines.append(f"last step        {out.predictions[-1]} ({verdict})")
    else:
        lines.append("true label       unknown (no label column)")
        lines.append(f"last step        {out.predictions[-1]}")
    slots = steps * card["hidden"]
    idle = [label == IDLE_LABEL for label in rec.labels]
    if any(idle) and not all(idle):
        for name, rows in (("idle", True), ("active", False)):
            counts = [u for u, i in zip(out.updates, idle, strict=True) if i is rows]
            rate_rows = sum(counts) / (len(counts) * card["hidden"])
            label = f"update rate {name}"
            lines.append(f"{label:<17}  {rate_rows:.4f} ({len(counts)} rows)")
    saved = s.macs_saved
    share = saved / s.macs_dense if s.macs_dense else 0.0
    lines += [
        f"update rate      {s.update_rate:.4f} ({s.updates} of {slots} neuron slots)",
        f"macs dense       {s.macs_dense}",
        f"macs selective   {s.macs_selective}",
        f"macs saved       {saved} ({share:.1%})",
    ]
    return "\n".join(lines)


def scored_rows(labels: list[str | None], skip: int) -> list[int]:
    """Rows scored against their label: labelled, not idle, and at least `skip` rows after
    the start of their bout (a run of one label)."""
    rows, since = [], 0
    for i, label in enumerate(labels):
        since = since + 1 if i and label == labels[i - 1] else 0
        if label is not None and label != IDLE_LABEL and since >= skip:
            rows.append(i)
    return rows


# ------------------------------------------------------------------------------------------
# command


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default="ws://127.0.0.1:8000", help="server base URL (ws://...)")
    p.add_argument("--model", help="model name (default: the server's only model)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--csv", type=Path, help="CSV file: header of feature names, opt. `label`")
    src.add_argument("--dataset", choices=["watch"], help="a held-out recording of a dataset")
    p.add_argument("--recording", type=int, help="with --dataset: which test recording (0..)")
    speed = p.add_mutually_exclusive_group()
    speed.add_argument("--rate", type=float, help="samples/s (default: the card's sample rate)")
    speed.add_argument("--max-speed", action="store_true", help="send without pacing")
    p.add_argument("--chunk", type=int, default=1, help="samples per message (default 1)")
    p.add_argument("--threshold", type=float, help="gate threshold of the session (0..1)")
    p.add_argument(
        "--format",
        choices=["json", "msgpack", "raw"],
        default="json",
        help="message format: JSON text, msgpack, or the raw binary protocol (default json)",
    )
    p.add_argument(
        "--keep-session", action="store_true", help="keep the session on the server afterwards"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--api-key",
        default=None,
        help="API key of a server that requires one (sent as a Bearer token)",
    )


def _check(args: argparse.Namespace) -> None:
    if args.chunk < 1:
        raise ReplayError("--chunk must be at least 1")
    if args.rate is not None and args.rate <= 0:
        raise ReplayError("--rate must be positive (or use --max-speed)")
    if args.threshold is not None and not 0 < args.threshold < 1:
        raise ReplayError("--threshold must be between 0 and 1")
    if args.dataset and args.recording is None:
        raise ReplayError("--dataset needs --recording N")
    if args.csv and args.recording is not None:
        raise ReplayError("--recording goes with --dataset, not --csv")
    if not args.url.startswith(("ws://", "wss://", "http://", "https://")):
        raise ReplayError(f"--url must look like ws://HOST:PORT, got {args.url!r}")


async def _replay(args: argparse.Namespace) -> str:
    """Fetch the card, read the recording, stream it; the printed summary."""
    retry = Retry(timeout_s=RETRY_S)
    async with AsyncClient(args.url, api_key=args.api_key, retry=retry) as client:
        card = await fetch_card(client, args.model)
        if args.csv:
            rec = load_csv(args.csv, card)
        else:
            rec = load_dataset_recording(args.dataset, args.recording, card)
        rate = None
        if not args.max_speed:
            rate = args.rate or card.get("sample_rate_hz")
            if not rate:
                raise ReplayError(
                    f"model {card['name']} has no sample_rate_hz; pass --rate or --max-speed"
                )
        outcome = await stream(
            client,
            card,
            rec,
            rate=rate,
            chunk=args.chunk,
            threshold=args.threshold,
            fmt=args.format,
            keep_session=args.keep_session,
            progress=not args.no_progress,
        )
    return summary(card, rec, outcome, rate, args.chunk)


def run(args: argparse.Namespace) -> int:
    """The `replay` command: returns the exit status (0 ok, 1 server trouble, 2 bad input)."""
    try:
        _check(args)
        text = asyncio.run(_replay(args))
    except ReplayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(text)
    return 0

"""Idle check: does a stream model keep skipping on rest that looks unlike its training rest?

A stream model learns to shut gates on the idle periods of export/streams.py, synthesised by one
rest model. This check replays the validation streams (the same bouts and idle lengths as the
checkpoint's own validation figures: `stream_parts`' seed, variant "rest") with every idle period
redrawn by each of several independently defined rest generators, and reports per generator the
streaming accuracy on scored active steps, the update rate on idle and on active steps, and
their ratio. Features in g (gravity) and rad/s (gyroscope) as in the watch data; "noise" is the
white noise level the rest model measured on the training recordings.

- `trained`: the training rest model as is (the reference): gravity along one direction per
  period, gyroscope 0 plus a small bias, noise x0.25-2 (log-uniform per period).
- `louder`: `trained` plus white noise at x3-x6 the measured level (log-uniform per period).
- `drift`: `trained` with the sensor turning slowly about a random axis at 2-10 deg/s: gravity
  rotates, and the gyroscope reads that rate (an arm on a moving lap or in a bus).
- `fidget`: `trained` plus, after gaps of 2-6 s, bursts of 0.3-1 s (Hann envelope) of 1-3 Hz
  sinusoids of 0.05-0.15 g on the accelerometer and 0.2-0.6 rad/s on the gyroscope.
- `frozen`: every feature holds the preceding bout's last 0.5 s mean plus the measured noise (a
  sensor that stops moving; no gravity model).
- `table`: a watch lying flat: gravity along +z or -z, gyroscope 0 plus a small bias, noise at
  the trained level (x0.25-2).
- `quiet`: `trained` with its noise scaled down to about x0.05-x0.2 the measured level: a still
  sensor as a data sheet gives it (the measured level, from the data's quietest windows, is
  that of a wrist that is only nearly still).
- `tremor`: `trained` plus a physiological tremor, an 8-12 Hz sinusoid of 0.005-0.02 g on the
  accelerometer and 0.02-0.08 rad/s on the gyroscope whose amplitude wanders by +-50% at
  0.05-0.2 Hz.

`louder` and `frozen` are kinds of rest that `--varied-rest` trains on (export/streams.py, with
other draws and ranges: x2-x8 louder, frozen noise scaled x0.25-2); for a model trained so they
are no longer held out, and `drift`, `fidget`, `table`, `quiet` and `tremor` are what tests
generalisation. (No louder rest is held out: the measured level is already about ten times a
still sensor's, and x8 of it is the size of the signal itself.)

Generator k (its place in the list above) draws from numpy's `default_rng([seed, k])` (`--seed`,
default 0). `drift`, `fidget` and `table` need the gravity and zero-at-rest features (the watch
data's); on other data they are left out. Only the part asked for is streamed (validation by
default); the rest model is measured on the training part, as in training.
"""

import argparse
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from export.data import Dataset
from export.model import SARNN, load_checkpoint
from export.streams import QUIET_WINDOW_S, RestModel, Stream, StreamSet, StreamSpec, build_streams
from export.train import STREAM_SEEDS, TrainConfig, evaluate_streams, load_training_data

REPORT_FORMAT = "sarnn-idle-check/1"
IdleFn = Callable[[int, np.ndarray, RestModel, float, np.random.Generator], np.ndarray]


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=3)
    return v / np.linalg.norm(v)


def _rotate(v: np.ndarray, axis: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """Rotate rows of v [T, 3] about the unit `axis` by `angles` [T] (Rodrigues)."""
    cos, sin = np.cos(angles)[:, None], np.sin(angles)[:, None]
    return v * cos + np.cross(axis, v) * sin + np.outer(v @ axis, axis) * (1 - cos)


def trained(
    steps: int, before: np.ndarray, rest: RestModel, rate: float, rng: np.random.Generator
) -> np.ndarray:
    """The training rest model's idle period."""
    return rest.idle(steps, before, rng)


def louder(
    steps: int, before: np.ndarray, rest: RestModel, rate: float, rng: np.random.Generator
) -> np.ndarray:
    """Trained rest plus white noise at x3-x6 the measured level."""
    return rest.louder(steps, before, rng, factors=(3.0, 6.0))


def quiet(
    steps: int, before: np.ndarray, rest: RestModel, rate: float, rng: np.random.Generator
) -> np.ndarray:
    """Trained rest with the noise at x0.05-x0.2 the measured level (log-uniform per period):
    a still sensor as its data sheet would have it, quieter than any window of the data."""
    return rest.idle(steps, before, rng, scale=_log_uniform(rng, 0.05, 0.2))


def tremor(
    steps: int, before: np.ndarray, rest: RestModel, rate: float, rng: np.random.Generator
) -> np.ndarray:
    """Trained rest plus a physiological tremor: an 8-12 Hz sinusoid of 0.005-0.02 g on the
    accelerometer and 0.02-0.08 rad/s on the gyroscope, its amplitude wandering slowly."""
    x = rest.idle(steps, before, rng)
    g, z = list(rest.gravity_index), list(rest.zero_index)
    t = np.arange(steps) / rate
    phase = rng.uniform(0, 2 * np.pi, len(g) + len(z))
    wave = np.sin(2 * np.pi * rng.uniform(8, 12) * t[:, None] + phase)
    wander = 1 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.05, 0.2) * t + rng.uniform(0, 2 * np.pi))
    amplitude = np.r_[rng.uniform(0.005, 0.02, len(g)), rng.uniform(0.02, 0.08, len(z))]
    x[:, g + z] += wave * wander[:, None] * amplitude
    return x.astype(np.float32)


def drift(
    steps: int, before: np.ndarray, rest: RestModel, rate: float, rng: np.random.Generator
) -> np.ndarray:
    """Trained rest on a sensor turning at 2-10 deg/s about a random axis."""
    x = rest.idle(steps, before, rng)
    g, z = list(rest.gravity_index), list(rest.zero_index)
    axis, omega = _unit(rng), np.deg2rad(rng.uniform(2, 10))
    # a body turning at omega * axis sees a fixed world vector turn by -omega * t
    x[:, g] = _rotate(x[:, g], axis, -omega * np.arange(steps) / rate)
    x[:, z] += omega * axis
    return x.astype(np.float32)


def fidget(
    steps: int, before: np.ndarray, rest: RestModel, rate: float, rng: np.random.Generator
) -> np.ndarray:
    """Trained rest with short bursts of small low-frequency motion every few seconds."""
    x = rest.idle(steps, before, rng)
    g, z = list(rest.gravity_index), list(rest.zero_index)
    start = round(rng.uniform(2, 6) * rate)
    while start < steps:
        n = min(round(rng.uniform(0.3, 1.0) * rate), steps - start)
        t = np.arange(n) / rate
        envelope = np.sin(np.pi * (np.arange(n) + 0.5) / n)[:, None] ** 2
        phase = rng.uniform(0, 2 * np.pi, len(g) + len(z))
        wave = np.sin(2 * np.pi * rng.uniform(1, 3) * t[:, None] + phase)
        amplitude = np.r_[rng.uniform(0.05, 0.15, len(g)), rng.uniform(0.2, 0.6, len(z))]
        x[start : start + n, g + z] += envelope * wave * amplitude
        start += n + round(rng.uniform(2, 6) * rate)
    return x.astype(np.float32)


def frozen(
    steps: int, before: np.ndarray, rest: RestModel, rate: float, rng: np.random.Generator
) -> np.ndarray:
    """Every feature holds the preceding bout's last mean, plus the measured noise."""
    return rest.frozen(steps, before, rng, scaled=False)


def table(
    steps: int, before: np.ndarray, rest: RestModel, rate: float, rng: np.random.Generator
) -> np.ndarray:
    """A watch lying flat: gravity along +z or -z, a still gyroscope, trained noise level."""
    level = before.mean(0)
    g, z = list(rest.gravity_index), list(rest.zero_index)
    level[g] = [0.0, 0.0, rest.gravity_g * rng.choice([-1.0, 1.0])]
    level[z] = rng.normal(0.0, rest.noise[z] / 4)
    scale = _log_uniform(rng, 0.25, 2.0)
    return (level + rng.normal(size=(steps, len(level))) * rest.noise * scale).astype(np.float32)


GENERATORS: dict[str, IdleFn] = {
    "trained": trained,
    "louder": louder,
    "drift": drift,
    "fidget": fidget,
    "frozen": frozen,
    "table": table,
    "quiet": quiet,
    "tremor": tremor,
}
NEEDS_SENSORS = ("drift", "fidget", "table", "tremor")


def idle_runs(stream: Stream) -> list[tuple[int, int]]:
    """The [start, end) step ranges of a stream's idle periods."""
    edges = np.flatnonzero(np.diff(np.r_[0, stream.idle_mask.astype(int), 0]))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


def swap_idle(
    streams: list[Stream], make: IdleFn, rest: RestModel, rate: float, rng: np.random.Generator
) -> list[Stream]:
    """The same streams with every idle period redrawn by `make`, which sees the last 0.5 s of
    the preceding bout (before a stream's first bout: its first 0.5 s, as build_streams does)."""
    tail = max(1, round(QUIET_WINDOW_S * rate))
    out = []
    for s in streams:
        x = s.x.copy()
        for start, end in idle_runs(s):
            if start > 0:
                near = np.flatnonzero(s.bout == s.bout[start - 1])[-tail:]
            else:
                near = np.flatnonzero(s.bout == s.bout[end])[:tail]
            x[start:end] = make(end - start, s.x[near], rest, rate, rng)
        out.append(Stream(x, s.labels, s.bout, s.score_mask))
    return out


@dataclass
class Row:
    """One generator's figures; per recording (bout) the scored steps and the correct ones."""

    generator: str
    accuracy: float
    idle_update_rate: float
    active_update_rate: float
    idle_active_ratio: float | None
    scored: list[int]
    correct: list[int]


def check(
    model: SARNN,
    streams: list[Stream],
    rest: RestModel,
    spec: StreamSpec,
    rate: float,
    seed: int = 0,
    threshold: float = 0.5,
) -> list[Row]:
    """Every applicable generator's figures on `streams` with their idle periods redrawn."""
    sensors = len(rest.gravity_index) == len(rest.zero_index) == 3
    rows = []
    for k, (name, make) in enumerate(GENERATORS.items()):
        if name in NEEDS_SENSORS and not sensors:
            continue
        swapped = swap_idle(streams, make, rest, rate, np.random.default_rng([seed, k]))
        ev = evaluate_streams(model, StreamSet(swapped, spec), threshold)
        idle, active = float(ev.idle_update_rate), float(ev.active_update_rate)
        rows.append(
            Row(
                name,
                ev.streaming_accuracy,
                idle,
                active,
                idle / active if active > 0 else None,
                ev.scored,
                ev.correct,
            )
        )
    return rows


def markdown(rows: list[Row], title: str, notes: str) -> str:
    """The rows as a Markdown table under a heading and a line of notes."""
    lines = [
        f"# {title}",
        "",
        notes,
        "",
        "| rest | accuracy % | idle update % | active update % | idle / active |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = "n/a" if r.idle_active_ratio is None else f"{r.idle_active_ratio:.3f}"
        lines.append(
            f"| {r.generator} | {100 * r.accuracy:.1f} | {100 * r.idle_update_rate:.2f} "
            f"| {100 * r.active_update_rate:.2f} | {ratio} |"
        )
    return "\n".join(lines) + "\n"


def recipe_of(blob: dict) -> TrainConfig:
    """The checkpoint's training recipe (lists back to tuples); variant "rest" streams even for
    a recipe trained on plain recordings or on distractors."""
    values = blob.get("train_config")
    if not values:
        raise ValueError("the checkpoint has no train_config: it was not written by export.train")
    cfg = TrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
    return replace(cfg, streams="rest")


def base_streams(
    cfg: TrainConfig, data: Dataset, part: str
) -> tuple[list[Stream], RestModel, StreamSpec, float]:
    """The part's streams as the recipe builds them (its seed in STREAM_SEEDS), the rest model
    measured on the training part, the spec and the sample rate."""
    spec = cfg.stream_spec(data)
    rate = data.sample_rate_hz or 1.0
    rest = RestModel.measure(data.train, data.feature_names, spec, rate)
    streams = build_streams(getattr(data, part), rest, spec, rate, STREAM_SEEDS[part])
    return streams, rest, spec, rate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="checkpoint.pt of a stream model")
    parser.add_argument("--part", choices=("val", "test"), default="val")
    parser.add_argument("--seed", type=int, default=0, help="seeds every generator's draws")
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--out", type=Path, help="write idle_check.md and idle_check.json here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    model, blob = load_checkpoint(args.checkpoint)
    cfg = recipe_of(blob)
    data = load_training_data(cfg)
    streams, rest, spec, rate = base_streams(cfg, data, args.part)
    rows = check(model, streams, rest, spec, rate, args.seed, args.threshold)
    idle_share = StreamSet(streams, spec).idle_share
    notes = (
        f"{len(getattr(data, args.part))} recordings of part {args.part} in {len(streams)} "
        f"streams (bouts and idle lengths of seed {STREAM_SEEDS[args.part]}, "
        f"{100 * idle_share:.0f}% idle steps); idle redrawn per generator (seed {args.seed}); "
        f"threshold {args.threshold:g}. Accuracy on scored active steps (from {spec.skip_s:g} s "
        f"after a bout starts); update rates as the share of the {model.config.hidden} neurons "
        "updated per step. Generators: export/idle_check.py's docstring."
    )
    text = markdown(rows, f"Idle check: {args.checkpoint}", notes)
    print(text, end="")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "idle_check.md").write_text(text)
        report = {
            "format": REPORT_FORMAT,
            "checkpoint": str(args.checkpoint),
            "part": args.part,
            "seed": args.seed,
            "stream_seed": STREAM_SEEDS[args.part],
            "threshold": args.threshold,
            "idle_share": idle_share,
            "rest": rest.describe(data.feature_names),
            "rows": [asdict(r) for r in rows],
        }
        (args.out / "idle_check.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

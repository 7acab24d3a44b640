"""Information-sparse streams: activity bouts separated by idle periods of a sensor at rest.

A stream is what a worn sensor sends all day: a recording (one activity bout), then the wrist at
rest for a while, then the next recording, and so on. The idle periods carry no information about
the activity; a model that learns to skip should update few neurons there.

Rest is synthesised from a model of a still sensor, measured on the data (`RestModel.measure`):
- gravity features (`gravity`, e.g. ax, ay, az in g) read a vector of the data's median gravity
  magnitude along one fixed direction per idle period: with probability 1/2 the direction the
  preceding bout ended in (the mean of its last 0.5 s), otherwise uniform on the sphere;
- zero-at-rest features (`rest_zero`, e.g. the gyroscope in rad/s) read 0 plus a small bias per
  period (a quarter of the noise level);
- any other feature holds the preceding bout's last 0.5 s mean;
- every feature gets white sensor noise at the level measured in the data's quietest 0.5 s
  windows (the 1% with the least motion), scaled per period by a factor log-uniform in [0.25, 2].

Varied rest (`build_streams(varied=True)`, training only: `--varied-rest`) draws each idle period
from three kinds, so that a coordinator learns rest as "nothing moves" rather than as the measured
rest's noise level or directions: the rest above (probability 1/2); louder rest, the rest above
plus white noise at x2-x8 the measured level, log-uniform per period (1/4); a frozen sensor, every
feature holding the preceding bout's last 0.5 s mean plus the measured noise x0.25-2, no gravity
model (1/4). Validation and test streams keep the rest above.

The "distractor" variant fills each idle period, with probability 1/2, with Gaussian noise of the
signal's own per-feature mean and standard deviation instead (indistinguishable sample by sample
from motion: a coordinator that sees x_t cannot spot it; docs/architecture.md says why).

Idle lengths are log-uniform in [idle_min_s, idle_max_s]; every stream starts with an idle period.
Labels: the bout's class on its steps, IDLE (-1) on idle steps. Scoring (`score_mask`) counts
active steps from `skip_s` seconds after a bout starts (a model needs a moment to recognise a new
activity); idle steps are never scored. Each recording of a part is one bout of exactly one stream,
so per-recording scores support a bootstrap over recordings.
"""

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from export.data import Recording

IDLE = -1
VARIANTS = ("rest", "distractor")
QUIET_WINDOW_S = 0.5
QUIET_SHARE = 0.01
WATCH_GRAVITY = ("ax", "ay", "az")
WATCH_REST_ZERO = ("wx", "wy", "wz")
STREAM_FORMAT = "sarnn-streams/1"


@dataclass(frozen=True)
class StreamSpec:
    """How streams are built: the variant, idle lengths in seconds, bouts per stream, the
    seconds of each bout left unscored, and which features are gravity or zero at rest."""

    variant: str = "rest"
    idle_min_s: float = 5.0
    idle_max_s: float = 90.0
    bouts_per_stream: int = 4
    skip_s: float = 2.0
    gravity: tuple[str, ...] = WATCH_GRAVITY
    rest_zero: tuple[str, ...] = WATCH_REST_ZERO

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown variant {self.variant!r}; expected one of {VARIANTS}")
        if not 0 < self.idle_min_s <= self.idle_max_s:
            raise ValueError(
                f"idle lengths must be 0 < min <= max, got {self.idle_min_s:g} {self.idle_max_s:g}"
            )
        if self.bouts_per_stream < 1:
            raise ValueError(f"bouts_per_stream must be at least 1, got {self.bouts_per_stream}")
        if self.gravity and len(self.gravity) != 3:
            raise ValueError(f"gravity names three features, got {self.gravity}")


@dataclass
class RestModel:
    """A still sensor, per feature: white noise level, gravity magnitude and the signal's own
    mean and standard deviation (for distractors). Indices refer to the feature order."""

    noise: np.ndarray
    gravity_index: tuple[int, ...]
    zero_index: tuple[int, ...]
    gravity_g: float
    signal_mean: np.ndarray
    signal_std: np.ndarray

    @classmethod
    def measure(
        cls, recordings: list[Recording], feature_names: list[str], spec: StreamSpec, rate: float
    ) -> "RestModel":
        """Measure the rest model on `recordings` sampled at `rate` Hz."""
        index = {name: i for i, name in enumerate(feature_names)}
        for name in (*spec.gravity, *spec.rest_zero):
            if name not in index:
                raise ValueError(f"feature {name!r} not in the data ({', '.join(feature_names)})")
        stacked = np.concatenate([r.x for r in recordings])
        mean, std = stacked.mean(0), stacked.std(0) + 1e-9
        width = max(2, round(QUIET_WINDOW_S * rate))
        windows = [
            r.x[s : s + width] for r in recordings for s in range(0, len(r.x) - width + 1, width)
        ]
        if not windows:
            raise ValueError(f"recordings are shorter than {QUIET_WINDOW_S} s")
        motion = np.array([(w.std(0) / std).sum() for w in windows])
        quiet = np.argsort(motion)[: max(1, round(QUIET_SHARE * len(windows)))]
        noise = np.sqrt(np.mean([windows[i].var(0) for i in quiet], axis=0))
        gravity_idx = tuple(index[n] for n in spec.gravity)
        magnitude = (
            float(np.median(np.linalg.norm(stacked[:, list(gravity_idx)], axis=1)))
            if gravity_idx
            else 0.0
        )
        return cls(
            noise=noise.astype(np.float32),
            gravity_index=gravity_idx,
            zero_index=tuple(index[n] for n in spec.rest_zero),
            gravity_g=magnitude,
            signal_mean=mean.astype(np.float32),
            signal_std=std.astype(np.float32),
        )

    def describe(self, feature_names: list[str]) -> dict:
        """The measured levels as plain data (for a report or a card)."""
        return {
            "noise_std": dict(zip(feature_names, map(float, self.noise), strict=True)),
            "gravity_magnitude": self.gravity_g,
            "gravity_features": [feature_names[i] for i in self.gravity_index],
            "zero_at_rest_features": [feature_names[i] for i in self.zero_index],
        }

    def idle(
        self,
        steps: int,
        before: np.ndarray,
        rng: np.random.Generator,
        scale: float | None = None,
    ) -> np.ndarray:
        """One rest period of `steps` samples after a bout ending in `before` [n, F], its noise
        at `scale` x the measured level (default: drawn log-uniform in [0.25, 2])."""
        hold = before.mean(0)
        level = hold.copy()
        if self.gravity_index:
            g = list(self.gravity_index)
            direction = hold[g] if rng.random() < 0.5 else rng.normal(size=3)
            norm = np.linalg.norm(direction)
            direction = direction / norm if norm > 1e-6 else np.array([0.0, 0.0, 1.0])
            level[g] = self.gravity_g * direction
        if self.zero_index:
            z = list(self.zero_index)
            level[z] = rng.normal(0.0, self.noise[z] / 4)
        if scale is None:
            scale = np.exp(rng.uniform(np.log(0.25), np.log(2.0)))
        noise = rng.normal(0.0, 1.0, (steps, len(level))) * self.noise * scale
        return (level + noise).astype(np.float32)

    def louder(
        self,
        steps: int,
        before: np.ndarray,
        rng: np.random.Generator,
        factors: tuple[float, float] = (2.0, 8.0),
    ) -> np.ndarray:
        """`idle` plus white noise at a multiple of the measured level, log-uniform in
        `factors` per period."""
        factor = np.exp(rng.uniform(np.log(factors[0]), np.log(factors[1])))
        extra = rng.normal(size=(steps, len(self.noise))) * self.noise * factor
        return (self.idle(steps, before, rng) + extra).astype(np.float32)

    def frozen(
        self, steps: int, before: np.ndarray, rng: np.random.Generator, scaled: bool = True
    ) -> np.ndarray:
        """A sensor that stops where the bout left it: every feature holds the mean of
        `before` plus the measured noise (scaled x0.25-2 per period, log-uniform, if `scaled`)."""
        scale = np.exp(rng.uniform(np.log(0.25), np.log(2.0))) if scaled else 1.0
        noise = rng.normal(size=(steps, len(self.noise))) * self.noise * scale
        return (before.mean(0) + noise).astype(np.float32)

    def varied(self, steps: int, before: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One idle period of varied rest: `idle` (1/2), `louder` (1/4) or `frozen` (1/4)."""
        draw = rng.random()
        if draw < 0.5:
            return self.idle(steps, before, rng)
        if draw < 0.75:
            return self.louder(steps, before, rng)
        return self.frozen(steps, before, rng)

    def distractor(self, steps: int, rng: np.random.Generator) -> np.ndarray:
        """Gaussian noise with the signal's own per-feature mean and standard deviation."""
        draws = rng.normal(size=(steps, len(self.signal_mean)))
        return (self.signal_mean + draws * self.signal_std).astype(np.float32)


@dataclass
class Stream:
    """One continuous stream: x [T, F], per-step labels (IDLE on idle steps), the index of the
    source recording per step (-1 on idle steps) and the scored steps."""

    x: np.ndarray
    labels: np.ndarray
    bout: np.ndarray
    score_mask: np.ndarray

    @property
    def idle_mask(self) -> np.ndarray:
        return self.labels == IDLE


@dataclass
class StreamSet:
    """Streams built from one part of a data set, with what built them."""

    streams: list[Stream]
    spec: StreamSpec
    rest: dict = field(default_factory=dict)
    seed: int = 0

    @property
    def idle_share(self) -> float:
        steps = sum(len(s.labels) for s in self.streams)
        return sum(int(s.idle_mask.sum()) for s in self.streams) / max(1, steps)


def idle_length(spec: StreamSpec, rate: float, rng: np.random.Generator) -> int:
    """An idle period's length in steps, log-uniform in [idle_min_s, idle_max_s]."""
    seconds = np.exp(rng.uniform(np.log(spec.idle_min_s), np.log(spec.idle_max_s)))
    return max(1, round(seconds * rate))


def build_streams(
    recordings: list[Recording],
    rest: RestModel,
    spec: StreamSpec,
    rate: float,
    seed: int,
    varied: bool = False,
) -> list[Stream]:
    """Streams using every recording exactly once as a bout, `spec.bouts_per_stream` to a
    stream (recordings shuffled, seeded), each bout preceded by an idle period (of varied rest,
    `RestModel.varied`, if `varied`)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(recordings)).tolist()
    tail = max(1, round(QUIET_WINDOW_S * rate))
    skip = round(spec.skip_s * rate)
    streams = []
    for start in range(0, len(order), spec.bouts_per_stream):
        xs, labels, bouts, scored = [], [], [], []
        previous = recordings[order[start]].x[:tail]
        for i in order[start : start + spec.bouts_per_stream]:
            n_idle = idle_length(spec, rate, rng)
            if spec.variant == "distractor" and rng.random() < 0.5:
                xs.append(rest.distractor(n_idle, rng))
            elif varied:
                xs.append(rest.varied(n_idle, previous, rng))
            else:
                xs.append(rest.idle(n_idle, previous, rng))
            rec = recordings[i]
            xs.append(rec.x.astype(np.float32))
            labels += [np.full(n_idle, IDLE), np.full(len(rec.x), rec.label)]
            bouts += [np.full(n_idle, -1), np.full(len(rec.x), i)]
            mask = np.zeros(len(rec.x), bool)
            mask[min(skip, len(rec.x) - 1) :] = True
            scored += [np.zeros(n_idle, bool), mask]
            previous = rec.x[-tail:]
        streams.append(
            Stream(
                np.concatenate(xs),
                np.concatenate(labels).astype(np.int64),
                np.concatenate(bouts).astype(np.int64),
                np.concatenate(scored),
            )
        )
    return streams


def save_streams(path: Path, streams: StreamSet, feature_names: list[str]) -> None:
    """One .npz: every stream's arrays, plus the spec, the rest model and the seed as JSON."""
    import json

    arrays: dict[str, np.ndarray] = {}
    for k, s in enumerate(streams.streams):
        arrays |= {f"x_{k}": s.x, f"labels_{k}": s.labels, f"bout_{k}": s.bout}
        arrays[f"score_{k}"] = s.score_mask
    meta = {
        "format": STREAM_FORMAT,
        "feature_names": feature_names,
        "spec": {**streams.spec.__dict__},
        "rest": streams.rest,
        "seed": streams.seed,
        "streams": len(streams.streams),
    }
    np.savez_compressed(path, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)


def load_streams(path: Path) -> tuple[StreamSet, list[str]]:
    """Read a file written by `save_streams`; (streams, feature names)."""
    import json

    with np.load(path, allow_pickle=False) as blob:
        meta = json.loads(blob["meta"].tobytes())
        if meta.get("format") != STREAM_FORMAT:
            raise ValueError(f"{path}: not a streams file (format {meta.get('format')!r})")
        streams = [
            Stream(blob[f"x_{k}"], blob[f"labels_{k}"], blob[f"bout_{k}"], blob[f"score_{k}"])
            for k in range(meta["streams"])
        ]
    spec = meta["spec"]
    spec["gravity"], spec["rest_zero"] = tuple(spec["gravity"]), tuple(spec["rest_zero"])
    return StreamSet(streams, StreamSpec(**spec), meta["rest"], meta["seed"]), meta["feature_names"]


def write_csvs(
    folder: Path, streams: StreamSet, feature_names: list[str], class_labels: list[str]
) -> None:
    """One CSV per stream (features, then the label: a class or "idle"), for replay."""
    folder.mkdir(parents=True, exist_ok=True)
    names = np.array([*class_labels, "idle"])
    for k, stream in enumerate(streams.streams):
        with (folder / f"stream-{k:03d}.csv").open("w") as out:
            out.write(",".join([*feature_names, "label"]) + "\n")
            for row, label in zip(stream.x, names[stream.labels], strict=True):
                out.write(",".join(f"{v:.6g}" for v in row) + f",{label}\n")


class StreamCursor:
    """Consecutive training windows for truncated backpropagation through time: each of `batch`
    rows reads one stream window after window, so a model trained on them carries its state
    across windows as it will across chunks when served (idle periods longer than a window
    included). A row whose stream has less than a window left moves on to another stream,
    picked at random, and is marked for a zero state; rows start at random offsets."""

    def __init__(
        self, streams: list[Stream], batch: int, length: int, rng: np.random.Generator
    ) -> None:
        usable = [s for s in streams if len(s.x) >= length]
        if not usable:
            raise ValueError(f"no stream is as long as a window of {length} steps")
        self.streams, self.length, self.rng = usable, length, rng
        self.rows = [(*self._fresh(random_offset=True), True) for _ in range(batch)]

    def _fresh(self, random_offset: bool = False) -> tuple[int, int]:
        k = int(self.rng.integers(0, len(self.streams)))
        room = len(self.streams[k].x) - self.length
        return k, int(self.rng.integers(0, room + 1)) if random_offset else 0

    def next(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """x [batch, L, F], per-step labels [batch, L] (IDLE where nothing is to be predicted)
        and which rows start afresh [batch] (their state must be zeroed)."""
        xs, ys, fresh = [], [], []
        for r, (k, pos, restart) in enumerate(self.rows):
            if pos + self.length > len(self.streams[k].x):
                (k, pos), restart = self._fresh(), True
            stream = self.streams[k]
            xs.append(stream.x[pos : pos + self.length])
            ys.append(stream.labels[pos : pos + self.length])
            fresh.append(restart)
            self.rows[r] = (k, pos + self.length, False)
        return np.stack(xs), np.stack(ys), np.asarray(fresh)

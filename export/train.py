"""Training loop for SA-RNN and its baselines: seeds, checkpoint, metrics JSON, plots.

Every epoch evaluates on the validation part (progress, the curves); the test part is read once,
after the last epoch, for the model that is saved: the last one. (Keeping the epoch of best
validation accuracy would favour early epochs, before the slope reaches 5 and the update rate
settles at its budget or target.)

With `threshold_range` (LO, HI) each training row draws its own threshold tau uniformly in
[LO, HI] and the training gate cuts where inference at that tau would, so the model learns to be
accurate at every threshold in the range (lower tau: more updates). With a `target_slope` K
as well, each row's target update rate is target_rate + K (0.5 - tau) (clipped to
[0.01, 0.99]): the threshold becomes a compute knob with a known, wide range instead of a cut
the model learns to keep its activations away from. Every run measures the threshold curve on
validation: update rate and streaming accuracy at CURVE_THRESHOLDS.
"""

import json
import shlex
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from export.data import (
    TEST_FRACTION,
    VAL_FRACTION,
    Dataset,
    load_basicmotions,
    load_dataset,
    load_files,
    load_watch,
    pad_recordings,
    sample_windows,
)
from export.model import (
    ALPHA_END,
    ALPHA_START,
    BUDGETS,
    GATE_GRADS,
    SARNN,
    ModelConfig,
    budget_loss,
    save_checkpoint,
    slope,
)
from export.streams import (
    IDLE,
    RestModel,
    StreamCursor,
    StreamSet,
    StreamSpec,
    build_streams,
)
from sarnn_serve.accounting import CellCost
from sarnn_serve.client.recordings import LABEL_COLUMN

CURVE_THRESHOLDS = (0.03, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


@dataclass
class TrainConfig:
    """Recipe of one training run. `dataset` names a shipped dataset; `data` (a folder of CSV
    files or a .npz archive) replaces it with your own recordings. At most one baseline: `dense`,
    `skip_every` > 1 or `random_mask` (export.model's module docstring)."""

    dataset: str | None = "watch"
    data: str | None = None
    label_column: str = LABEL_COLUMN
    ignore_columns: tuple[str, ...] = ()
    group_column: str | None = None
    val_groups: tuple[str, ...] = ()
    test_groups: tuple[str, ...] = ()
    val_fraction: float = VAL_FRACTION
    test_fraction: float = TEST_FRACTION
    split_seed: int = 0
    sample_rate: float | None = None
    allow_pickle: bool = False
    cell: str = "gru"
    hidden: int = 128
    lam: float = 2.5
    lam_warmup_epochs: int = 4
    budget: str = "mean"
    target_rate: float | None = None
    gate_grad: str = "smooth"
    threshold_range: tuple[float, float] | None = None
    target_slope: float | None = None
    final_slope: float = ALPHA_END
    dense: bool = False
    skip_every: int = 1
    random_mask: float | None = None
    epochs: int = 24
    batches_per_epoch: int = 50
    batch_size: int = 32
    window: int = 256
    lr: float = 3e-3
    coord_lr_scale: float = 1.0
    seed: int = 0
    warmup_steps: int = 50
    eval_skip_seconds: float = 2.0
    threads: int = 1
    streams: str | None = None
    idle_min_s: float = StreamSpec.idle_min_s
    idle_max_s: float = StreamSpec.idle_max_s
    coord_energy: bool = False
    coord_accumulate: bool = False
    coord_delta: bool = False
    coord_shared_gate: bool = False
    varied_rest: bool = False
    fixed_rate: float | None = None
    calibrate: bool = True

    def __post_init__(self) -> None:
        if self.data is not None:
            self.dataset = None
        if self.budget not in BUDGETS:
            raise ValueError(f"unknown budget {self.budget!r}; expected one of {BUDGETS}")
        if self.gate_grad not in GATE_GRADS:
            raise ValueError(f"unknown gate_grad {self.gate_grad!r}; expected one of {GATE_GRADS}")
        if self.target_rate is not None and not 0 < self.target_rate < 1:
            raise ValueError(f"target_rate must be between 0 and 1, got {self.target_rate:g}")
        if self.target_rate is not None and self.dense:
            raise ValueError("a dense baseline updates every neuron; drop target_rate")
        if self.skip_every < 1:
            raise ValueError(f"skip_every must be at least 1, got {self.skip_every}")
        if self.random_mask is not None and not 0 < self.random_mask <= 1:
            raise ValueError(f"random_mask must be in (0, 1], got {self.random_mask:g}")
        chosen = [self.dense, self.skip_every > 1, self.random_mask is not None]
        if sum(chosen) > 1:
            raise ValueError("choose one baseline: dense, skip_every or random_mask")
        if self.target_rate is not None and any(chosen):
            raise ValueError("a baseline has no coordinator to reach a target rate; drop it")
        if self.threshold_range is not None:
            lo, hi = (float(t) for t in self.threshold_range)
            self.threshold_range = (lo, hi)
            if not 0 < lo <= hi < 1:
                raise ValueError(f"threshold_range must be 0 < LO <= HI < 1, got {lo:g} {hi:g}")
            if any(chosen):
                raise ValueError("a baseline has no coordinator to threshold; drop it")
        if self.target_slope is not None and (
            self.target_rate is None or self.threshold_range is None
        ):
            raise ValueError("target_slope needs target_rate and threshold_range")
        if self.final_slope < ALPHA_START:
            raise ValueError(
                f"final_slope must be at least the starting slope {ALPHA_START:g}, "
                f"got {self.final_slope:g}"
            )
        if self.coord_energy and self.baseline is not None:
            raise ValueError("coord_energy feeds the coordinator; a baseline has none")
        if self.coord_accumulate and self.baseline is not None:
            raise ValueError("coord_accumulate is a coordinator; a baseline has none")
        if self.coord_delta and not self.coord_accumulate:
            raise ValueError("coord_delta feeds the accumulating coordinator; add coord_accumulate")
        if self.coord_shared_gate and not self.coord_delta:
            raise ValueError("coord_shared_gate gates on motion features; add coord_delta")
        if self.varied_rest and self.streams is None:
            raise ValueError("varied_rest varies the idle periods of streams; add streams")
        if self.fixed_rate is not None:
            plain = self.coord_accumulate and not (self.coord_energy or self.coord_delta)
            if not (plain or self.coord_shared_gate):
                raise ValueError(
                    "fixed_rate fixes an accumulating coordinator without energy, or the "
                    "rates of a shared gate"
                )
            if not 0 < self.fixed_rate < 1:
                raise ValueError(f"fixed_rate must be in (0, 1), got {self.fixed_rate:g}")
        if self.streams is not None:
            StreamSpec(self.streams, self.idle_min_s, self.idle_max_s)
        if self.coord_lr_scale <= 0:
            raise ValueError(f"coord_lr_scale must be positive, got {self.coord_lr_scale:g}")
        for name in ("epochs", "batches_per_epoch", "batch_size", "window"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")

    @property
    def baseline(self) -> str | None:
        """The baseline this recipe trains ("dense", "skip", "random"), or None for an SA-RNN."""
        if self.dense:
            return "dense"
        if self.skip_every > 1:
            return "skip"
        return "random" if self.random_mask is not None else None

    def model_config(self, n_features: int, n_classes: int) -> ModelConfig:
        """The model this recipe trains on data of that shape."""
        return ModelConfig(
            cell=self.cell,
            n_features=n_features,
            hidden=self.hidden,
            n_classes=n_classes,
            selective=self.baseline is None,
            skip_every=self.skip_every,
            random_mask=self.random_mask,
            coord_energy=self.coord_energy,
            coord_accumulate=self.coord_accumulate,
            coord_delta=self.coord_delta,
            coord_shared_gate=self.coord_shared_gate,
        )

    def stream_spec(self, data: Dataset) -> StreamSpec | None:
        """How this recipe's streams are built (None: it trains on plain recordings). The watch
        data's gravity and gyroscope features are named; other data hold their last values."""
        if self.streams is None:
            return None
        named = data.name == "watch"
        return StreamSpec(
            self.streams,
            self.idle_min_s,
            self.idle_max_s,
            skip_s=self.eval_skip_seconds,
            gravity=StreamSpec.gravity if named else (),
            rest_zero=StreamSpec.rest_zero if named else (),
        )

    def recipe(self, out: str) -> str:
        """The CLI command that reproduces this run."""
        if self.data is not None:
            flags = [f"--data {shlex.quote(self.data)}", f"--label-column {self.label_column}"]
            for name in ("ignore_columns", "val_groups", "test_groups"):
                if getattr(self, name):
                    flags.append(f"--{name.replace('_', '-')} {','.join(getattr(self, name))}")
            if self.group_column:
                flags.append(f"--group-column {self.group_column}")
            if self.sample_rate:
                flags.append(f"--sample-rate {self.sample_rate:g}")
            if self.allow_pickle:
                flags.append("--allow-pickle")
        else:
            flags = [f"--dataset {self.dataset}"]
            for name in ("val_groups", "test_groups"):
                if getattr(self, name):
                    flags.append(f"--{name.replace('_', '-')} {','.join(getattr(self, name))}")
        if self.data is not None or self.dataset == "basicmotions":
            flags.append(f"--val-fraction {self.val_fraction:g}")
            if self.data is not None:
                flags.append(f"--test-fraction {self.test_fraction:g}")
            flags.append(f"--split-seed {self.split_seed}")
        flags += [
            f"--cell {self.cell}",
            f"--hidden {self.hidden}",
            f"--lam {self.lam:g}",
            f"--lam-warmup-epochs {self.lam_warmup_epochs}",
            f"--budget {self.budget}",
            f"--gate-grad {self.gate_grad}",
        ]
        if self.streams is not None:
            flags.append(f"--streams {self.streams}")
            flags.append(f"--idle-seconds {self.idle_min_s:g} {self.idle_max_s:g}")
        if self.coord_energy:
            flags.append("--coord-energy")
        if self.coord_accumulate:
            flags.append("--coord-accumulate")
        if self.coord_delta:
            flags.append("--coord-delta")
        if self.coord_shared_gate:
            flags.append("--coord-shared-gate")
        if self.varied_rest:
            flags.append("--varied-rest")
        if self.fixed_rate is not None:
            flags.append(f"--fixed-rate {self.fixed_rate:g}")
        if not self.calibrate:
            flags.append("--no-calibrate")
        if self.target_rate is not None:
            flags.append(f"--target-rate {self.target_rate:g}")
        if self.threshold_range is not None:
            flags.append("--threshold-range {:g} {:g}".format(*self.threshold_range))
        if self.target_slope is not None:
            flags.append(f"--target-slope {self.target_slope:g}")
        if self.final_slope != ALPHA_END:
            flags.append(f"--final-slope {self.final_slope:g}")
        flags += [
            f"--epochs {self.epochs}",
            f"--batches-per-epoch {self.batches_per_epoch}",
            f"--batch-size {self.batch_size}",
            f"--window {self.window}",
            f"--lr {self.lr:g}",
            f"--seed {self.seed}",
        ]
        if self.coord_lr_scale != 1.0:
            flags.append(f"--coord-lr-scale {self.coord_lr_scale:g}")
        if self.dense:
            flags.append("--dense")
        if self.skip_every > 1:
            flags.append(f"--skip-every {self.skip_every}")
        if self.random_mask is not None:
            flags.append(f"--random-mask {self.random_mask:g}")
        return f"python -m export train {' '.join(flags)} --out {shlex.quote(out)}"


@dataclass
class Evaluation:
    """Figures of a model on held-out recordings in deterministic mode; per recording, the
    steps scored and how many of them were right (for confidence intervals over recordings)."""

    streaming_accuracy: float
    last_step_accuracy: float
    update_rate: float
    steps: int
    scored: list[int] = field(default_factory=list)
    correct: list[int] = field(default_factory=list)
    idle_update_rate: float | None = None
    active_update_rate: float | None = None


def _subjects(groups: tuple[str, ...], option: str) -> list[int]:
    try:
        return [int(g) for g in groups]
    except ValueError:
        raise ValueError(f"{option} of the watch data are subject numbers, got {groups}") from None


def load_training_data(cfg: TrainConfig) -> Dataset:
    """The dataset and split `cfg` asks for."""
    if cfg.data is not None:
        return load_files(
            cfg.data,
            label_column=cfg.label_column,
            ignore_columns=cfg.ignore_columns,
            group_column=cfg.group_column,
            val_groups=cfg.val_groups,
            test_groups=cfg.test_groups,
            val_fraction=cfg.val_fraction,
            test_fraction=cfg.test_fraction,
            split_seed=cfg.split_seed,
            sample_rate_hz=cfg.sample_rate,
            allow_pickle=cfg.allow_pickle,
        )
    if cfg.sample_rate is not None:
        raise ValueError(f"--sample-rate goes with --data; {cfg.dataset} knows its own")
    if cfg.dataset == "watch":
        split = {}
        if cfg.val_groups:
            split["val_subjects"] = _subjects(cfg.val_groups, "--val-groups")
        if cfg.test_groups:
            split["test_subjects"] = _subjects(cfg.test_groups, "--test-groups")
        return load_watch(**split)
    if cfg.dataset == "basicmotions":
        if cfg.val_groups or cfg.test_groups:
            raise ValueError("basicmotions has no subjects; use --val-fraction and --split-seed")
        return load_basicmotions(cfg.val_fraction, cfg.split_seed)
    return load_dataset(str(cfg.dataset))


def budget_weight(cfg: TrainConfig, epoch: int) -> float:
    """lambda, ramped linearly from 0 over the first `lam_warmup_epochs` epochs: the model first
    learns the task with its gates mostly open, then learns to skip updates."""
    if cfg.lam_warmup_epochs <= 0:
        return cfg.lam
    return cfg.lam * min(1.0, epoch / cfg.lam_warmup_epochs)


@torch.no_grad()
def fix_rate(model: SARNN, rate: float) -> None:
    """Make an accumulating coordinator ask for `rate` at every step, whatever the input, and
    freeze it: every neuron then updates every 1 / rate steps, each on its own phase (the
    periodic baseline, trained and served as the SA-RNN is). On a shared gate, fix and freeze
    only every neuron's rate, sigmoid(c_j) = `rate`: the gate still learns rest or motion, so
    the neurons update evenly spaced at `rate` times the gate (a periodic mask the gate pauses)."""
    logit = float(np.log(rate / (1.0 - rate)))
    if model.coord_rate is not None:
        model.coord_rate.fill_(logit)
        model.coord_rate.requires_grad_(False)
        return
    model.coord_x.weight.zero_()
    model.coord_d.zero_()
    model.coord_x.bias.fill_(logit)
    for parameter in (model.coord_x.weight, model.coord_x.bias, model.coord_d):
        parameter.requires_grad_(False)


@torch.no_grad()
def calibrate_gates(model: SARNN, x: np.ndarray, rate: float) -> None:
    """Set each neuron's coordinator bias so that its gate opens on a share `rate` of the steps
    of the raw inputs x [B, T, F]: b = -quantile(W_x x, 1 - rate). Exact while w_d = 0 (as at
    initialisation), where a = W_x x + b."""
    xn = (torch.from_numpy(x) - model.mean) / model.std
    drive = (xn @ model.coord_x.weight.T).reshape(-1, model.config.hidden)
    model.coord_x.bias.copy_(-torch.quantile(drive, 1.0 - rate, dim=0))


@torch.no_grad()
def evaluate(
    model: SARNN, data: Dataset, skip_steps: int, threshold: float = 0.5, part: str = "test"
) -> Evaluation:
    """Stream every recording of `part` ("val" or "test") from a zero state; score the
    prediction at every step after `skip_steps` (pooled over steps), the last-step prediction
    per recording and the update rate."""
    recordings = getattr(data, part)
    model.eval()
    x, lengths = pad_recordings(recordings)
    out = model(torch.from_numpy(x), deterministic=True, threshold=threshold)
    pred = out.logits.argmax(-1).numpy()
    upd = out.updates.numpy()
    labels = np.asarray([r.label for r in recordings])
    correct, scored = [], []
    updates = steps = last_ok = 0
    for i, n in enumerate(lengths):
        skip = min(skip_steps, n - 1)
        correct.append(int((pred[i, skip:n] == labels[i]).sum()))
        scored.append(int(n - skip))
        last_ok += int(pred[i, n - 1] == labels[i])
        updates += int(upd[i, :n].sum())
        steps += int(n)
    return Evaluation(
        streaming_accuracy=sum(correct) / sum(scored),
        last_step_accuracy=last_ok / len(lengths),
        update_rate=updates / (steps * model.config.hidden),
        steps=steps,
        scored=scored,
        correct=correct,
    )


STREAM_SEEDS = {"val": 101, "test": 202}


def stream_parts(cfg: TrainConfig, data: Dataset) -> dict[str, StreamSet]:
    """The validation and test streams of a stream recipe: built from the rest model measured
    on the training recordings, with seeds fixed per part (every model of a study is scored on
    the same streams)."""
    spec = cfg.stream_spec(data)
    rate = data.sample_rate_hz or 1.0
    rest = RestModel.measure(data.train, data.feature_names, spec, rate)
    return {
        part: StreamSet(
            build_streams(getattr(data, part), rest, spec, rate, seed),
            spec,
            rest.describe(data.feature_names),
            seed,
        )
        for part, seed in STREAM_SEEDS.items()
    }


@torch.no_grad()
def evaluate_streams(model: SARNN, streams: StreamSet, threshold: float = 0.5) -> Evaluation:
    """Run every stream from a zero state; score the scored steps of each bout (per
    recording, for confidence intervals over recordings), the last step of each bout, and the
    update rate overall, on idle steps and on active steps."""
    model.eval()
    items = streams.streams
    lengths = [len(s.x) for s in items]
    x = np.zeros((len(items), max(lengths), items[0].x.shape[1]), np.float32)
    for i, s in enumerate(items):
        x[i, : lengths[i]] = s.x
    out = model(torch.from_numpy(x), deterministic=True, threshold=threshold)
    pred = out.logits.argmax(-1).numpy()
    per_step = out.updates.numpy().mean(-1)
    correct, scored, last_ok = [], [], []
    idle = active = idle_n = active_n = 0.0
    for i, s in enumerate(items):
        n = lengths[i]
        p, u = pred[i, :n], per_step[i, :n]
        for bout in np.unique(s.bout[s.bout >= 0]):
            steps = s.bout == bout
            mask = steps & s.score_mask
            correct.append(int((p[mask] == s.labels[mask]).sum()))
            scored.append(int(mask.sum()))
            last_ok.append(p[np.flatnonzero(steps)[-1]] == s.labels[steps][0])
        idle += float(u[s.idle_mask].sum())
        idle_n += int(s.idle_mask.sum())
        active += float(u[~s.idle_mask].sum())
        active_n += int((~s.idle_mask).sum())
    return Evaluation(
        streaming_accuracy=sum(correct) / max(1, sum(scored)),
        last_step_accuracy=float(np.mean(last_ok)),
        update_rate=(idle + active) / max(1, idle_n + active_n),
        steps=int(sum(lengths)),
        scored=scored,
        correct=correct,
        idle_update_rate=idle / max(1, idle_n),
        active_update_rate=active / max(1, active_n),
    )


def streams_record(parts: dict[str, StreamSet]) -> dict:
    """How each part's streams were built, for a run's metrics: spec, seed and idle share."""
    return {
        part: {"spec": asdict(ss.spec), "seed": ss.seed, "idle_share": ss.idle_share}
        for part, ss in parts.items()
    }


def macs_per_step(
    cfg: TrainConfig, model: SARNN, n_features: int, val_rate: float, test_rate: float
) -> dict:
    """Multiply-adds per step of the recipe's cell (coordinator included, head not): dense, and
    selective at the test and validation update rates."""
    cost = CellCost(
        cfg.cell,
        n_features,
        cfg.hidden,
        model.config.selective,
        cfg.coord_energy,
        cfg.coord_accumulate,
        cfg.coord_delta,
        cfg.coord_shared_gate,
    )
    return {
        "dense": cost.dense_step,
        "selective": cost.per_step(test_rate),
        "selective_val": cost.per_step(val_rate),
    }


def threshold_curve(
    model: SARNN, data: Dataset, skip_steps: int, streams: StreamSet | None = None
) -> list[dict[str, float]]:
    """Update rate and streaming accuracy on the validation recordings (or `streams`) at each
    of CURVE_THRESHOLDS (deterministic mode; the update rate never rises with the threshold)."""
    curve = []
    for tau in CURVE_THRESHOLDS:
        if streams is not None:
            ev = evaluate_streams(model, streams, threshold=tau)
        else:
            ev = evaluate(model, data, skip_steps, threshold=tau, part="val")
        curve.append(
            {
                "threshold": tau,
                "update_rate": ev.update_rate,
                "val_streaming_accuracy": ev.streaming_accuracy,
            }
        )
    return curve


def _step_loss(
    model: SARNN,
    x: torch.Tensor,
    y: torch.Tensor,
    lam: float,
    cfg: TrainConfig,
    state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, float, float, torch.Tensor]:
    """Cross-entropy at every step past the warm-up (per-step labels [B, T]: IDLE steps not
    scored), plus the budget loss; (loss, task, rate, final state). With `cfg.threshold_range`
    each row gets a threshold drawn from torch's generator."""
    tau: float | torch.Tensor = 0.5
    if cfg.threshold_range is not None:
        lo, hi = cfg.threshold_range
        tau = torch.empty(x.shape[0], 1).uniform_(lo, hi)
    out = model(x, state, threshold=tau, gate_grad=cfg.gate_grad)
    warmup = min(cfg.warmup_steps, x.shape[1] // 4) if state is None else 0
    logits = out.logits[:, warmup:]
    steps = y[:, warmup:] if y.ndim == 2 else y[:, None].expand(-1, logits.shape[1])
    if bool((steps == IDLE).all()):
        task = logits.sum() * 0.0  # an all-idle batch: nothing to predict, only the budget
    else:
        task = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), steps.reshape(-1), ignore_index=IDLE
        )
    target: float | torch.Tensor | None = cfg.target_rate
    if cfg.target_slope is not None:
        target = (cfg.target_rate + cfg.target_slope * (0.5 - tau[:, 0])).clamp(0.01, 0.99)
    budget = budget_loss(out.updates, lam, cfg.budget, target)
    loss = task + (budget if model.config.selective else 0.0)
    return loss, float(task.detach()), float(out.updates.detach().mean()), out.state.detach()


def parameter_groups(model: SARNN, cfg: TrainConfig) -> list[dict]:
    """Adam's parameter groups: the coordinator's weights (W_x, b, w_d, W_e, W_v, c) at peak rate
    `lr * coord_lr_scale`, the rest at `lr`. The coordinator learns only through the gate's
    surrogate, which is nonzero near the cut alone, so its gradients are small beside the
    cell's; a larger rate lets the budget move it within the run."""
    coordinator = {
        "coord_x.weight", "coord_x.bias", "coord_d", "coord_e.weight", "coord_v.weight",
        "coord_rate",
    }  # fmt: skip
    named = dict(model.named_parameters())
    own = [p for n, p in named.items() if n in coordinator]
    rest = [p for n, p in named.items() if n not in coordinator]
    groups = [{"params": rest, "lr": cfg.lr}]
    if own:
        groups.append({"params": own, "lr": cfg.lr * cfg.coord_lr_scale})
    return groups


def optimiser_step(model: SARNN, opt: torch.optim.Optimizer, loss: torch.Tensor) -> bool:
    """Backpropagate and step, unless the loss or the gradient norm is not finite: then nothing
    changes. Gradients are clipped to norm 1; motion weights are kept at 0 or above
    (`SARNN.keep_motion_monotone`). True when the step was taken."""
    opt.zero_grad()
    if not torch.isfinite(loss):
        return False
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    if not torch.isfinite(grad_norm):
        opt.zero_grad()
        return False
    opt.step()
    model.keep_motion_monotone()
    return True


def estimate_seconds(cfg: TrainConfig, data: Dataset, probe_batches: int = 2) -> float:
    """Seconds a run of `cfg` on `data` should take on this machine: `probe_batches` training
    batches (after one warm-up) and one validation pass, timed and scaled to the run's batches
    and evaluations (data loading and plots not counted)."""
    torch.set_num_threads(cfg.threads)
    rng = np.random.default_rng(cfg.seed)
    model = SARNN(cfg.model_config(data.n_features, data.n_classes))
    model.set_normalisation(*data.normalisation())
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)

    def one_batch() -> None:
        xb, yb = sample_windows(data.train, cfg.batch_size, cfg.window, rng)
        loss = _step_loss(model, torch.from_numpy(xb), torch.from_numpy(yb), cfg.lam, cfg)[0]
        optimiser_step(model, opt, loss)

    one_batch()
    started = time.perf_counter()
    for _ in range(probe_batches):
        one_batch()
    per_batch = (time.perf_counter() - started) / probe_batches
    started = time.perf_counter()
    evaluate(model, data, 0, part="val")
    per_eval = time.perf_counter() - started
    return cfg.epochs * cfg.batches_per_epoch * per_batch + (cfg.epochs + 1) * per_eval


def train(cfg: TrainConfig, out_dir: Path, progress: bool = True) -> dict:
    """Train one model, write checkpoint.pt, metrics.json and the plots into out_dir."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    data = load_training_data(cfg)
    model = SARNN(cfg.model_config(data.n_features, data.n_classes))
    model.set_normalisation(*data.normalisation())
    if cfg.coord_delta:
        model.set_motion_scale([r.x for r in data.train])
    spec = cfg.stream_spec(data)
    skip = int(cfg.eval_skip_seconds * (data.sample_rate_hz or 0))
    parts = stream_parts(cfg, data) if spec is not None else {}
    rest = (
        RestModel.measure(data.train, data.feature_names, spec, data.sample_rate_hz or 1.0)
        if spec is not None
        else None
    )
    cursor: list = []  # [epoch, StreamCursor] of stream training
    carried = model.initial_state(cfg.batch_size)

    def windows(epoch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """x, labels and, for streams, the rows whose carried state starts afresh."""
        if rest is None:
            return (*sample_windows(data.train, cfg.batch_size, cfg.window, rng), None)
        if not cursor or cursor[0] != epoch:  # new idle periods every epoch
            rate = data.sample_rate_hz or 1.0
            seed = cfg.seed * 100_003 + epoch
            built = build_streams(data.train, rest, spec, rate, seed, varied=cfg.varied_rest)
            cursor[:] = [epoch, StreamCursor(built, cfg.batch_size, cfg.window, rng)]
        return cursor[1].next()

    def score(part: str, threshold: float = 0.5) -> Evaluation:
        if parts:
            return evaluate_streams(model, parts[part], threshold)
        return evaluate(model, data, skip, threshold=threshold, part=part)

    if cfg.target_rate is not None and cfg.calibrate:
        calibrate_gates(model, windows(0)[0], cfg.target_rate)
    if cfg.fixed_rate is not None:
        fix_rate(model, cfg.fixed_rate)
    groups = parameter_groups(model, cfg)
    opt = torch.optim.Adam(groups)
    total = cfg.epochs * cfg.batches_per_epoch
    peaks = [group["lr"] for group in groups]
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=peaks, total_steps=total)
    history, skipped, step = [], 0, 0
    started = time.perf_counter()
    label = cfg.baseline or f"lam={cfg.lam:g}"
    bar = tqdm(total=total, disable=not progress, desc=f"{cfg.cell} {label} s{cfg.seed}")
    for epoch in range(cfg.epochs):
        model.train()
        losses, rates = [], []
        for _ in range(cfg.batches_per_epoch):
            model.alpha = slope(step / max(1, total - 1), cfg.final_slope)
            lam = cfg.lam if cfg.target_rate is not None else budget_weight(cfg, epoch)
            xb, yb, fresh = windows(epoch)
            state = None
            if fresh is not None:  # streams: the state carries over from the last window
                carried[torch.from_numpy(fresh)] = 0.0
                state = carried
            loss, task, rate, carried = _step_loss(
                model, torch.from_numpy(xb), torch.from_numpy(yb), lam, cfg, state
            )
            if optimiser_step(model, opt, loss):
                losses.append(task)
                rates.append(rate)
            else:
                skipped += 1
            sched.step()
            step += 1
            bar.update()
            bar.set_postfix(loss=f"{task:.3f}", rate=f"{rate:.2f}", lam=f"{lam:.3g}")
        val = score("val")
        history.append(
            {
                "epoch": epoch,
                "alpha": model.alpha,
                "lam": lam,
                "train_loss": float(np.mean(losses)) if losses else float("nan"),
                "train_update_rate": float(np.mean(rates)) if rates else float("nan"),
                "val_streaming_accuracy": val.streaming_accuracy,
                "val_last_step_accuracy": val.last_step_accuracy,
                "val_update_rate": val.update_rate,
                "val_idle_update_rate": val.idle_update_rate,
                "val_active_update_rate": val.active_update_rate,
            }
        )
        if not progress:
            print(json.dumps(history[-1]), flush=True)
    bar.close()
    test = score("test")
    metrics = {
        "config": asdict(cfg),
        "recipe": cfg.recipe(str(out_dir)),
        "dataset": {
            "name": data.name,
            "spec": data.spec,
            "train_subjects": data.train_subjects,
            "val_subjects": data.val_subjects,
            "test_subjects": data.test_subjects,
            "train_recordings": len(data.train),
            "val_recordings": len(data.val),
            "test_recordings": len(data.test),
            "val_steps": val.steps,
            "test_steps": test.steps,
            "scored_after_steps": skip,
        },
        "kept": "last epoch",
        "validation": asdict(val),
        "test": asdict(test),
        "budget": {
            "form": cfg.budget,
            "target_rate": cfg.target_rate,
            "target_slope": cfg.target_slope,
            "val_update_rate": val.update_rate,
        },
        "gate_grad": cfg.gate_grad,
        "threshold_range": cfg.threshold_range,
        "threshold_curve": (
            threshold_curve(model, data, skip, parts.get("val")) if model.config.selective else []
        ),
        "streams": streams_record(parts) | ({"rest": parts["val"].rest} if parts else {}),
        "macs_per_step": macs_per_step(
            cfg, model, data.n_features, val.update_rate, test.update_rate
        ),
        "alpha": model.alpha,
        "skipped_nonfinite_steps": skipped,
        "train_seconds": time.perf_counter() - started,
        "history": history,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    save_checkpoint(
        model,
        str(out_dir / "checkpoint.pt"),
        {
            "dataset": data.name,
            "data": data.spec,
            "feature_names": data.feature_names,
            "class_labels": data.class_labels,
            "sample_rate_hz": data.sample_rate_hz,
            "train_config": asdict(cfg),
            "metrics": {
                k: metrics[k] for k in ("test", "validation", "dataset", "recipe", "budget")
            },
        },
    )
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    from export.plots import plot_curves, plot_raster

    plot_curves(history, out_dir / "curves.png")
    plot_raster(model, data, out_dir / "raster.png")
    return metrics

"""SA-RNN: a recurrent cell whose coordinator decides, per step and neuron, whether to update.

The math follows docs/architecture.md, section "The model":

    a_t = W_x x_t + w_d * h_{t-1} + b                 coordinator (w_d: one weight per neuron)
          [+ W_e (x_t * x_t - 1)]                     energy features (`coord_energy`)
          [+ W_v (|x_t - xbar_{t-1}| / m - 1)]        motion features (`coord_delta`)
    p_t = clamp((alpha a_t + 1) / 2, 0, 1)            hard sigmoid, slope alpha annealed 1 -> 5
                                                      (the paper's; train's `final_slope`)
    u_t = round(p_t) = [a_t > 0], straight through    training gate (tie a = 0: no update;
                                                      a drawn tau moves the cut as below)
    u_t = [a_t > (2 tau - 1) / alpha]                 inference gate (tau = 0.5: [a_t > 0])
    s_t = s_{t-1} + u_t (cell(x_t, s_{t-1}) - s_{t-1})
    logits_t = W_o h_t + b_o

The accumulating coordinator (`coord_accumulate`) asks instead for a rate and spreads the
updates it asks for evenly over time, as Skip-RNN's accumulated update probability does per
sequence, here per neuron:

    p_t = sigmoid(a_t)                                the share of steps neuron j asks for
    acc_t = acc_{t-1} + min(p_t (1 - tau) / tau, 1)   accumulator (tau = 0.5: + p_t)
    u_t = [acc_t >= phi_j]; acc_t -= u_t              phi_j = frac((j + 1) x golden ratio)
    training: u_t = [acc_t >= phi_j] + p_t - sg(p_t)  straight through: du/dp = 1

so a neuron asking for p updates every 1/p steps, neurons on different phases; the budget
lambda mean(u) reaches p through the straight-through gradient. The accumulator is part of the
carried state (after h and c), so a chunked stream updates exactly as a whole one.

Motion features (`coord_delta`, with the accumulator) give the coordinator how far each input
stands from its recent mean: |x_t - xbar_{t-1}|, xbar the exponential moving average
xbar_t = xbar_{t-1} + beta (x_t - xbar_{t-1}) (beta = MOTION_SMOOTHING: a time constant of 20
steps, 0.4 s at 50 Hz), in units of its mean m on the training recordings and centred. A sensor
at rest varies by its noise alone, whatever direction it rests in or value it is stuck at; a
moving one swings far from its mean (on the watch data 4-12 times the rest's deviation, where the
step |x_t - x_{t-1}| of a smooth movement sampled at 50 Hz is no larger than white noise's).
Training keeps W_v >= 0 (`keep_motion_monotone`): more motion can only ask for more updates, so
rest quieter than any in training asks for fewer. The moving average (raw units) is carried in
the state after the accumulator; a fresh state holds zeros, so a stream's first second looks
like motion.

The shared-gate coordinator (`coord_shared_gate`, with the accumulator and motion features)
learns only *whether* the sensor moves, and each neuron a constant rate for when it does:

    g_t = w_x x_t + w_e (x_t * x_t - 1) + w_v (|x_t - xbar_{t-1}| / m - 1) + b   one number
    p_t = sigmoid(c) sigmoid(g_t)                     c: one learned rate per neuron

so a neuron's rate in motion does not follow how far the input swings, and the coordinator costs
about 2H + 6F multiply-adds a step instead of about 3HF. It has no state term and is trained and
evaluated offline only (the chunk graph and the native kernel do not compute it yet).

Input projections of all T steps are computed before the time loop; the loop only does the
recurrent part. The candidate uses the weights and gate order of torch.nn.GRUCell, LSTMCell and
RNNCell, so a model with every gate open equals the plain torch cell.

Baselines without a coordinator (`selective=False`): the dense cell updates every neuron at every
step; `skip_every=k` updates every neuron at steps t = 0, k, 2k, ... and none in between;
`random_mask=r` updates each neuron with probability r per step, independently of the input
(fresh draws in training; in deterministic mode one fixed seeded pattern of RANDOM_MASK_PERIOD
steps, repeated, `random_table`). The random mask carries its place in the pattern as one more
number of state (after h and c), so it is exported and served like an SA-RNN: a stream updates
the same neurons however it is chunked. Skip-every-k counts steps from the start of the sequence
given to `forward`: it is evaluated on whole recordings, offline.

The training gate's backward pass (`gate_grad`): "band" is the hard sigmoid's own derivative,
alpha / 2 inside |a| < 1 / alpha and zero outside, so a neuron that leaves the band gets no
gradient from its gate again; "smooth" (the default) is the derivative of sigmoid(2 alpha a),
equal to the band's at a = 0 and never zero. Either way the forward value is exactly [a > 0].
A training threshold tau other than 0.5 (a float or a per-row [B, 1] tensor, `--threshold-range`)
moves the cut to c = (2 tau - 1) / alpha, as at inference: the forward value is [a > c] and the
surrogate is centred on c (a - c in place of a).
"""

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor, nn

CELLS = ("gru", "lstm", "rnn")
GATES = {"gru": 3, "lstm": 4, "rnn": 1}
GATE_GRADS = ("smooth", "band")
BUDGETS = ("mean", "sum")
ALPHA_START = 1.0
ALPHA_END = 5.0
RANDOM_MASK_SEED = 0
RANDOM_MASK_PERIOD = 32768
MOTION_SMOOTHING = 0.05


@dataclass
class ModelConfig:
    """Shape and kind of an SA-RNN, or of a baseline without a coordinator (`selective=False`:
    dense, or updating on a fixed schedule: every `skip_every`-th step, or a `random_mask`)."""

    cell: str = "gru"
    n_features: int = 6
    hidden: int = 128
    n_classes: int = 7
    selective: bool = True
    coord_bias_init: float = 1.0
    skip_every: int = 1
    random_mask: float | None = None
    coord_energy: bool = False
    coord_accumulate: bool = False
    coord_delta: bool = False
    coord_shared_gate: bool = False

    def __post_init__(self) -> None:
        if self.cell not in CELLS:
            raise ValueError(f"unknown cell {self.cell!r}; expected one of {', '.join(CELLS)}")
        for field in ("n_features", "hidden", "n_classes", "skip_every"):
            if getattr(self, field) <= 0:
                raise ValueError(f"{field} must be positive, got {getattr(self, field)}")
        if self.random_mask is not None and not 0 < self.random_mask <= 1:
            raise ValueError(f"random_mask must be in (0, 1], got {self.random_mask:g}")
        if self.skip_every > 1 and self.random_mask is not None:
            raise ValueError("choose one schedule: skip_every or random_mask")
        if self.selective and self.gating != "coordinator":
            raise ValueError("a fixed update schedule replaces the coordinator; selective=False")
        if self.coord_energy and not self.selective:
            raise ValueError("coord_energy feeds the coordinator; a baseline has none")
        if self.coord_accumulate and not self.selective:
            raise ValueError("coord_accumulate is a coordinator; a baseline has none")
        if self.coord_delta and not self.coord_accumulate:
            raise ValueError("coord_delta feeds the accumulating coordinator; add coord_accumulate")
        if self.coord_shared_gate and not self.coord_delta:
            raise ValueError("coord_shared_gate gates on motion features; add coord_delta")

    @property
    def gating(self) -> str:
        """What opens the gates: "coordinator" (SA-RNN), "dense", "skip" or "random"."""
        if self.skip_every > 1:
            return "skip"
        if self.random_mask is not None:
            return "random"
        return "coordinator" if self.selective else "dense"

    @property
    def offline_only(self) -> str | None:
        """Why this model cannot be exported to the chunk graph, or None when it can."""
        if self.coord_shared_gate:
            return (
                "the checkpoint has a shared-gate coordinator (--coord-shared-gate), which the "
                "chunk graph and the native kernel do not compute yet; it is trained and "
                "evaluated offline only"
            )
        flag = {"skip": f"--skip-every {self.skip_every}"}
        if self.gating not in flag:
            return None
        return (
            f"the checkpoint is a {self.gating} baseline ({flag[self.gating]}): its gates follow "
            "the step index from the start of a recording, which the chunk graph does not "
            "carry; it is trained and evaluated offline only"
        )

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Output:
    """What a forward pass returns: logits [B,T,C], gates u [B,T,H], and what each gate decided
    on [B,T,H]: the coordinator's a, or an accumulating coordinator's margin acc - phi (it
    updates where the margin is at least 0)."""

    logits: Tensor
    updates: Tensor
    coordinator: Tensor
    state: Tensor


def slope(progress: float, end: float = ALPHA_END) -> float:
    """Annealed hard-sigmoid slope at `progress` (0 at the first step, 1 at the last) of a run:
    linear from 1 to `end` (the paper's final 5 by default)."""
    return ALPHA_START + (end - ALPHA_START) * min(1.0, max(0.0, progress))


GOLDEN = 0.6180339887498949


def accumulator_phase(hidden: int) -> Tensor:
    """Each neuron's firing level in (0, 1) for the accumulating coordinator: the fractional
    parts of (i + 1) x the golden ratio, spread evenly, so neurons asking for the same rate
    update on different steps instead of all at once."""
    levels = np.modf((np.arange(hidden) + 1) * GOLDEN)[0]
    return torch.from_numpy(levels.astype(np.float32))


def moving_deviation(x: Tensor, average: Tensor) -> tuple[Tensor, Tensor]:
    """|x_t - xbar_{t-1}| for every step of x [B, T, F] and the moving average after the last
    step, from `average` [B, F] before the first (xbar_t = xbar_{t-1} + beta (x_t - xbar_{t-1}),
    beta = MOTION_SMOOTHING)."""
    deviations = []
    for x_t in x.unbind(1):
        change = x_t - average
        deviations.append(change.abs())
        average = average + MOTION_SMOOTHING * change
    return torch.stack(deviations, 1), average


def random_table(hidden: int, rate: float) -> Tensor:
    """The deterministic random mask [RANDOM_MASK_PERIOD, H] (bool): neuron j updates at place
    k of the pattern where a seeded uniform draw (seed RANDOM_MASK_SEED) is below `rate`."""
    rng = np.random.default_rng(RANDOM_MASK_SEED)
    draws = rng.random((RANDOM_MASK_PERIOD, hidden), dtype=np.float32)
    return torch.from_numpy(draws < np.float32(rate))


def accumulator_scale(tau: float | Tensor) -> float | Tensor:
    """What the accumulating coordinator adds per unit of its rate at threshold tau: the odds
    (1 - tau) / tau, 1 at tau = 0.5; the update rate scales with it, from 19x at tau = 0.05 to
    1/19 at 0.95. An addition is capped at 1 (one update per step at most), so the accumulator
    stays below the neuron's level after each step: a step that adds nothing never updates."""
    return (1.0 - tau) / tau


def gate_threshold(tau: float | Tensor, alpha: float) -> float | Tensor:
    """Coordinator value above which p = hard_sigmoid(alpha a) exceeds tau (elementwise)."""
    return (2.0 * tau - 1.0) / alpha


class SARNN(nn.Module):
    """Selective-activation RNN with a per-step classification head."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        f, h = config.n_features, config.hidden
        cell_cls = {"gru": nn.GRUCell, "lstm": nn.LSTMCell, "rnn": nn.RNNCell}[config.cell]
        self.cell = cell_cls(f, h)
        width = 1 if config.coord_shared_gate else h  # the coordinator's input part
        self.coord_x = nn.Linear(f, width)
        self.coord_d = nn.Parameter(torch.zeros(h))
        nn.init.constant_(self.coord_x.bias, config.coord_bias_init)
        self.coord_rate = (
            nn.Parameter(torch.full((h,), config.coord_bias_init))
            if config.coord_shared_gate
            else None
        )
        self.coord_e = nn.Linear(f, width, bias=False) if config.coord_energy else None
        if self.coord_e is not None:
            nn.init.zeros_(self.coord_e.weight)
        self.coord_v = nn.Linear(f, width, bias=False) if config.coord_delta else None
        if self.coord_v is not None:
            nn.init.zeros_(self.coord_v.weight)
            self.register_buffer("motion_gain", torch.ones(f))
        self.head = nn.Linear(h, config.n_classes)
        self.register_buffer("mean", torch.zeros(f))
        self.register_buffer("std", torch.ones(f))
        self.alpha = 1.0

    @property
    def cell_state_size(self) -> int:
        """Width of the cell's own state: h, and c for an LSTM."""
        return 2 * self.config.hidden if self.config.cell == "lstm" else self.config.hidden

    @property
    def state_size(self) -> int:
        """Width of the carried state: the cell's, then the accumulator's with one, then the
        moving average of the input with motion features, or the place in the pattern of a
        random mask."""
        extra = self.config.hidden if self.config.coord_accumulate else 0
        average = self.config.n_features if self.config.coord_delta else 0
        place = 1 if self.config.gating == "random" else 0
        return self.cell_state_size + extra + average + place

    def set_normalisation(self, mean: Tensor, std: Tensor) -> None:
        """Store per-feature statistics of the training data; inputs are raw sensor units."""
        self.mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.std.copy_(torch.as_tensor(std, dtype=torch.float32).clamp_min(1e-6))

    def set_motion_scale(self, recordings: list[np.ndarray]) -> None:
        """Scale the motion features by their mean m = mean |x_t - xbar_{t-1}| per feature over
        `recordings` (each [T, F], raw units; the average starting at x_0; call after
        `set_normalisation`): `motion_gain` = std / m turns |x_t - xbar_{t-1}| / std into
        deviations in units of m."""
        if self.coord_v is None:
            raise ValueError("the model has no motion features (coord_delta)")
        deviations = []
        for r in recordings:
            x = torch.as_tensor(r, dtype=torch.float32)[None]
            if x.shape[1] > 1:
                deviations.append(moving_deviation(x[:, 1:], x[:, 0])[0][0])
        mean = torch.cat(deviations).mean(0).clamp_min(1e-6)
        self.motion_gain.copy_(self.std / mean)

    def keep_motion_monotone(self) -> None:
        """Clamp the motion weights W_v at 0 from below (after each optimiser step): motion can
        only raise a neuron's rate, so rest that moves less than any training rest (a quieter
        sensor) asks for fewer updates, never more."""
        if self.coord_v is not None:
            with torch.no_grad():
                self.coord_v.weight.clamp_(min=0.0)

    def initial_state(self, batch: int) -> Tensor:
        return torch.zeros(batch, self.state_size)

    def _check_input(self, x: Tensor) -> None:
        if x.ndim != 3:
            raise ValueError(f"x must be [batch, steps, features], got shape {tuple(x.shape)}")
        if x.shape[2] != self.config.n_features:
            raise ValueError(f"expected {self.config.n_features} features, got {x.shape[2]}")
        if not torch.isfinite(x).all():
            raise ValueError("x contains NaN or infinite values")

    def _candidate(self, gx: Tensor, h: Tensor, c: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """One step of the plain cell from the precomputed input projection gx."""
        gh = h @ self.cell.weight_hh.T + self.cell.bias_hh
        kind = self.config.cell
        if kind == "gru":
            xr, xz, xn = gx.chunk(3, dim=1)
            hr, hz, hn = gh.chunk(3, dim=1)
            r = torch.sigmoid(xr + hr)
            z = torch.sigmoid(xz + hz)
            n = torch.tanh(xn + r * hn)
            return (1 - z) * n + z * h, None
        if kind == "lstm":
            i, f, g, o = (gx + gh).chunk(4, dim=1)
            c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            return torch.sigmoid(o) * torch.tanh(c_new), c_new
        return torch.tanh(gx + gh), None

    def forward(
        self,
        x: Tensor,
        state: Tensor | None = None,
        *,
        deterministic: bool = False,
        threshold: float | Tensor = 0.5,
        force_gate: float | None = None,
        gate_grad: str = "smooth",
    ) -> Output:
        """Run T steps. Both modes cut at u = [a > (2 tau - 1) / alpha], tau = `threshold` (a
        float, or a tensor broadcasting to [B, H] such as one tau per row [B, 1]); training adds
        a straight-through gradient of the `gate_grad` surrogate centred on the cut (module
        docstring). `force_gate` (0 or 1) overrides every gate, for tests. Baselines ignore
        `threshold`: their gates are all open or follow their schedule."""
        if gate_grad not in GATE_GRADS:
            raise ValueError(f"unknown gate_grad {gate_grad!r}; expected one of {GATE_GRADS}")
        self._check_input(x)
        batch, steps, _ = x.shape
        hidden = self.config.hidden
        state = self.initial_state(batch) if state is None else state
        h = state[:, :hidden]
        c = state[:, hidden : self.cell_state_size] if self.config.cell == "lstm" else None
        acc_end = self.cell_state_size + hidden
        acc = state[:, self.cell_state_size : acc_end] if self.config.coord_accumulate else None
        phase = accumulator_phase(hidden) if acc is not None else None
        xn = (x - self.mean) / self.std
        gx_all = (xn @ self.cell.weight_ih.T + self.cell.bias_ih).unbind(1)
        motion = average = None
        if self.coord_v is not None:
            deviation, average = moving_deviation(x, state[:, acc_end:])
            motion = deviation / self.std
        ax_all = self.coordinator_input(xn, motion).unbind(1)
        cut = gate_threshold(threshold, self.alpha)
        gating = self.config.gating if force_gate is None else "forced"
        place = state[:, -1].long() if self.config.gating == "random" else None
        random = place is not None and deterministic
        table = random_table(hidden, self.config.random_mask) if random else None
        hs, us, as_ = [], [], []
        for t in range(steps):
            a = ax_all[t] + self.coord_d * h
            decided = a  # what the gate decides on (an accumulator's margin, below)
            if gating == "skip" and t % self.config.skip_every:
                hs.append(h)  # a step without updates: nothing to compute
                us.append(torch.zeros_like(a))
                as_.append(a)
                continue
            if gating in ("dense", "skip", "forced"):
                u = torch.full_like(a, 1.0 if force_gate is None else float(force_gate))
            elif gating == "random" and deterministic:
                u = table[(place + t) % RANDOM_MASK_PERIOD].to(a.dtype)
            elif gating == "random":
                u = (torch.rand_like(a) < self.config.random_mask).to(a.dtype)
            elif acc is not None:
                # the share of steps this neuron asks to update on
                if self.coord_rate is not None:
                    p = torch.sigmoid(self.coord_rate) * torch.sigmoid(ax_all[t])
                else:
                    p = torch.sigmoid(a)
                acc = acc + torch.clamp(accumulator_scale(threshold) * p.detach(), max=1.0)
                fire = (acc >= phase).to(a.dtype)
                decided = acc - phase
                acc = acc - fire
                u = fire if deterministic else fire + p - p.detach()
            elif deterministic:
                u = (a > cut).to(a.dtype)
            else:
                centred = a - cut  # a itself at tau = 0.5 (cut 0.0)
                if gate_grad == "band":
                    p = torch.clamp((self.alpha * centred + 1) / 2, 0, 1)
                else:
                    p = torch.sigmoid(2 * self.alpha * centred)
                # forward value [a > cut] (= round(p) at cut 0, but exact for tiny alpha a too)
                u = p + ((a > cut).to(a.dtype) - p).detach()
            h_new, c_new = self._candidate(gx_all[t], h, c)
            if gating != "dense":
                h = u * h_new + (1 - u) * h  # bitwise h_new at u = 1, h at u = 0
                if c is not None:
                    c = u * c_new + (1 - u) * c
            else:
                h, c = h_new, c_new
            hs.append(h)
            us.append(u)
            as_.append(decided)
        hseq = torch.stack(hs, 1)
        ahead = None if place is None else ((place + steps) % RANDOM_MASK_PERIOD)[:, None]
        parts = (h, c, acc, average, None if ahead is None else ahead.to(h.dtype))
        final = torch.cat([part for part in parts if part is not None], 1)
        return Output(self.head(hseq), torch.stack(us, 1), torch.stack(as_, 1), final)

    def coordinator_input(self, xn: Tensor, motion: Tensor | None = None) -> Tensor:
        """The coordinator's input part W_x x + b, plus W_e (x * x - 1) with energy features
        (x the normalised input): a gate can then open on motion and stay shut at rest, which a
        linear function of x alone cannot tell apart when motion swings both ways. With motion
        features, plus W_v (`motion` g - 1), `motion` = |x_t - xbar_{t-1}| / std [B, T, F]
        and g the gain std / m (`set_motion_scale`).

        The energy is centred (x * x has mean 1 on the training data) so that the budget's
        gradient on W_e, which is proportional to the feature, points where the feature is off
        its mean: at rest (x * x - 1 near -1), not in motion (the uncentred x * x would have the
        budget shut gates where the input moves most). The -1 folds into the exported bias."""
        ax = self.coord_x(xn)
        if self.coord_e is not None:
            ax = ax + self.coord_e(xn * xn - 1.0)
        if self.coord_v is not None:
            ax = ax + self.coord_v(motion * self.motion_gain - 1.0)
        return ax


def budget_loss(
    updates: Tensor, lam: float, form: str = "mean", target: float | Tensor | None = None
) -> Tensor:
    """The budget loss on gates u [B, T, H]. "mean": lambda x the mean of u over batch, steps
    and neurons (the update rate r); "sum", the reference's: lambda x the sum over steps, mean
    over batch and neurons (T r: its weight depends on the window length). With a `target` rate
    R the penalty is toward it, lambda |r - R| (times T for "sum"): it pushes gates shut above
    the target and open below it. A target per row ([B] tensor) is met row by row: the mean
    over rows of |r_b - R_b|."""
    if form not in BUDGETS:
        raise ValueError(f"unknown budget form {form!r}; expected one of {', '.join(BUDGETS)}")
    if isinstance(target, Tensor):
        cost = (updates.mean(dim=(1, 2)) - target).abs().mean()
    else:
        rate = updates.mean()
        cost = rate if target is None else (rate - target).abs()
    return lam * cost * (updates.shape[1] if form == "sum" else 1)


CHECKPOINT_FORMAT = "sarnn-checkpoint/1"


def plain(value: object, where: str = "checkpoint") -> object:
    """`value` rebuilt from what `torch.load(weights_only=True)` accepts: dict, list, tuple, str,
    int, float, bool, None and tensors. Numpy scalars become Python numbers; any other object
    raises TypeError naming where it is."""
    if value is None or type(value) in (str, int, float, bool) or isinstance(value, Tensor):
        return value
    if isinstance(value, np.generic):
        return plain(value.item(), where)
    for kind in (int, float, str):  # subclasses such as IntEnum would pickle as their class
        if isinstance(value, kind):
            return kind(value)
    if isinstance(value, dict):
        return {plain(k, where): plain(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(plain(v, f"{where}[{i}]") for i, v in enumerate(value))
    raise TypeError(f"{where} has type {type(value).__name__}; a checkpoint holds only plain data")


def save_checkpoint(model: SARNN, path: str, extra: dict) -> None:
    """Write weights, config, slope and the metadata `extra` as plain data (see `plain`)."""
    blob = {
        **extra,
        "format": CHECKPOINT_FORMAT,
        "config": model.config.to_dict(),
        "alpha": float(model.alpha),
        "state_dict": model.state_dict(),
    }
    torch.save(plain(blob), path)


def _gist(exc: Exception) -> str:
    """The first line of torch.load's error, without its advice to allowlist classes."""
    text = str(exc).split("WeightsUnpickler error: ")[-1]
    return text.partition("\n")[0].partition(". Please")[0]


def load_checkpoint(path: str) -> tuple[SARNN, dict]:
    """Read a checkpoint written by `save_checkpoint`; raise ValueError on anything else.

    Loads with weights_only=True: a file holding any other object (which unpickling could use
    to run code) is refused, not executed."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise ValueError(f"{path} is not a readable torch checkpoint: {_gist(exc)}") from exc
    if not isinstance(blob, dict) or blob.get("format") != CHECKPOINT_FORMAT:
        missing = f"missing format {CHECKPOINT_FORMAT!r}"
        raise ValueError(f"{path} is not an sarnn checkpoint ({missing})")
    try:
        model = SARNN(ModelConfig(**blob["config"]))
        model.load_state_dict(blob["state_dict"])
        model.alpha = float(blob["alpha"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{path} is a damaged sarnn checkpoint: {exc}") from exc
    model.eval()
    return model, blob

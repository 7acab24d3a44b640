"""Parity of an exported chunk graph (and its sparse twin) against its PyTorch checkpoint.

Step by step: at every step both runtimes start from the PyTorch state, so one float32 rounding
flip cannot derail a trajectory. Masks must agree on every decision with |a| >= NEAR_TIE (an
accumulating coordinator's a is its margin acc - phi); the rarer ones closer to zero are counted,
and a row whose gate flipped at such a near tie is left out of that step's logit and state
differences (the flipped neuron updated in one runtime and not in the other, by design of a
float32 tie, and the next step starts both from the PyTorch state again). Free running: whole
recordings in one ONNX call each, predicted classes and accuracy compared with PyTorch's. A dense
baseline's gates are always open (no ties); the offline-only baselines have no graph to verify.
"""

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from export.data import load_data, pad_recordings
from export.model import SARNN, load_checkpoint

SPARSE_GRAPH = "model.sparse.onnx"
NEAR_TIE = 1e-5
TOLERANCE = 1e-4


@dataclass
class StepParity:
    """Step-by-step comparison over one set of sequences."""

    steps: int = 0
    decisions: int = 0
    mismatches_far: int = 0
    near_ties: int = 0
    flips_near: int = 0
    exact_ties: int = 0
    max_logit_diff: float = 0.0
    max_state_diff: float = 0.0


@dataclass
class Report:
    """Everything verify measured; `ok` says whether the export may ship."""

    data: StepParity
    random: StepParity
    sparse_data: StepParity | None = None
    sparse_random: StepParity | None = None
    free_running_divergent_steps: int = 0
    free_running_steps: int = 0
    accuracy_torch: float = 0.0
    accuracy_onnx: float = 0.0
    notes: list[str] = field(default_factory=list)

    def _parts(self) -> list[tuple[str, StepParity]]:
        parts = [("test data", self.data), ("random", self.random)]
        if self.sparse_data is not None and self.sparse_random is not None:
            parts += [
                ("sparse, test data", self.sparse_data),
                ("sparse, random", self.sparse_random),
            ]
        return parts

    @property
    def ok(self) -> bool:
        parts = [p for _, p in self._parts()]
        return all(
            p.mismatches_far == 0
            and p.max_logit_diff <= TOLERANCE
            and p.max_state_diff <= TOLERANCE
            for p in parts
        )

    def as_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}

    def summary(self) -> str:
        lines = [f"parity {'OK' if self.ok else 'FAILED'}"]
        for label, p in self._parts():
            lines.append(
                f"  {label}: {p.steps} steps, {p.decisions} gate decisions, "
                f"{p.mismatches_far} mismatches with |a|>={NEAR_TIE:g}, "
                f"{p.flips_near}/{p.near_ties} flips among near ties, {p.exact_ties} exact ties, "
                f"max |dlogit| {p.max_logit_diff:.2e}, max |dstate| {p.max_state_diff:.2e}"
            )
        lines.append(
            f"  free running: {self.free_running_divergent_steps}/{self.free_running_steps} "
            f"steps with another predicted class; accuracy over all steps: "
            f"torch {self.accuracy_torch:.4f}, onnx {self.accuracy_onnx:.4f}"
        )
        return "\n".join(lines + [f"  note: {n}" for n in self.notes])


def open_session(model_dir: Path, graph: str = "model.onnx") -> ort.InferenceSession:
    if not (model_dir / graph).is_file():
        raise FileNotFoundError(f"{model_dir / graph} does not exist")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(model_dir / graph), opts, providers=["CPUExecutionProvider"])


@torch.no_grad()
def step_parity(model: SARNN, sess: ort.InferenceSession, x: np.ndarray, lengths: np.ndarray):
    """Compare one step at a time, both runtimes fed the PyTorch state."""
    out = StepParity()
    state = model.initial_state(x.shape[0])
    for t in range(x.shape[1]):
        live = lengths > t
        if not live.any():
            break
        xt = x[live, t : t + 1]
        st = state[live]
        ref = model(torch.from_numpy(xt), st, deterministic=True)
        logits, updates, state_out = sess.run(None, {"x": xt, "state": st.numpy()})
        torch_mask = ref.updates.numpy() > 0
        a = ref.coordinator.numpy() if model.config.selective else np.full(torch_mask.shape, np.inf)
        near = np.abs(a) < NEAR_TIE
        differ = updates != torch_mask
        out.steps += int(live.sum())
        out.decisions += a.size
        out.mismatches_far += int((differ & ~near).sum())
        out.near_ties += int(near.sum())
        out.flips_near += int((differ & near).sum())
        out.exact_ties += int((a == 0).sum())
        tied = (differ & near).reshape(len(xt), -1).any(axis=1)
        if not tied.all():
            logit_diff = np.abs(logits - ref.logits.numpy())[~tied]
            state_diff = np.abs(state_out - ref.state.numpy())[~tied]
            out.max_logit_diff = max(out.max_logit_diff, float(logit_diff.max()))
            out.max_state_diff = max(out.max_state_diff, float(state_diff.max()))
        state = state.clone()
        state[live] = ref.state
    return out


def checkpoint_data_spec(blob: dict) -> dict:
    """The data spec a checkpoint was trained with; older checkpoints name only their dataset
    (then its default split, whose test part is what they were tested on)."""
    return blob.get("data") or {"dataset": blob.get("dataset", "watch")}


def verify(checkpoint: Path, model_dir: Path, random_steps: int = 10_000, seed: int = 0) -> Report:
    """Compare the graph in model_dir with the checkpoint on test data and random inputs."""
    model, blob = load_checkpoint(str(checkpoint))
    if model.config.offline_only:
        raise ValueError(model.config.offline_only)
    sess = open_session(model_dir)
    data = load_data(checkpoint_data_spec(blob))
    x, lengths = pad_recordings(data.test)
    data_parity = step_parity(model, sess, x, lengths)
    rng = np.random.default_rng(seed)
    batch = 20
    steps = max(1, random_steps // batch)
    mean, std = model.mean.numpy(), model.std.numpy()
    xr = (mean + 2 * std * rng.standard_normal((batch, steps, len(mean)))).astype(np.float32)
    random_parity = step_parity(model, sess, xr, np.full(batch, steps))
    report = Report(data=data_parity, random=random_parity)
    if (model_dir / SPARSE_GRAPH).is_file():
        sparse = open_session(model_dir, SPARSE_GRAPH)
        report.sparse_data = step_parity(model, sparse, x, lengths)
        report.sparse_random = step_parity(model, sparse, xr, np.full(batch, steps))
    with torch.no_grad():
        ref = model(torch.from_numpy(x), deterministic=True).logits.argmax(-1).numpy()
    logits, _, _ = sess.run(
        None,
        {"x": x, "state": np.zeros((len(x), model.state_size), np.float32), "lengths": lengths},
    )
    pred = logits.argmax(-1)
    labels = np.asarray([r.label for r in data.test])
    valid = np.arange(x.shape[1])[None, :] < lengths[:, None]
    report.free_running_steps = int(valid.sum())
    report.free_running_divergent_steps = int(((pred != ref) & valid).sum())
    report.accuracy_torch = float(((ref == labels[:, None]) & valid).sum() / valid.sum())
    report.accuracy_onnx = float(((pred == labels[:, None]) & valid).sum() / valid.sum())
    if report.free_running_divergent_steps:
        report.notes.append("free-running trajectories diverged after a near-tie gate flip")
    return report

"""Baselines at equal multiply-adds (export.model, export.train, export.onnx_export): the dense
cell exported to the chunk graph with a coordinator that always opens and served with its own
accounting; the temporal-skip baseline, trained and evaluated offline; the random-mask baseline,
trained, evaluated, exported and computed by both chunk graphs with its place in the state."""

import contextlib
import io
import json

import numpy as np
import pytest

pytest.importorskip("torch")

import torch
from fastapi.testclient import TestClient

from export.cli import main
from export.model import RANDOM_MASK_PERIOD as PERIOD
from export.model import SARNN, ModelConfig, load_checkpoint
from export.onnx_export import build_model
from export.train import TrainConfig
from sarnn_serve import native
from sarnn_serve.accounting import CellCost, usage
from sarnn_serve.card import ModelCard
from tests.tiny_models import (
    assert_kernel_answers_as_graph,
    build_tiny_sarnn,
    graph_session,
    ort_session_for,
    tiny_inputs,
)

pytestmark = pytest.mark.train  # needs the training extra

ATOL = 1e-5


def _cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def _baseline(cell: str = "gru", **schedule) -> SARNN:
    """The tiny model's weights under another gating: dense, skip_every or random_mask."""
    weights = build_tiny_sarnn(cell)
    model = SARNN(ModelConfig(**{**weights.config.to_dict(), "selective": False, **schedule}))
    model.load_state_dict(weights.state_dict())
    model.alpha = weights.alpha
    return model.eval()


# --- configuration -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"skip_every": 3}, "replaces the coordinator"),
        ({"random_mask": 0.3}, "replaces the coordinator"),
        ({"selective": False, "skip_every": 0}, "skip_every must be positive"),
        ({"selective": False, "random_mask": 0.0}, r"random_mask must be in \(0, 1\]"),
        ({"selective": False, "skip_every": 2, "random_mask": 0.5}, "choose one schedule"),
    ],
)
def test_model_config_rejects_bad_schedules(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dense": True, "skip_every": 2}, "choose one baseline"),
        ({"skip_every": 2, "random_mask": 0.5}, "choose one baseline"),
        ({"skip_every": 2, "target_rate": 0.3}, "no coordinator"),
        ({"random_mask": 0.5, "target_rate": 0.3}, "no coordinator"),
        ({"random_mask": 1.5}, r"random_mask must be in \(0, 1\]"),
        ({"skip_every": 0}, "skip_every must be at least 1"),
    ],
)
def test_train_config_rejects_bad_baselines(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)


def test_recipes_name_the_baseline():
    assert TrainConfig().baseline is None
    assert TrainConfig(dense=True).baseline == "dense"
    skip = TrainConfig(skip_every=4)
    assert skip.baseline == "skip" and "--skip-every 4" in skip.recipe("x")
    rand = TrainConfig(random_mask=0.25)
    assert rand.baseline == "random" and "--random-mask 0.25" in rand.recipe("x")
    assert "--skip-every" not in TrainConfig().recipe("x")


# --- the schedules -------------------------------------------------------------------------


@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn"])
def test_skip_updates_every_neuron_every_kth_step_only(cell):
    k, steps = 3, 14
    model, dense = _baseline(cell, skip_every=k), _baseline(cell)
    x = torch.from_numpy(tiny_inputs(2, steps, seed=5))
    with torch.no_grad():
        out = model(x, deterministic=True)
        train_out = model(x)
        state, ref = None, []
        for t in range(steps):  # the dense cell run only at steps 0, k, 2k, ...
            if t % k == 0:
                state = dense(x[:, t : t + 1], state).state
            ref.append(state[:, : model.config.hidden])
    on = np.arange(steps) % k == 0
    u = out.updates.numpy()
    assert (u[:, on] == 1).all() and (u[:, ~on] == 0).all()
    assert torch.equal(train_out.updates, out.updates)
    hidden = torch.stack(ref, 1)
    assert torch.allclose(out.logits, model.head(hidden), atol=1e-6)
    assert torch.allclose(out.state, state, atol=1e-6)


def test_random_mask_is_a_fixed_pattern_at_evaluation_and_fresh_in_training():
    rate, steps = 0.3, 400
    model = _baseline("gru", random_mask=rate)
    torch.manual_seed(0)
    x = torch.from_numpy(tiny_inputs(3, steps, seed=6))
    with torch.no_grad():
        out = model(x, deterministic=True)
        prefix = model(x[:, :50], deterministic=True)
        again = model(x[:1], deterministic=True)
        fresh = [model(x).updates for _ in range(2)]
    u = out.updates
    assert abs(float(u.mean()) - rate) < 0.02
    assert torch.equal(u[0], u[1]) and torch.equal(u[0], u[2]), "one pattern for every row"
    assert torch.equal(prefix.updates, u[:, :50]), "a prefix of a longer recording's pattern"
    assert torch.equal(again.updates[0], u[0])
    assert torch.allclose(again.logits[0], out.logits[0], atol=1e-6)
    assert not torch.equal(fresh[0], fresh[1]), "training draws anew"
    assert not torch.equal(fresh[0][0], fresh[0][1]), "and per row"
    for mask in fresh:
        assert abs(float(mask.mean()) - rate) < 0.02
    # The input does not move the gates.
    with torch.no_grad():
        other = model(torch.from_numpy(tiny_inputs(3, steps, seed=7)), deterministic=True)
    assert torch.equal(other.updates, u)


# --- accounting and the card ---------------------------------------------------------------


def test_cell_cost_without_a_coordinator():
    sa = CellCost("gru", 6, 128)
    plain = CellCost("gru", 6, 128, with_coordinator=False)
    assert plain.coordinator == 0 and sa.coordinator == 128 * 7
    assert plain.dense_step == sa.dense_step == 51456
    assert plain.selective(10 * 128, 10) == plain.dense(10)
    assert plain.per_step(1.0) == plain.dense_step
    assert plain.per_step(0.25) == plain.dense_step / 4
    assert sa.per_step(0.5) == sa.coordinator + 0.5 * sa.dense_step


def _card(selective: bool, rate: float) -> ModelCard:
    return ModelCard.model_validate(
        {
            "name": "m",
            "version": "v",
            "cell": "lstm",
            "n_features": 3,
            "hidden": 10,
            "n_classes": 2,
            "feature_names": ["a", "b", "c"],
            "class_labels": ["x", "y"],
            "alpha": 5.0,
            "selective": selective,
            "training": {"dataset": "d", "recipe": "r", "seed": 0, "lam": 0.0, "steps": 1},
            "evaluation": {
                "streaming_accuracy": 0.5,
                "last_step_accuracy": 0.5,
                "update_rate": rate,
            },
        }
    )


def test_dense_card_costs_the_dense_cell_and_saves_nothing():
    dense = _card(False, 1.0)
    summary = dense.cost_summary()
    assert summary.selective_macs == summary.dense_macs == 10 * 4 * (3 + 10)
    used = usage(dense.cost, steps=7, updates=7 * 10)
    assert used.macs_selective == used.macs_dense and used.macs_saved == 0
    assert used.update_rate == 1.0
    # The same shape with a coordinator pays for it.
    sa = _card(True, 1.0)
    assert sa.cost_summary().selective_macs == summary.dense_macs + 10 * (3 + 1)


# --- the dense export ----------------------------------------------------------------------


@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn"])
def test_dense_graph_updates_every_neuron_and_matches_pytorch(cell):
    model = _baseline(cell)
    sess = ort_session_for(model)
    x = tiny_inputs(3, 25, seed=8)
    state = np.random.default_rng(9).standard_normal((3, model.state_size)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x), torch.from_numpy(state), deterministic=True)
    for tau in (1e-6, 0.3, 0.5, 0.9, 1 - 1e-7):
        logits, updates, state_out = sess.run(
            None, {"x": x, "state": state, "threshold": np.full(3, tau, np.float32)}
        )
        assert updates.all(), tau
        np.testing.assert_allclose(logits, ref.logits.numpy(), atol=ATOL, rtol=0)
        np.testing.assert_allclose(state_out, ref.state.numpy(), atol=ATOL, rtol=0)
    # Past a row's length nothing updates and the state is kept.
    lengths = np.array([25, 4, 0], np.int64)
    _, updates, state_out = sess.run(None, {"x": x, "state": state, "lengths": lengths})
    for i, n in enumerate(lengths):
        assert updates[i, :n].all() and not updates[i, n:].any()
    assert np.array_equal(state_out[2], state[2])
    with torch.no_grad():
        short = model(torch.from_numpy(x[1:2, :4]), torch.from_numpy(state[1:2]))
    np.testing.assert_allclose(state_out[1:2], short.state.numpy(), atol=ATOL, rtol=0)


def test_dense_graph_has_no_sparse_twin_and_skipping_is_offline_only():
    with pytest.raises(ValueError, match="no sparse twin"):
        build_model(_baseline("gru"), sparse=True)
    with pytest.raises(ValueError, match=r"baseline \(--skip-every 2.*offline only"):
        build_model(_baseline("gru", skip_every=2))


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn"])
def test_random_mask_graphs_follow_the_pattern_across_chunks(cell, sparse):
    """The graph updates the neurons torch's pattern says, from the place the state holds;
    chunks carry the place, so a stream updates as a whole; past a row's length nothing moves."""
    model = _baseline(cell, random_mask=0.3)
    sess = graph_session(model, sparse)
    x = tiny_inputs(3, 40, seed=8)
    state = np.zeros((3, model.state_size), np.float32)
    state[:, -1] = [0, PERIOD - 8, 17]  # the pattern wraps within the chunk
    with torch.no_grad():
        ref = model(torch.from_numpy(x), torch.from_numpy(state), deterministic=True)
    feeds = {"x": x, "state": state, "threshold": np.full(3, 0.5, np.float32)}
    logits, updates, state_out = sess.run(None, feeds)
    assert np.array_equal(updates, ref.updates.numpy().astype(bool))
    assert 0.2 < updates.mean() < 0.4
    np.testing.assert_allclose(logits, ref.logits.numpy(), atol=ATOL, rtol=0)
    np.testing.assert_allclose(state_out, ref.state.numpy(), atol=ATOL, rtol=0)
    assert state_out[:, -1].tolist() == [40, 32, 57]
    first = sess.run(None, {**feeds, "x": x[:, :15]})
    second = sess.run(None, {**feeds, "x": x[:, 15:], "state": first[2]})
    assert np.array_equal(np.concatenate([first[1], second[1]], 1), updates)
    np.testing.assert_allclose(second[2], state_out, atol=ATOL, rtol=0)
    lengths = np.array([40, 4, 0], np.int64)
    _, short, kept = sess.run(None, {**feeds, "lengths": lengths})
    assert not short[1, 4:].any() and not short[2].any()
    assert kept[1, -1] == PERIOD - 4 and np.array_equal(kept[2], state[2])


def test_a_random_mask_reads_a_bad_place_as_the_start():
    model = _baseline("gru", random_mask=0.3)
    sess = graph_session(model)
    x = tiny_inputs(4, 6, seed=8)
    state = np.zeros((4, model.state_size), np.float32)
    state[:, -1] = [0, np.nan, -3, 1e9]
    _, updates, state_out = sess.run(None, {"x": x, "state": state})
    for row in (1, 2, 3):
        assert np.array_equal(updates[row], updates[0])
    assert state_out[:, -1].tolist() == [6, 6, 6, 6]


# --- short runs ----------------------------------------------------------------------------

TINY_RUN = ["--dataset", "basicmotions", "--hidden", "8", "--epochs", "1"]
TINY_RUN += ["--batches-per-epoch", "3", "--batch-size", "8", "--window", "50", "--quiet"]


@pytest.mark.slow
@pytest.mark.parametrize(("flag", "value"), [("--skip-every", "4"), ("--random-mask", "0.3")])
def test_schedule_baselines_train_evaluate_and_export_if_servable(tmp_path, flag, value):
    run = tmp_path / "run"
    code, out, err = _cli(["train", *TINY_RUN, flag, value, "--out", str(run)])
    assert code == 0, err
    assert "update rate" in out
    metrics = json.loads((run / "metrics.json").read_text())
    assert f"{flag} {value}" in metrics["recipe"]
    rate = metrics["validation"]["update_rate"]
    cost = CellCost("gru", 6, 8, with_coordinator=False)
    if flag == "--skip-every":
        assert rate == 0.25  # basicmotions recordings are 100 steps: 25 of them update
    else:
        assert abs(rate - 0.3) < 0.05
    assert metrics["macs_per_step"]["selective_val"] == pytest.approx(cost.per_step(rate))
    test = metrics["test"]
    assert len(test["scored"]) == len(test["correct"]) == metrics["dataset"]["test_recordings"]
    assert sum(test["correct"]) / sum(test["scored"]) == test["streaming_accuracy"]
    model, _ = load_checkpoint(str(run / "checkpoint.pt"))
    assert model.config.gating == ("skip" if flag == "--skip-every" else "random")

    models = tmp_path / "models"
    code, _, err = _cli(["onnx", "--checkpoint", str(run / "checkpoint.pt"), "--out", str(models)])
    if flag == "--skip-every":
        assert code != 0 and "offline only" in err
        assert not models.exists()
        return
    assert code == 0, err
    card = ModelCard.model_validate_json((models / "model.json").read_text())
    assert card.random_mask == 0.3 and not card.selective
    assert card.state_size == 8 + 1

    from sarnn_serve.api.app import create_app
    from sarnn_serve.settings import Settings

    z = np.random.default_rng(3).standard_normal((30, card.n_features))
    inputs = (model.mean.numpy() + model.std.numpy() * z).astype(np.float32)
    with TestClient(create_app(Settings(model_dir=tmp_path))) as client:
        created = client.post("/v1/sessions", json={"model": "models"})
        assert created.status_code == 201, created.text
        sid = created.json()["id"]
        served = []
        for seq, (start, end) in enumerate([(0, 11), (11, 30)]):
            body = {"seq": seq, "inputs": inputs[start:end].tolist(), "include_mask": True}
            answer = client.post(f"/v1/sessions/{sid}/chunks", json=body)
            assert answer.status_code == 200, answer.text
            served += [s["mask"] for s in answer.json()["steps"]]
    with torch.no_grad():
        want = model(torch.from_numpy(inputs[None]), deterministic=True).updates[0]
    assert np.array_equal(np.asarray(served), want.numpy().astype(int))


@pytest.mark.slow
def test_dense_baseline_exports_serves_and_accounts_as_dense(tmp_path):
    run, models = tmp_path / "run", tmp_path / "models"
    code, _, err = _cli(["train", *TINY_RUN, "--dense", "--out", str(run)])
    assert code == 0, err
    code, out, err = _cli(
        ["onnx", "--checkpoint", str(run / "checkpoint.pt"), "--out", str(models / "dense")]
    )
    assert code == 0, err
    assert "parity OK" in out
    directory = models / "dense"
    assert not (directory / "model.sparse.onnx").exists()
    card = ModelCard.model_validate_json((directory / "model.json").read_text())
    assert card.selective is False and card.sparse_graph is None
    assert card.evaluation.update_rate == 1.0
    assert card.cost_per_step.selective_macs == card.cost_per_step.dense_macs
    report = json.loads((directory / "verify.json").read_text())
    assert report["ok"] and report["data"]["near_ties"] == 0

    from sarnn_serve.api.app import create_app
    from sarnn_serve.settings import Settings

    model, _ = load_checkpoint(str(run / "checkpoint.pt"))
    hidden, steps = card.hidden, 9
    z = np.random.default_rng(3).standard_normal((steps, card.n_features))
    inputs = (model.mean.numpy() + model.std.numpy() * z).astype(np.float32)
    with TestClient(create_app(Settings(model_dir=models))) as client:
        created = client.post("/v1/sessions", json={"threshold": 0.95})
        assert created.status_code == 201, created.text
        sid = created.json()["id"]
        body = {"seq": 0, "inputs": inputs.tolist(), "include_mask": True}
        answer = client.post(f"/v1/sessions/{sid}/chunks", json=body)
        assert answer.status_code == 200, answer.text
    result = answer.json()
    assert [s["updates"] for s in result["steps"]] == [hidden] * steps
    assert all(s["mask"] == [1] * hidden for s in result["steps"])
    chunk = result["chunk"]
    assert chunk["updates"] == steps * hidden and chunk["update_rate"] == 1.0
    assert chunk["macs_selective"] == chunk["macs_dense"] == steps * card.cost.dense_step
    assert chunk["macs_saved"] == 0
    # Parity with PyTorch on what was served.
    with torch.no_grad():
        logits = model(torch.from_numpy(inputs[None])).logits[0]
    probs = torch.softmax(logits.double(), -1).numpy()
    served = np.asarray([s["probabilities"] for s in result["steps"]])
    np.testing.assert_allclose(served, probs, atol=1e-5)


@pytest.mark.skipif(not native.available(), reason="the native kernel was not built")
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_the_kernel_follows_the_random_pattern_as_the_graph(cell, tmp_path):
    model = _baseline(cell, random_mask=0.3)
    state = np.zeros((5, model.state_size), np.float32)
    state[:, -1] = [0, PERIOD - 1, np.nan, 1e9, 5.5]
    feeds = {
        "x": tiny_inputs(5, 60, seed=2),
        "state": state,
        "lengths": np.array([60, 0, 7, 59, 30], np.int64),
        "threshold": np.array([0.5, 0.3, 0.05, 0.95, 0.7], np.float32),
    }
    assert_kernel_answers_as_graph(model, feeds, tmp_path)

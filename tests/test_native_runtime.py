"""The native kernel (sarnn_serve/csrc/step_kernel.c through sarnn_serve.native) on exported
graphs, without the training stack: the checked-in tiny model and the shipped ones against their
dense chunk graphs, the weight reader on bad files, the registry, the router and a live server.
The tiny models of every cell built with torch are in test_native_kernel (marked `train`).
"""

import asyncio
import shutil
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import pytest

from sarnn_serve import native
from sarnn_serve.engine import DENSE, NATIVE, SPARSE, Engine
from sarnn_serve.native import NativeKernel, NativeKernelError
from sarnn_serve.onnx_initializers import OnnxFormatError, read_initializers
from sarnn_serve.registry import load_model
from sarnn_serve.routing import Calibration, Router
from tests.fixtures import ATOL, Outputs, assert_same_outputs, rest_answers, softmax, watch_like
from tests.service_fixtures import (
    FIXTURE_MODELS,
    SHIPPED_MODELS,
    TINY_MODEL,
    start_server,
    stop_server,
)

SHIPPED = sorted(p.parent.name for p in SHIPPED_MODELS.glob("*/model.onnx"))
SERVED = "watch-gru"


def test_library_is_built_and_loads() -> None:
    # the package promises the kernel wherever a C compiler was at install (CI has gcc)
    path = native.library_path()
    assert path is not None and path.is_file(), "sarnn_serve._step_kernel was not built"
    assert path.parent == Path(native.__file__).parent
    assert native.available()


@pytest.mark.parametrize("seed", range(5))
def test_random_bytes_are_not_onnx(seed: int, tmp_path: Path) -> None:
    rng = np.random.default_rng(seed)
    path = tmp_path / "noise.onnx"
    path.write_bytes(rng.bytes(int(rng.integers(1, 4096))))
    with pytest.raises(OnnxFormatError):
        read_initializers(path)


@pytest.mark.parametrize("keep", [0.005, 0.5, 0.999], ids=["in-nodes", "in-weights", "at-end"])
def test_truncated_model_is_not_onnx(keep: float, tmp_path: Path) -> None:
    data = (SHIPPED_MODELS / SERVED / "model.onnx").read_bytes()
    path = tmp_path / "truncated.onnx"
    path.write_bytes(data[: int(keep * len(data))])
    with pytest.raises(OnnxFormatError):
        read_initializers(path)


def test_a_file_that_is_not_onnx_gives_no_kernel(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\x0a\xff\xff")
    with pytest.raises(NativeKernelError, match=r"model\.onnx"):
        NativeKernel.from_graph(path)


@pytest.mark.parametrize(("batch", "steps"), [(1, 1), (3, 7), (4, 33), (9, 5)])
def test_tiny_fixture_model_on_the_kernel_matches_its_dense_graph(batch: int, steps: int) -> None:
    """Every row block (4 rows and the rest), chunk length, padding and per-row threshold."""
    engine = load_model(FIXTURE_MODELS / TINY_MODEL).engine
    assert engine.native is not None
    rng = np.random.default_rng(batch * 100 + steps)
    x = rng.normal(0.0, 1.0, (batch, steps, 6)).astype(np.float32) * 1.5
    state = (0.5 * rng.standard_normal((batch, engine.native.state_size))).astype(np.float32)
    lengths = rng.integers(1, steps + 1, batch)
    taus = rng.uniform(0.05, 0.95, batch).astype(np.float32)
    got, want = (engine.run(x, state, lengths, taus, path=path) for path in (NATIVE, DENSE))
    assert_same_outputs(
        (got.logits, got.updates, got.state), (want.logits, want.updates, want.state)
    )
    assert 0 < want.updates.mean() < 1, "the gates are mixed"


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_models_load_with_the_kernel_and_match_dense(name: str) -> None:
    model = load_model(SHIPPED_MODELS / name)
    engine, card = model.engine, model.card
    assert NATIVE in engine.paths and engine.native is not None
    assert (engine.native.hidden, engine.native.state_size) == (card.hidden, card.state_size)
    batch, steps = 3, 24
    rng = np.random.default_rng(7)
    x = rng.normal(0.0, 1.0, (batch, steps, card.n_features)).astype(np.float32)
    state = (0.3 * rng.standard_normal((batch, card.state_size))).astype(np.float32)
    lengths, taus = np.array([24, 10, 17]), np.array([0.3, 0.5, 0.7], np.float32)
    runs = {path: engine.run(x, state, lengths, taus, path=path) for path in (DENSE, NATIVE)}
    got, want = ((o.logits, o.updates, o.state) for o in (runs[NATIVE], runs[DENSE]))
    assert_same_outputs(got, want, name)


def test_registry_leaves_the_kernel_out_when_told_or_not_built(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = load_model(SHIPPED_MODELS / SERVED, native_kernel=False)
    assert model.engine.native is None and model.engine.paths == [DENSE, SPARSE]
    monkeypatch.setattr(native, "available", lambda: False)
    assert load_model(SHIPPED_MODELS / SERVED).engine.paths == [DENSE, SPARSE]


@pytest.mark.parametrize("output", [0, 2], ids=["logits", "state"])
def test_registry_leaves_out_a_kernel_that_disagrees_with_the_graph(
    output: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kernel is refused, not the model: it serves on its graphs (test_kernel_head)."""
    run = NativeKernel.run

    def drifted(self: NativeKernel, *args, **kwargs) -> Outputs:
        outputs = list(run(self, *args, **kwargs))
        outputs[output] = outputs[output] + 1e-3
        return tuple(outputs)

    monkeypatch.setattr(NativeKernel, "run", drifted)
    model = load_model(SHIPPED_MODELS / SERVED)
    assert model.engine.native is None and NATIVE not in model.engine.paths


# --- routing ------------------------------------------------------------------------------

# dense costs 10 us/step at B=1 and 80 at B=64; the kernel 2 + 30 x rate at B=1, 4 + 120 x rate
# at B=64 (the sparse graph's calibration in test_unit_routing, on the kernel)
NATIVE_CAL = Calibration(
    [1, 64], [0, 0], [10e-6, 80e-6], [0, 0], [2e-6, 4e-6], [30e-6, 120e-6], graph=NATIVE
)
# where the sparse graph would split a batch into single rows
NATIVE_LARGE_H = Calibration(
    [1, 8], [0, 0], [100e-6, 700e-6], [0, 0], [5e-6, 40e-6], [100e-6, 800e-6], graph=NATIVE
)


def test_native_cost_follows_the_mean_row_rate() -> None:
    rates = [0.15] * 8
    assert NATIVE_CAL.rate_of(rates) == pytest.approx(0.15)
    assert NATIVE_CAL.rate_of([0.0, 0.5, 0.1]) == pytest.approx(0.2)
    # eight rows at 15%: the union (73%) is dear on the sparse graph, the mean cheap on the kernel
    router = Router("auto", NATIVE_CAL)
    assert router.plan(rates) == [(NATIVE, list(range(8)))]
    sparse_graph = Router("auto", replace(NATIVE_CAL, graph=SPARSE))
    assert sparse_graph.plan(rates) == [(DENSE, list(range(8)))]


def test_auto_runs_native_below_the_crossover_and_dense_above() -> None:
    router = Router("auto", NATIVE_CAL)
    assert router.plan([0.1]) == [(NATIVE, [0])]
    assert router.plan([0.3]) == [(DENSE, [0])]
    assert router.plan([0.05, 0.1, 0.0]) == [(NATIVE, [0, 1, 2])]
    assert router.plan([0.9] * 8, steps=16) == [(DENSE, list(range(8)))]


@pytest.mark.parametrize("cal", [NATIVE_CAL, NATIVE_LARGE_H], ids=["small-h", "large-h"])
def test_native_plans_never_split_a_batch(
    cal: Calibration, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(0)
    router, unbounded = Router("auto", cal), Router("auto", cal)
    monkeypatch.setattr(unbounded, "_dense_from", lambda *_: 2.0)  # never settled early
    seen = set()
    for n in [1, 2, 3, 4, 5, 8, 9, 17, 64] * 20:
        rates = (rng.choice([0.0, 0.01, 0.05, 0.2, 0.6, 1.0], n) * rng.random(n)).tolist()
        for steps in (1, 32):
            plan = router.plan(rates, steps)
            assert len(plan) == 1 and plan[0][1] == list(range(n)), plan
            assert plan == unbounded.plan(rates, steps), "the cached rate bound changed a plan"
            seen.add(plan[0][0])
    assert seen == {NATIVE, DENSE}
    # the batch the sparse graph runs as four single-row calls is one kernel call
    assert Router("auto", NATIVE_LARGE_H).plan([0.02, 0.5, 0.01, 0.03]) == [(NATIVE, [0, 1, 2, 3])]


def test_forced_native_is_one_call_of_every_row() -> None:
    assert Router("native", NATIVE_CAL).plan([1.0, 1.0, 0.0]) == [(NATIVE, [0, 1, 2])]
    assert Router("native", NATIVE_CAL).plan([0.5], steps=64) == [(NATIVE, [0])]


def test_observe_corrects_the_native_prediction() -> None:
    router = Router("auto", NATIVE_CAL)
    assert set(router.correction) == {DENSE, NATIVE}
    rates = [0.0, 0.2, 0.1]
    # a call that takes what the mean rate predicts leaves the correction alone
    router.observe(NATIVE, rates, 4, NATIVE_CAL.sparse_call(3, 4, 0.1))
    assert router.correction[NATIVE] == pytest.approx(1.0)
    assert router.plan([0.1]) == [(NATIVE, [0])]
    # kernel calls keep measuring 5x their prediction: the router moves to dense
    for _ in range(200):
        router.observe(NATIVE, [0.1], 1, 5 * NATIVE_CAL.sparse_call(1, 1, 0.1))
    assert router.correction[NATIVE] > 4 and router.correction[DENSE] == 1.0
    assert router.plan([0.1]) == [(DENSE, [0])]


# --- a live server ------------------------------------------------------------------------


@pytest.mark.slow
def test_server_on_the_native_path_answers_as_the_dense_graph(tmp_path: Path) -> None:
    models = tmp_path / "models"
    shutil.copytree(SHIPPED_MODELS / SERVED, models / SERVED)
    server = start_server(models, tmp_path, {"SARNN_ENGINE_PATH": NATIVE})
    sizes = [(7, 1, 20, 3), (4, 16, 2)]  # two sessions at once: their chunks batch together
    xs = [watch_like(seed, sum(chunks)) for seed, chunks in enumerate(sizes)]
    streams = [np.split(x, np.cumsum(chunks)[:-1]) for x, chunks in zip(xs, sizes, strict=True)]
    try:

        async def both() -> list[list[dict]]:
            jobs = [rest_answers(server.url, [c.tolist() for c in s]) for s in streams]
            return await asyncio.gather(*jobs)

        answers = asyncio.run(both())
        stats = httpx.get(f"{server.url}/v1/models/{SERVED}/stats", timeout=10).json()
    finally:
        stop_server(server)

    dense = Engine(SHIPPED_MODELS / SERVED / "model.onnx")
    for k, (x, chunks) in enumerate(zip(xs, answers, strict=True)):
        out = dense.run(x[None], np.zeros((1, dense.inputs["state"].shape[1]), np.float32))
        steps = [step for chunk in chunks for step in chunk["steps"]]
        assert [s["index"] for s in steps] == list(range(len(x)))
        classes = np.array([s["class"] for s in steps])
        updates = np.array([s["updates"] for s in steps])
        assert np.array_equal(classes, out.logits[0].argmax(-1)), f"stream {k}: classes"
        assert np.array_equal(updates, out.updates[0].sum(-1)), f"stream {k}: updates"
        assert updates.min() > 0 and updates.max() < out.updates.shape[-1], "gates are mixed"
        probs = [s["probabilities"] for s in steps]
        np.testing.assert_allclose(probs, softmax(out.logits[0]), atol=ATOL, rtol=0)
    engine = stats["engine"]
    assert engine["routing"] == NATIVE and NATIVE in engine["graphs"]
    assert engine["calibration"]["path"] == NATIVE
    n_chunks = sum(map(len, sizes))
    assert set(engine["calls"]) == {NATIVE} and 1 <= engine["calls"][NATIVE] <= n_chunks

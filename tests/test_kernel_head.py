"""The native kernel never serves other weights than the graph: crafted model directories.

The kernel reads the dense graph's weights by initializer name; a graph whose head reads another
tensor than the one named W_out (a shadowed initializer: the graph's own renamed, an unused
W_out beside it) or that holds two initializers of one name would make it answer with another
output head (logits off by 3-9, classes agreeing 9-19% of the time) while masks and state match.
At load the kernel now answers a probe beside the dense graph, logits included, and a kernel
that differs is left out (no kernel, the model serves on its graphs), never served.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from sarnn_serve.engine import DENSE, NATIVE
from sarnn_serve.native import NativeKernel, NativeKernelError, verify
from sarnn_serve.onnx_initializers import OnnxFormatError, read_initializers
from sarnn_serve.registry import load_model
from tests.crafted_models import SOURCE, Mutation, crafted_model, duplicated, shadowed


def _probe(model_dir: Path) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    card = json.loads((model_dir / "model.json").read_text())
    return {
        "x": rng.normal(0.0, 1.0, (3, 16, card["n_features"])).astype(np.float32),
        "state": (0.3 * rng.standard_normal((3, card["hidden"]))).astype(np.float32),
    }


@pytest.mark.parametrize(
    "mutate", [shadowed("W_out"), duplicated("W_out")], ids=["shadowed", "dup"]
)
def test_a_graph_whose_head_is_not_its_w_out_gets_no_kernel(
    mutate: Mutation, tmp_path: Path
) -> None:
    directory = crafted_model(tmp_path, mutate)
    model = load_model(directory)  # the model itself is fine: it serves on its graph
    assert NATIVE not in model.engine.paths and model.engine.native is None
    # ... and that graph answers as the original model does
    original = load_model(SOURCE, native_kernel=False).engine
    feed = _probe(directory)
    got, want = model.engine.run(**feed, path=DENSE), original.run(**feed, path=DENSE)
    np.testing.assert_array_equal(got.logits, want.logits)


def test_verify_names_the_logits_of_a_shadowed_head(tmp_path: Path) -> None:
    directory = crafted_model(tmp_path, shadowed("W_out"))
    kernel = NativeKernel.from_graph(directory / "model.onnx")  # builds: every shape fits
    engine = load_model(directory, native_kernel=False).engine

    def dense(*feed: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        out = engine.run(*feed)
        return out.logits, out.updates, out.state

    with pytest.raises(NativeKernelError, match=r"logits differ by up to \d"):
        verify(kernel, dense)


@pytest.mark.parametrize("name", ["W_out", "R_z", "mean"])
def test_an_initializer_defined_twice_is_not_read(name: str, tmp_path: Path) -> None:
    directory = crafted_model(tmp_path, duplicated(name))
    with pytest.raises(OnnxFormatError, match=f"'{name}' defined twice"):
        read_initializers(directory / "model.onnx")
    with pytest.raises(NativeKernelError, match="defined twice"):
        NativeKernel.from_graph(directory / "model.onnx")


def test_the_shipped_model_keeps_its_kernel(tmp_path: Path) -> None:
    # the probe's tolerance refuses other weights, not float32 rounding
    directory = tmp_path / "copy"
    shutil.copytree(SOURCE, directory)
    assert NATIVE in load_model(directory).engine.paths

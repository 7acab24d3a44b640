"""Crafted model directories: copies of the shipped watch-gru (dense graph only) whose ONNX
graph a test changes, for the load checks of the registry and the native kernel."""

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from tests.service_fixtures import SHIPPED_MODELS as DEFAULT_MODEL_DIR

SOURCE = DEFAULT_MODEL_DIR / "watch-gru"
Mutation = Callable[[onnx.ModelProto], None]


def rename_input(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Point every node (subgraphs included) that reads `old` at `new`."""
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                rename_input(attribute.g, old, new)


def initializer(model: onnx.ModelProto, name: str) -> onnx.TensorProto:
    return next(t for t in model.graph.initializer if t.name == name)


def _random(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def shadowed(*names: str, features: int | None = None) -> Mutation:
    """The graph reads its own `names` under other names; unused initializers of those names
    hold other values (with `features`: that many on the feature axis, the first)."""

    def mutate(model: onnx.ModelProto) -> None:
        for name in names:
            tensor = initializer(model, name)
            rename_input(model.graph, name, f"{name}_graph")
            tensor.name = f"{name}_graph"
            shape = tuple(tensor.dims)
            if features is not None:
                shape = (features, *shape[1:])
            model.graph.initializer.append(numpy_helper.from_array(_random(shape, 1), name))

    return mutate


def duplicated(name: str) -> Mutation:
    """A second initializer `name`, with other values, after the graph's."""

    def mutate(model: onnx.ModelProto) -> None:
        shape = tuple(initializer(model, name).dims)
        model.graph.initializer.append(numpy_helper.from_array(_random(shape, 2), name))

    return mutate


def replaced(name: str, array: np.ndarray) -> Mutation:
    """The initializer `name` holds `array` instead."""

    def mutate(model: onnx.ModelProto) -> None:
        initializer(model, name).CopyFrom(numpy_helper.from_array(array, name))

    return mutate


def unused(name: str, dims: list[int]) -> Mutation:
    """An unused float initializer of shape `dims` and no data (onnxruntime loads it)."""

    def mutate(model: onnx.ModelProto) -> None:
        tensor = onnx.TensorProto(name=name, data_type=onnx.TensorProto.FLOAT, dims=dims)
        model.graph.initializer.append(tensor)

    return mutate


def crafted_model(root: Path, *mutations: Mutation, **card_changes: object) -> Path:
    """A model directory under `root` (the model dir): the shipped watch-gru's dense graph
    changed by `mutations`, its card by `card_changes`."""
    directory = root / "crafted"
    directory.mkdir(parents=True)
    card = json.loads((SOURCE / "model.json").read_text())
    card |= {"sparse_graph": None, **card_changes}
    (directory / "model.json").write_text(json.dumps(card))
    model = onnx.load(str(SOURCE / "model.onnx"))
    for mutate in mutations:
        mutate(model)
    (directory / "model.onnx").write_bytes(model.SerializeToString())
    return directory

"""Fixtures every suite can use: `tests.fixtures` (fakes, the data-plane factory),
`tests.service_fixtures` (the tiny checked-in model, a real uvicorn, a real Redis) and, where
torch is installed, `tests.tiny_models` (tiny seeded SA-RNNs for the offline side).

Tests that need the training stack (torch, onnx, the datasets) are marked `train`; without
torch they are skipped, so the runtime install plus pytest runs everything else.
"""

import importlib.util

import pytest

HAS_TORCH = importlib.util.find_spec("torch") is not None

pytest_plugins = [
    "tests.service_fixtures",
    "tests.fixtures",
    *(["tests.tiny_models"] if HAS_TORCH else []),
]
# helpers (and the store's suite) shared by test modules: their asserts explain failures too
pytest.register_assert_rewrite(
    "tests.auth_fixtures", "tests.cli_fixtures", "tests.deploy_fixtures", "tests.store_contract"
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the `train` tests when torch is missing (a module that imports it at the top
    skips itself with pytest.importorskip)."""
    if HAS_TORCH:
        return
    skip = pytest.mark.skip(reason="needs the training extra: pip install 'sarnn-serve[train]'")
    for item in items:
        if "train" in item.keywords:
            item.add_marker(skip)

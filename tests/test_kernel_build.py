"""How the native kernel is built and loaded: other builds of csrc/step_kernel.c in a temp dir.

- Its clones (baseline SSE, AVX2, AVX-512; one is picked per CPU) compute the same bits: each
  target is built alone with setup.py's flags (-ffp-contract=off: no fused multiply-add) and
  answers bit for bit as the package's library, for every cell.
- native.py checks a library's ABI version and weight struct size before any call: a library
  of another layout or an old build is refused with the reason, never called.
- An AddressSanitizer + UndefinedBehaviorSanitizer build answers the parity cases (every cell,
  odd sizes, padding, extreme thresholds) as the dense graph does, without a report, in a
  subprocess with libasan preloaded; the same build does report a buffer one float short, so
  the sanitizer is known to be on. Skipped, saying why, where the compiler has no sanitizers.
"""

import ast
import ctypes
import logging
import os
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

pytest.importorskip("torch")


from export.model import CELLS
from export.onnx_export import build_model
from sarnn_serve import native
from sarnn_serve.engine import NATIVE
from sarnn_serve.model_routing import make_routers
from sarnn_serve.native import NativeKernel, NativeKernelError, load_library
from sarnn_serve.onnx_initializers import read_initializers
from sarnn_serve.registry import Registry, load_model
from sarnn_serve.settings import DEFAULT_MODEL_DIR, Settings
from tests.tiny_models import build_tiny_sarnn

pytestmark = pytest.mark.train  # tiny models built with torch (the training extra)
ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "sarnn_serve" / "csrc" / "step_kernel.c"
FEATURES = 3
# each target alone, and the CPU flags it needs (/proc/cpuinfo names)
TARGETS = {
    "x86-64": set(),
    "x86-64-v3": {"avx2", "fma", "bmi2"},
    "x86-64-v4": {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"},
}
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]


def compile_flags() -> list[str]:
    """setup.py's extra_compile_args for the kernel, read from the file (not re-typed here)."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "extra_compile_args":
            return ast.literal_eval(node.value)
    raise AssertionError("setup.py names no extra_compile_args")


def compiler() -> str:
    found = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if found is None:
        pytest.skip("no C compiler")
    return found


def build(out: Path, *flags: str, source: Path = SOURCE) -> Path:
    """A shared library of `source` at `out`, with setup.py's flags and `flags`."""
    cmd = [compiler(), "-shared", "-fPIC", *compile_flags(), *flags, str(source), "-o", str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return out


def cpu_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


@cache
def tiny(cell: str, hidden: int, energy: bool = False, accumulate: bool = False) -> bytes:
    """A seeded SA-RNN's dense chunk graph (its gates mixed: random coordinator, bias 0)."""
    model = build_tiny_sarnn(
        cell, hidden=hidden, seed=hidden, coord_energy=energy, coord_accumulate=accumulate
    )
    return build_model(model).SerializeToString()


CASES = [(cell, hidden, False, False) for cell in CELLS for hidden in (1, 5, 37)]
CASES += [("gru", 20, True, False), ("lstm", 37, True, True)]


def state_size(cell: str, hidden: int, accumulate: bool) -> int:
    return (1 + (cell == "lstm") + accumulate) * hidden


def feeds(state_size: int, batch: int = 5, steps: int = 9, seed: int = 0) -> dict:
    """Inputs with padding (huge values past each row's length) and thresholds that close or
    open every gate."""
    rng = np.random.default_rng(seed)
    x = (3 * rng.standard_normal((batch, steps, FEATURES))).astype(np.float32)
    lengths = np.array([steps, 0, 1, steps - 2, 4][:batch], np.int64)
    for i, n in enumerate(lengths):
        x[i, n:] = 1e30
    return {
        "x": x,
        "state": (0.5 * rng.standard_normal((batch, state_size))).astype(np.float32),
        "lengths": lengths,
        "threshold": np.array([0.5, 0.001, 0.999, 0.3, 0.7][:batch], np.float32),
    }


def write_cases(directory: Path) -> list[Path]:
    """Each case's graph and inputs, with the dense graph's answers (onnxruntime) beside."""
    paths = []
    for cell, hidden, energy, accumulate in CASES:
        name = f"{cell}-{hidden}{'-energy' if energy else ''}{'-accumulate' if accumulate else ''}"
        graph = directory / f"{name}.onnx"
        graph.write_bytes(tiny(cell, hidden, energy, accumulate))
        sess = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
        feed = feeds(state_size(cell, hidden, accumulate))
        logits, updates, state = sess.run(None, feed)
        np.savez(directory / f"{name}.npz", **feed, want_logits=logits, want_updates=updates,
                 want_state=state)  # fmt: skip
        paths.append(graph)
    return paths


# --- clones ---------------------------------------------------------------------------------


def test_setup_builds_without_fused_multiply_add() -> None:
    assert "-ffp-contract=off" in compile_flags()


@pytest.mark.parametrize(("cell", "hidden", "energy", "accumulate"), CASES)
def test_every_target_answers_the_same_bits(
    cell: str,
    hidden: int,
    energy: bool,
    accumulate: bool,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    libraries = one_target_libraries(tmp_path_factory)
    graph = tmp_path_factory.mktemp("graph") / "model.onnx"
    graph.write_bytes(tiny(cell, hidden, energy, accumulate))
    tensors = read_initializers(graph)
    feed = feeds(state_size(cell, hidden, accumulate))
    want = NativeKernel(tensors).run(**feed)  # the package's library, its CPU's clone
    for target, library in libraries.items():
        got = NativeKernel(tensors, library=library).run(**feed)
        for name, a, b in zip(("logits", "updates", "state"), got, want, strict=True):
            assert np.array_equal(a, b), f"{target}: {name} differ by {np.abs(a - b).max()}"


_LIBRARIES: dict[str, ctypes.CDLL] = {}


def one_target_libraries(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ctypes.CDLL]:
    """The kernel built once per target this CPU runs, each alone (SARNN_ONE_TARGET)."""
    if not _LIBRARIES:
        directory, cpu = tmp_path_factory.mktemp("targets"), cpu_flags()
        for target, needs in TARGETS.items():
            if needs <= cpu:
                out = build(directory / f"{target}.so", f"-march={target}", "-DSARNN_ONE_TARGET")
                _LIBRARIES[target] = load_library(out)
    return _LIBRARIES


# --- the ABI check ----------------------------------------------------------------------------

STUB = """
#include <stddef.h>
size_t sarnn_abi_version(void) { return %d; }
size_t sarnn_weights_size(void) { return %d; }
int sarnn_chunk(void) { return 0; }
"""


def test_the_package_library_matches_this_module() -> None:
    assert native.available(), native.unavailable_reason()
    lib = load_library(native.library_path())
    assert lib.sarnn_abi_version() == native.ABI_VERSION
    assert lib.sarnn_weights_size() == ctypes.sizeof(native._Weights)


@pytest.mark.parametrize(
    ("version", "size", "reason"),
    [
        (native.ABI_VERSION, 8, "8-byte weight struct"),
        (native.ABI_VERSION + 1, None, f"ABI {native.ABI_VERSION + 1}"),
    ],
    ids=["struct-size", "version"],
)
def test_a_library_of_another_layout_is_refused(
    version: int, size: int | None, reason: str, tmp_path: Path
) -> None:
    source = tmp_path / "stub.c"
    source.write_text(STUB % (version, size or ctypes.sizeof(native._Weights)))
    library = build(tmp_path / "stub.so", source=source)
    with pytest.raises(NativeKernelError, match=reason):
        load_library(library)


def test_an_old_build_without_the_version_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "old.c"
    source.write_text("int sarnn_chunk(void) { return 0; }\n")
    with pytest.raises(NativeKernelError, match="not this version's kernel"):
        load_library(build(tmp_path / "old.so", source=source))


def test_an_unusable_library_leaves_the_kernel_out_in_one_start_up_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    source = tmp_path / "stub.c"
    source.write_text(STUB % (native.ABI_VERSION + 1, ctypes.sizeof(native._Weights)))
    stub = build(tmp_path / "stub.so", source=source)
    monkeypatch.setattr(native, "library_path", lambda: stub)
    native._library.cache_clear()
    try:
        model = load_model(DEFAULT_MODEL_DIR / "watch-gru")
        assert NATIVE not in model.engine.paths
        assert model.native.startswith("unusable: ") and "reinstall" in model.native
        with caplog.at_level(logging.INFO, logger="sarnn.app"):
            make_routers(Settings(), Registry({model.name: model}))
        lines = [r for r in caplog.records if r.getMessage() == "model ready"]
        assert len(lines) == 1 and lines[0].native_kernel == model.native
    finally:
        monkeypatch.undo()
        native._library.cache_clear()


def test_a_file_that_is_no_library_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "junk.so"
    path.write_bytes(b"\x7fELF not really")
    with pytest.raises(NativeKernelError, match="cannot be loaded"):
        load_library(path)


# --- sanitizers -------------------------------------------------------------------------------

CHECK = """
import sys
from pathlib import Path
import numpy as np
from sarnn_serve.native import NativeKernel, load_library
from sarnn_serve.onnx_initializers import read_initializers

library = load_library(Path(sys.argv[1]))
graphs = [Path(p) for p in sys.argv[3:]]
if sys.argv[2] == "short-buffer":  # state_out one float short: the sanitizer must object
    kernel = NativeKernel(read_initializers(graphs[0]), library=library)
    case = np.load(graphs[0].with_suffix(".npz"))
    x, state = case["x"][:1], np.ascontiguousarray(case["state"][:1])
    lengths, taus = case["lengths"][:1], case["threshold"][:1]
    out = np.empty(state.size - 1, np.float32)
    logits = np.empty((1, x.shape[1], kernel.classes), np.float32)
    updates = np.empty((1, x.shape[1], kernel.hidden), np.bool_)
    arrays = (x, state, lengths, taus, logits, updates, out)
    library.sarnn_chunk(kernel._weights, 1, x.shape[1], *[a.ctypes.data for a in arrays])
    sys.exit(0)
for graph in graphs:
    case = np.load(graph.with_suffix(".npz"))
    kernel = NativeKernel(read_initializers(graph), library=library)
    feed = [case[k] for k in ("x", "state", "lengths", "threshold")]
    logits, updates, state = kernel.run(*feed)
    assert np.array_equal(updates, case["want_updates"].astype(bool)), graph.name
    assert np.allclose(logits, case["want_logits"], atol=1e-5, rtol=0), graph.name
    assert np.allclose(state, case["want_state"], atol=1e-5, rtol=0), graph.name
print(f"parity ok: {len(graphs)} graphs")
"""


def _sanitized(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """The kernel built with ASan and UBSan, and the environment that runs it from Python."""
    probe = subprocess.run(
        [compiler(), "-print-file-name=libasan.so"], capture_output=True, text=True
    )
    libasan = Path(probe.stdout.strip())
    if not libasan.is_absolute() or not libasan.exists():
        pytest.skip(f"{compiler()} has no AddressSanitizer runtime (libasan.so)")
    out = tmp_path / "asan.so"
    cmd = [compiler(), "-shared", "-fPIC", *compile_flags(), "-g", *SANITIZE, str(SOURCE)]
    run = subprocess.run([*cmd, "-o", str(out)], capture_output=True, text=True)
    if run.returncode != 0:
        pytest.skip(f"{compiler()} cannot build with {' '.join(SANITIZE)}: {run.stderr[-300:]}")
    env = {
        **os.environ,
        "LD_PRELOAD": str(libasan.resolve()),
        # the interpreter keeps memory to the end on purpose: leaks are not the question
        "ASAN_OPTIONS": "detect_leaks=0:halt_on_error=1:abort_on_error=0",
        "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1",
        "PYTHONPATH": str(ROOT),
    }
    return out, env


def test_the_sanitized_kernel_answers_the_parity_cases(tmp_path: Path) -> None:
    library, env = _sanitized(tmp_path)
    graphs = write_cases(tmp_path)
    run = subprocess.run(
        [sys.executable, "-c", CHECK, str(library), "parity", *map(str, graphs)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    assert f"parity ok: {len(graphs)} graphs" in run.stdout
    assert "runtime error" not in run.stderr and "Sanitizer" not in run.stderr, run.stderr[-4000:]


def test_the_sanitized_kernel_reports_a_short_buffer(tmp_path: Path) -> None:
    library, env = _sanitized(tmp_path)
    graphs = write_cases(tmp_path)
    run = subprocess.run(
        [sys.executable, "-c", CHECK, str(library), "short-buffer", str(graphs[-1])],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert run.returncode != 0
    assert "AddressSanitizer: heap-buffer-overflow" in run.stderr, run.stderr[-4000:]

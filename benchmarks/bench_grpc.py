"""One held-out recording streamed as a sequence over the Open Inference Protocol, by the official
Triton clients, unmodified: HTTP /v2 (`tritonclient.http`, one request per chunk), gRPC
ModelInfer (`tritonclient.grpc`, one call per chunk) and gRPC ModelStreamInfer (every chunk sent
on one stream, then every answer awaited). Prints chunks/s and steps/s of each.

    .venv/bin/python benchmarks/bench_grpc.py [--chunk 1 32] [--model watch-gru]

A sarnn-serve process serving the model is started on free loopback ports (dense graph, as the
tests run it); client and server share this machine's cores.
"""

import argparse
import os
import queue
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server(model: str) -> Iterator[tuple[str, str]]:
    """sarnn-serve with only `model`; its HTTP and gRPC addresses."""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / model).symlink_to(ROOT / "models" / model, target_is_directory=True)
        http, grpc = free_port(), free_port()
        env = {**os.environ, "SARNN_MODEL_DIR": tmp, "SARNN_PORT": str(http)}
        env |= {"SARNN_GRPC_PORT": str(grpc), "SARNN_ENGINE_PATH": "dense"}
        env |= {"SARNN_LOG_LEVEL": "warning"}
        proc = subprocess.Popen([sys.executable, "-m", "sarnn_serve.cli", "serve"], env=env)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"http://127.0.0.1:{http}/readyz", timeout=1).is_success:
                        break
                except httpx.TransportError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("sarnn-serve did not start")
                time.sleep(0.2)
            yield f"127.0.0.1:{http}", f"127.0.0.1:{grpc}"
        finally:
            proc.terminate()
            proc.wait(10)


def request_args(chunks: list[np.ndarray], i: int, module) -> tuple[list, dict]:
    x = module.InferInput("x", [1, *chunks[i].shape], "FP32")
    x.set_data_from_numpy(chunks[i][None])
    flags = {"sequence_start": i == 0, "sequence_end": i == len(chunks) - 1}
    return [x], {"request_id": str(i), **flags}


def http_unary(address: str, model: str, chunks: list[np.ndarray], sequence: int) -> None:
    with thttp.InferenceServerClient(address) as client:
        for i in range(len(chunks)):
            inputs, kwargs = request_args(chunks, i, thttp)
            client.infer(model, inputs, sequence_id=sequence, **kwargs)


def grpc_unary(address: str, model: str, chunks: list[np.ndarray], sequence: int) -> None:
    with tgrpc.InferenceServerClient(address) as client:
        for i in range(len(chunks)):
            inputs, kwargs = request_args(chunks, i, tgrpc)
            client.infer(model, inputs, sequence_id=sequence, **kwargs)


def grpc_stream(address: str, model: str, chunks: list[np.ndarray], sequence: int) -> None:
    answers: queue.Queue = queue.Queue()
    with tgrpc.InferenceServerClient(address) as client:
        client.start_stream(lambda result, error: answers.put(error))
        for i in range(len(chunks)):
            inputs, kwargs = request_args(chunks, i, tgrpc)
            client.async_stream_infer(model, inputs, sequence_id=sequence, **kwargs)
        errors = [answers.get(timeout=60) for _ in chunks]
        client.stop_stream()
    if any(errors):
        raise SystemExit(f"stream error: {next(e for e in errors if e)}")


TRANSPORTS: dict[str, tuple[int, Callable]] = {
    "http /v2 infer": (0, http_unary),
    "grpc ModelInfer": (1, grpc_unary),
    "grpc ModelStreamInfer": (1, grpc_stream),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunk", type=int, nargs="+", default=[1, 32], help="steps per chunk")
    parser.add_argument("--model", default="watch-gru")
    args = parser.parse_args()
    from export.data import load_watch

    recording = load_watch().test[0].x
    print(f"recording: {len(recording)} steps (held-out subject); model {args.model}")
    with server(args.model) as addresses:
        for steps in args.chunk:
            chunks = np.array_split(recording, -(-len(recording) // steps))
            for sequence, (name, (which, run)) in enumerate(TRANSPORTS.items(), start=1):
                run(addresses[which], args.model, chunks[:20], 1000 + sequence)  # warm up
                started = time.perf_counter()
                run(addresses[which], args.model, chunks, sequence)
                seconds = time.perf_counter() - started
                print(
                    f"chunk {steps:3d}  {name:22s} {len(chunks) / seconds:8.0f} chunks/s "
                    f"{len(recording) / seconds:9.0f} steps/s"
                )


if __name__ == "__main__":
    main()

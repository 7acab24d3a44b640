"""Generate the gRPC modules of sarnn_serve/api/grpc_predict_v2.proto (run by `make protos`).

The generated *_pb2.py, *_pb2.pyi and *_pb2_grpc.py are checked in, so the server needs only
grpcio and protobuf at run time; generating them needs grpcio-tools (the dev extra).

One change to protoc's output: the messages are built in a descriptor pool of their own instead
of protobuf's default pool. Their names (`inference.ModelInferRequest`, ...) are the protocol's
and so are those of every other v2 client's generated code (tritonclient.grpc, kserve): in the
default pool, importing both into one process fails with "duplicate symbol".
"""

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROTO = Path("sarnn_serve/api/grpc_predict_v2.proto")
GENERATED = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
DEFAULT_POOL = "_descriptor_pool.Default().AddSerializedFile("
OWN_POOL = (
    "# sarnn-serve (scripts/gen_protos.py): a pool of its own, beside other v2 clients' modules\n"
    "DESCRIPTOR = _descriptor_pool.DescriptorPool().AddSerializedFile("
)


def generate(out: Path) -> list[Path]:
    """Write the generated modules under `out` (as `out`/sarnn_serve/api/...); their paths."""
    from grpc_tools import protoc

    out.mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{REPO}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        str(REPO / PROTO),
    ]
    if protoc.main(args) != 0:
        raise SystemExit(f"protoc failed on {PROTO}")
    stem = out / PROTO.parent / PROTO.stem
    messages = stem.with_name(f"{PROTO.stem}_pb2.py")
    text = messages.read_text()
    if text.count(DEFAULT_POOL) != 1:
        raise SystemExit(f"{messages}: expected one {DEFAULT_POOL!r}; protoc's output changed")
    messages.write_text(text.replace(f"DESCRIPTOR = {DEFAULT_POOL}", OWN_POOL))
    return [stem.with_name(f"{PROTO.stem}{suffix}") for suffix in GENERATED]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=REPO, help="root to write under (default: the repository)"
    )
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

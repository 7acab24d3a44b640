"""Command line of the offline side: `python -m export {train,onnx,verify,pareto,tiny-fixture}`."""

from export.cli import main

if __name__ == "__main__":
    raise SystemExit(main())

"""The test suite in a runtime install: the wheel of `python -m build` installed with
`pip --no-index` in a fresh venv without a C compiler or torch (tests/runtime_venv.py), with
the `redis` and `test` extras (a test runner and the clients the API suites drive), running
every test not marked `train` against the installed package (a copy of the repository without
sarnn_serve/ and export/).

    .venv/bin/python scripts/runtime_suite.py [-k EXPR] [--keep DIR]

Prints pytest's summary and the wall time of the run (not of the build and install).
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.runtime_venv import SUITE_EXTRAS, build_wheelhouse, make_venv, suite_copy

# suites about the source tree itself, which the copy beside the install leaves out
SOURCE_TREE_SUITES = ("test_docs_site.py",)  # the site's links name files under sarnn_serve/


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-k", dest="keyword", help="pytest -k expression (a part of the suite)")
    p.add_argument("--keep", type=Path, help="build in this directory and leave it there")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sarnn-runtime-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        house, wheel = build_wheelhouse(work, SUITE_EXTRAS)
        venv, env = make_venv(work, house, SUITE_EXTRAS)
        root = suite_copy(work)
        cmd = [str(venv / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider"]
        cmd += ["-m", "not train"] + (["-k", args.keyword] if args.keyword else [])
        cmd += [f"--ignore=tests/{name}" for name in SOURCE_TREE_SUITES]
        print(f"{wheel.name} in {venv}; running {' '.join(cmd[1:])} in {root}", flush=True)
        started = time.monotonic()
        # the tests start redis-server, chromium and shell examples: the system's PATH after the
        # venv's (the install itself ran without a compiler on PATH)
        env = {**env, "PATH": f"{env['PATH']}:{os.environ['PATH']}"}
        done = subprocess.run(cmd, cwd=root, env=env)
        print(f"runtime suite: {time.monotonic() - started:.0f} s wall time", flush=True)
    return done.returncode


if __name__ == "__main__":
    raise SystemExit(main())

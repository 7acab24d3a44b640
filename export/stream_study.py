"""The stream study: on information-sparse streams, does the coordinator learn what to skip?

Arms, all trained on watch streams (export/streams.py, variant "rest") with the same budget of
batches, 5 seeds each:

    sa-energy   SA-RNN H=128, coordinator with energy features, target update rate 0.2
    sa-plain    SA-RNN H=128, the coordinator of rounds 1-2 (x_t and its own h), rate 0.2
    random      GRU H=128 whose neurons update at random with probability 0.2 (trained so)
    dense-62    dense GRU H=62: the width whose step costs at least the SA-RNN's mean step
    dense-90    dense GRU H=90: a dense model costing half again as much

The target rate 0.2 is set by the product goal (mean multiply-adds at most a quarter of a dense
GRU-128's), not searched; whether the coordinator gets energy features is chosen on validation
(the report prints the choice). `run` trains what is missing (resumable: a finished run is
skipped; each run logs to <root>/<arm>-s<seed>.log); `report` (export/stream_report.py) reads the
results.
"""

import argparse
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

COMMON = [
    "--dataset", "watch", "--streams", "rest", "--epochs", "12", "--batches-per-epoch", "40",
    "--window", "512", "--lam", "2", "--quiet",
]  # fmt: skip
ARMS: dict[str, list[str]] = {
    "sa-energy": ["--hidden", "128", "--coord-energy", "--target-rate", "0.2"],
    "random": ["--hidden", "128", "--random-mask", "0.2"],
    "dense-62": ["--hidden", "62", "--dense"],
    "sa-plain": ["--hidden", "128", "--target-rate", "0.2"],
    "dense-90": ["--hidden", "90", "--dense"],
}
SEEDS = (0, 1, 2, 3, 4)


def run_one(root: Path, arm: str, seed: int) -> str:
    """Train one arm at one seed unless its metrics exist; a line saying what happened."""
    out = root / f"{arm}-s{seed}"
    if (out / "metrics.json").exists():
        return f"{out.name}: done before"
    command = [sys.executable, "-m", "export", "train", *COMMON, *ARMS[arm]]
    command += ["--seed", str(seed), "--out", str(out)]
    started = time.perf_counter()
    with (root / f"{out.name}.log").open("w") as log:
        code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT)
    took = time.perf_counter() - started
    return f"{out.name}: exit {code} in {took:.0f} s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--root", type=Path, default=Path("runs/stream-study"))
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    args.root.mkdir(parents=True, exist_ok=True)
    jobs = [(arm, seed) for seed in args.seeds for arm in args.arms]
    with ThreadPoolExecutor(args.workers) as pool:
        for line in pool.map(lambda job: run_one(args.root, *job), jobs):
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

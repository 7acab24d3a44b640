"""The stream study: on information-sparse streams, does the coordinator learn what to skip?

Arms, all trained on watch streams (export/streams.py, variant "rest", state carried across
training windows; with `--varied-rest`, idle periods of varied rest in training) with the same
budget of batches, 5 seeds each:

    sa-motion   SA-RNN H=128 with an accumulating coordinator that weighs motion features
                |x_t - xbar| / std (xbar the input's moving average, carried in the state)
                instead of energy features, meant to be trained on varied rest (`--varied-rest`)
    sa-motion-energy
                sa-motion with energy features too
    sa-knob     sa-motion-energy trained over thresholds drawn per row in 0.05-0.95
                (`--threshold-range`), so the served threshold moves its rate over a wide range
    sa-gated    sa-motion-energy with one gate shared by all neurons (rest or motion) and a
                constant learned rate per neuron (`--coord-shared-gate`; offline only)
    sa-rest-periodic
                sa-gated with every neuron's rate fixed at twice --random-rate (`--fixed-rate`):
                the periodic mask, paused by a learned rest gate (about half the steps rest)
    sa-accumulate
                SA-RNN H=128 whose coordinator asks for a rate per neuron and step,
                p = sigmoid(a), accumulated until it reaches the neuron's level (export.model):
                updates evenly spaced at the rate asked for; energy features, budget and
                learning rates as sa-energy's
    sa-energy   SA-RNN H=128, coordinator with energy features, budget lambda * mean(u), the
                coordinator's learning rate --coord-lr-scale times the cell's
    sa-plain    SA-RNN H=128, the coordinator of rounds 1-2 (x_t and its own h), same budget
    random      GRU H=128 whose neurons update at random with probability --random-rate
                (trained so): the SA-RNN's mean update rate
    periodic    GRU H=128 whose neurons update every 1 / --random-rate steps, each on its own
                phase (an accumulating coordinator frozen at that rate, trained so): the even
                spacing of sa-accumulate without its choice of when; servable as it is
    dense-40    dense GRU H=40: the narrowest whose step costs at least an SA-RNN's at 5% updates
    dense-62    dense GRU H=62: the width whose step costs what an SA-RNN at 20% updates does
    dense-96    dense GRU H=96: the width whose step costs what an SA-RNN at 55% updates does

The SA-RNNs and the masks are H = 128 wide unless `--hidden` says otherwise; the dense arms keep
their widths. `--val-groups` and `--test-groups` hold out other subjects (a cross-subject fold);
the default is the data set's split (watch: validation 7-8, test 9-10).

The budget is the plain penalty lambda * mean(u), not a target rate: a target |r - R| pushes
every gate open again once the rate falls below R, idle ones included, so nothing rewards moving
updates from idle to active steps (round 2 of the study: idle 18%, active 23%). lambda is chosen
on validation (`--lam`: among the values whose mean multiply-adds stay within a quarter of a
dense GRU-128's, the product goal, the most accurate; a tie goes to the cheaper); whether the
coordinator gets energy features is chosen on validation too (the report prints the choice).

The coordinator learns only through the gate's surrogate gradient, which is nonzero near the cut
alone; at the cell's learning rate its weights hardly move in a run of this length (round 2 of
the study: idle 48%, active 64% updates). At ten times the rate (`--coord-lr-scale 10`) the
gates at rest shut (round 3). `run` trains what is
missing (resumable: a finished run is skipped; each run logs one JSON line per epoch to
<root>/<arm>-s<seed>.log); `python -m export.stream_report` reads the results.
"""

import argparse
import fcntl
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

COMMON = [
    "--dataset", "watch", "--streams", "rest", "--batches-per-epoch", "40", "--window", "512",
    "--quiet",
]  # fmt: skip
EPOCHS = 12
ARM_NAMES = (
    "sa-motion", "sa-motion-energy", "sa-knob", "sa-gated", "sa-rest-periodic", "sa-accumulate",
    "sa-energy", "random", "periodic", "dense-40", "dense-62", "dense-96", "sa-plain",
)  # fmt: skip
SEEDS = (0, 1, 2, 3, 4)
LAM = 4.0
RANDOM_RATE = 0.047
COORD_LR_SCALE = 10.0
HIDDEN = 128


def arm_flags(
    arm: str, lam: float, random_rate: float, coord_lr_scale: float, hidden: int = HIDDEN
) -> list[str]:
    """The training flags of one arm (beside COMMON); `hidden` is the width of the SA-RNNs and
    the masks (the dense arms keep theirs)."""
    width = ["--hidden", str(hidden)]
    coordinator = [*width, "--lam", f"{lam:g}", "--coord-lr-scale", f"{coord_lr_scale:g}"]
    motion_energy = ["--coord-energy", "--coord-accumulate", "--coord-delta", *coordinator]
    return {
        "sa-motion": ["--coord-accumulate", "--coord-delta", *coordinator],
        "sa-motion-energy": motion_energy,
        "sa-knob": [*motion_energy, "--threshold-range", "0.05", "0.95"],
        "sa-gated": [*motion_energy, "--coord-shared-gate"],
        "sa-rest-periodic": [
            *motion_energy,
            "--coord-shared-gate",
            "--fixed-rate",
            f"{2 * random_rate:g}",
        ],
        "sa-accumulate": ["--coord-energy", "--coord-accumulate", *coordinator],
        "sa-energy": ["--coord-energy", *coordinator],
        "sa-plain": coordinator,
        "random": [*width, "--random-mask", f"{random_rate:g}"],
        "periodic": [*width, "--coord-accumulate", "--fixed-rate", f"{random_rate:g}"],
        "dense-40": ["--hidden", "40", "--dense"],
        "dense-62": ["--hidden", "62", "--dense"],
        "dense-96": ["--hidden", "96", "--dense"],
    }[arm]


def split_flags(val_groups: str | None, test_groups: str | None) -> list[str]:
    """The training flags that hold out `val_groups` and `test_groups` (e.g. "3,4"); none for
    the data set's own split."""
    flags = []
    for option, groups in (("--val-groups", val_groups), ("--test-groups", test_groups)):
        if groups:
            flags += [option, groups]
    return flags


def run_one(root: Path, arm: str, seed: int, flags: list[str]) -> str:
    """Train one arm at one seed unless its metrics exist or another driver is training it (it
    holds a lock on the run's log); a line saying what happened."""
    out = root / f"{arm}-s{seed}"
    if (out / "metrics.json").exists():
        return f"{out.name}: done before"
    command = [sys.executable, "-m", "export", "train", *COMMON, *flags]
    command += ["--seed", str(seed), "--out", str(out)]
    started = time.perf_counter()
    with (root / f"{out.name}.log").open("a") as log:
        try:
            fcntl.flock(log, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return f"{out.name}: being trained by another driver"
        if (out / "metrics.json").exists():
            return f"{out.name}: done meanwhile"
        log.truncate(0)
        code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT)
    took = time.perf_counter() - started
    return f"{out.name}: exit {code} in {took:.0f} s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--root", type=Path, default=Path("runs/stream-study-r4"))
    parser.add_argument("--arms", nargs="+", default=list(ARM_NAMES), choices=ARM_NAMES)
    parser.add_argument("--lam", type=float, default=LAM, help="budget weight of the SA-RNNs")
    parser.add_argument(
        "--random-rate", type=float, default=RANDOM_RATE, help="update rate of the random arm"
    )
    parser.add_argument(
        "--coord-lr-scale",
        type=float,
        default=COORD_LR_SCALE,
        help="the SA-RNNs' coordinator learns at this multiple of the learning rate",
    )
    parser.add_argument(
        "--varied-rest", action="store_true", help="every arm trains on varied rest"
    )
    parser.add_argument(
        "--epochs", type=int, default=EPOCHS, help="epochs of 40 batches, the same for every arm"
    )
    parser.add_argument(
        "--hidden", type=int, default=HIDDEN, help="width of the SA-RNNs and the masks"
    )
    parser.add_argument(
        "--val-groups", help="validation subjects, e.g. 3,4 (default: the data set's split)"
    )
    parser.add_argument("--test-groups", help="test subjects, e.g. 1,2 (with --val-groups)")
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    split = split_flags(args.val_groups, args.test_groups)
    args.root.mkdir(parents=True, exist_ok=True)
    jobs = [(arm, seed) for seed in args.seeds for arm in args.arms]
    with ThreadPoolExecutor(args.workers) as pool:
        for line in pool.map(
            lambda job: run_one(
                args.root,
                *job,
                arm_flags(job[0], args.lam, args.random_rate, args.coord_lr_scale, args.hidden)
                + ["--epochs", str(args.epochs)]
                + (["--varied-rest"] if args.varied_rest else [])
                + split,
            ),
            jobs,
        ):
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

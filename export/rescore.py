"""Trained stream-study runs scored again on streams with other idle lengths.

A study's arms are trained and scored on streams whose idle periods last 5-90 s (about half the
steps). Whether selection pays depends on how much of a stream is rest: a fixed mask spends its
updates at rest as often as in motion, an SA-RNN whose gates shut at rest spends them in motion.
This takes every `<from>/<arm>-s<seed>/checkpoint.pt`, not retrained, and scores it at its
threshold on validation and test streams built from the same recordings, rest model and seeds
with idle periods log-uniform in `--idle-seconds` (export/streams.py). Each run's figures go to
`<to>/<arm>-s<seed>/metrics.json` in the shape of a training run's (config, validation, test,
streams, macs_per_step), with `config["idle_min_s"]` and `config["idle_max_s"]` the new lengths
and `config["rescored_from"]` naming the checkpoint, so that
`python -m export.stream_report --root <to>` reads them as a study.
"""

import argparse
import json
from dataclasses import asdict, replace
from pathlib import Path

import torch

from export.eval_skipping import recipe_of
from export.model import load_checkpoint
from export.train import (
    evaluate_streams,
    load_training_data,
    macs_per_step,
    stream_parts,
    streams_record,
)

PARTS = {"val": "validation", "test": "test"}


def rescore(checkpoint: Path, idle_seconds: tuple[float, float], threshold: float) -> dict:
    """The metrics of the trained run at `checkpoint` on streams with idle lengths
    `idle_seconds` (min, max), at `threshold`."""
    model, blob = load_checkpoint(str(checkpoint))
    cfg = replace(recipe_of(blob), idle_min_s=idle_seconds[0], idle_max_s=idle_seconds[1])
    data = load_training_data(cfg)
    parts = stream_parts(cfg, data)
    run: dict = {
        "config": asdict(cfg) | {"rescored_from": str(checkpoint)},
        "kept": "trained checkpoint, scored again on other streams",
        "threshold": threshold,
    }
    for part, key in PARTS.items():
        run[key] = asdict(evaluate_streams(model, parts[part], threshold))
    run["streams"] = streams_record(parts)
    run["macs_per_step"] = macs_per_step(
        cfg,
        model,
        data.n_features,
        run["validation"]["update_rate"],
        run["test"]["update_rate"],
    )
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--from", dest="source", type=Path, required=True, help="a study's root")
    parser.add_argument("--to", type=Path, required=True, help="the rescored study's root")
    parser.add_argument("--arms", nargs="+", required=True, help="e.g. sa-motion-energy dense-96")
    parser.add_argument(
        "--idle-seconds",
        nargs=2,
        type=float,
        required=True,
        metavar=("MIN", "MAX"),
        help="idle periods log-uniform in [MIN, MAX] seconds",
    )
    parser.add_argument("--threshold", type=float, default=0.5)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    for arm in args.arms:
        checkpoints = sorted(args.source.glob(f"{arm}-s*/checkpoint.pt"))
        if not checkpoints:
            parser.error(f"no {arm}-s<seed>/checkpoint.pt under {args.source}")
        for checkpoint in checkpoints:
            out = args.to / checkpoint.parent.name
            if (out / "metrics.json").exists():
                print(f"{out.name}: done before", flush=True)
                continue
            run = rescore(checkpoint, tuple(args.idle_seconds), args.threshold)
            out.mkdir(parents=True, exist_ok=True)
            (out / "metrics.json").write_text(json.dumps(run, indent=2))
            val = run["validation"]
            print(
                f"{out.name}: val {100 * val['streaming_accuracy']:.1f}% at "
                f"{100 * val['update_rate']:.2f}% updates "
                f"(idle {100 * val['idle_update_rate']:.2f}%, "
                f"active {100 * val['active_update_rate']:.2f}%)",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Argument parsing for the offline commands; each command lives in its own module."""

import argparse
import sys
from dataclasses import fields
from pathlib import Path


def _train(args: argparse.Namespace) -> int:
    from export.train import TrainConfig, train

    names = {f.name for f in fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in names})
    metrics = train(cfg, Path(args.out), progress=not args.quiet)
    test = metrics["test"]
    print(
        f"streaming accuracy {test['streaming_accuracy']:.3f}  "
        f"last-step accuracy {test['last_step_accuracy']:.3f}  "
        f"update rate {test['update_rate']:.3f}  -> {args.out}"
    )
    return 0


def _onnx(args: argparse.Namespace) -> int:
    from export.onnx_export import export_model

    export_model(Path(args.checkpoint), Path(args.out), name=args.name, force=args.force)
    return 0


def _verify(args: argparse.Namespace) -> int:
    from export.verify import verify

    report = verify(Path(args.checkpoint), Path(args.model), random_steps=args.random_steps)
    print(report.summary())
    return 0 if report.ok else 1


def build_parser() -> argparse.ArgumentParser:
    from export.data import DATASETS
    from export.train import TrainConfig

    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train an SA-RNN (or a dense baseline with --dense)")
    d = TrainConfig()
    t.add_argument("--dataset", default=d.dataset, choices=DATASETS)
    t.add_argument("--cell", default=d.cell, choices=["gru", "lstm", "rnn"])
    t.add_argument("--hidden", type=int, default=d.hidden)
    t.add_argument("--lam", type=float, default=d.lam, help="budget loss weight on mean(u)")
    t.add_argument(
        "--lam-warmup-epochs",
        type=int,
        default=d.lam_warmup_epochs,
        help="ramp lambda up from 0 over this many epochs",
    )
    t.add_argument("--dense", action="store_true", help="train the plain cell, no coordinator")
    t.add_argument("--epochs", type=int, default=d.epochs)
    t.add_argument("--batches-per-epoch", type=int, default=d.batches_per_epoch)
    t.add_argument("--batch-size", type=int, default=d.batch_size)
    t.add_argument("--window", type=int, default=d.window)
    t.add_argument("--seed", type=int, default=d.seed)
    t.add_argument("--threads", type=int, default=d.threads)
    t.add_argument("--quiet", action="store_true")
    t.add_argument("--out", required=True)
    t.set_defaults(func=_train)
    o = sub.add_parser("onnx", help="export a checkpoint to an ONNX chunk graph + model card")
    o.add_argument("--checkpoint", required=True)
    o.add_argument("--out", required=True, help="model directory to create")
    o.add_argument("--name", default=None, help="model name (default: the directory name)")
    o.add_argument("--force", action="store_true", help="replace an existing model directory")
    o.set_defaults(func=_onnx)
    v = sub.add_parser("verify", help="check an exported model against its checkpoint")
    v.add_argument("--checkpoint", required=True)
    v.add_argument("--model", required=True, help="model directory holding model.onnx")
    v.add_argument("--random-steps", type=int, default=10_000)
    v.set_defaults(func=_verify)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

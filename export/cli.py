"""Argument parsing for the offline commands; each command lives in its own module."""

import argparse
import sys
from dataclasses import fields
from pathlib import Path


def _names(text: str) -> tuple[str, ...]:
    """A comma-separated list of names."""
    return tuple(name.strip() for name in text.split(",") if name.strip())


def _train(args: argparse.Namespace) -> int:
    from export.train import TrainConfig, train

    names = {f.name for f in fields(TrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in names}
    values["idle_min_s"], values["idle_max_s"] = args.idle_seconds
    cfg = TrainConfig(**values)
    metrics = train(cfg, Path(args.out), progress=not args.quiet)
    ev = metrics["validation"]
    print(
        f"validation  streaming accuracy {ev['streaming_accuracy']:.3f}  "
        f"last-step accuracy {ev['last_step_accuracy']:.3f}  "
        f"update rate {ev['update_rate']:.3f}"
    )
    print(f"test figures: {Path(args.out) / 'metrics.json'} (read them once a recipe is chosen)")
    target = metrics["budget"]["target_rate"]
    aim = f", target update rate {target:g}" if target is not None else ""
    print(f"final slope {metrics['alpha']:g}{aim}")
    print(f"-> {args.out}")
    return 0


def _onnx(args: argparse.Namespace) -> int:
    from export.destination import model_dir
    from export.onnx_export import export_model

    export_model(
        Path(args.checkpoint),
        model_dir(args.out, Path(args.checkpoint), args.ship),
        name=args.name,
        force=args.force,
        notes=args.note,
        seed_records=[Path(p) for p in args.seed_records],
        recipe_chosen_on=args.recipe_chosen_on,
    )
    return 0


def _streams(args: argparse.Namespace) -> int:
    from export.streams import (
        RestModel,
        StreamSet,
        StreamSpec,
        build_streams,
        save_streams,
        write_csvs,
    )
    from export.train import STREAM_SEEDS, TrainConfig, load_training_data

    cfg = TrainConfig(
        dataset=args.dataset,
        data=args.data,
        label_column=args.label_column,
        group_column=args.group_column,
        val_groups=args.val_groups,
        test_groups=args.test_groups,
        split_seed=args.split_seed,
        sample_rate=args.sample_rate,
    )
    data = load_training_data(cfg)
    rate = data.sample_rate_hz or args.sample_rate
    if not rate:
        raise ValueError("--sample-rate is needed: the recordings do not say how fast they are")
    spec = StreamSpec(
        args.variant,
        *args.idle_seconds,
        bouts_per_stream=args.bouts_per_stream,
        gravity=args.gravity if args.gravity is not None else StreamSpec.gravity,
        rest_zero=args.rest_zero if args.rest_zero is not None else StreamSpec.rest_zero,
    )
    rest = RestModel.measure(data.train, data.feature_names, spec, rate)
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"rest model (measured on the training part): {rest.describe(data.feature_names)}")
    for part in ("train", "val", "test"):
        seed = STREAM_SEEDS.get(part, 0) if args.seed is None else args.seed
        built = StreamSet(
            build_streams(getattr(data, part), rest, spec, rate, seed),
            spec,
            rest.describe(data.feature_names),
            seed,
        )
        save_streams(args.out / f"{part}.npz", built, data.feature_names)
        if args.csv:
            write_csvs(args.out / part, built, data.feature_names, data.class_labels)
        steps = sum(len(s.x) for s in built.streams)
        print(
            f"{part}: {len(built.streams)} streams, {steps} steps, "
            f"{built.idle_share:.1%} idle -> {args.out / part}.npz"
        )
    return 0


def _verify(args: argparse.Namespace) -> int:
    from export.verify import verify

    report = verify(Path(args.checkpoint), Path(args.model), random_steps=args.random_steps)
    print(report.summary())
    return 0 if report.ok else 1


def _curve(args: argparse.Namespace) -> int:
    from export.onnx_export import remeasure_curve

    card = remeasure_curve(Path(args.model))
    for point in card.threshold_curve or []:
        print(
            f"threshold {point.threshold:g}: {100 * point.update_rate:.1f}% updates, "
            f"{100 * point.val_streaming_accuracy:.1f}% validation accuracy"
        )
    return 0


def _fixture(args: argparse.Namespace) -> int:
    from export.fixture import make_fixture

    make_fixture(Path(args.out))
    return 0


def _pareto(args: argparse.Namespace) -> int:
    from export.pareto import Grid, parse_parts, run
    from export.pareto_report import report

    grid = Grid(
        hidden=tuple(args.hidden),
        target_rates=tuple(args.target_rates),
        seeds=tuple(args.seeds),
        cell=args.cell,
        dataset=args.dataset,
        lam=args.lam,
        epochs=args.epochs,
        batches_per_epoch=args.batches_per_epoch,
        batch_size=args.batch_size,
        window=args.window,
        root=Path(args.root),
        results=Path(args.results),
        max_macs=args.max_macs,
    )
    if not args.report_only:
        run(grid, parse_parts(args.parts))
    print(report(grid.results, Path(args.out or grid.results.parent)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from export.data import DATASETS
    from export.model import BUDGETS, GATE_GRADS
    from export.streams import VARIANTS
    from export.train import TrainConfig

    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser(
        "train",
        help="train an SA-RNN, or a baseline: --dense, --skip-every K or --random-mask R",
    )
    d = TrainConfig()
    source = t.add_mutually_exclusive_group()
    source.add_argument("--dataset", default=d.dataset, choices=DATASETS)
    source.add_argument(
        "--data", help="your own recordings: a folder of CSV files (one per recording) or a .npz"
    )
    t.add_argument("--label-column", default=d.label_column, help="CSV column of the class")
    t.add_argument(
        "--ignore-columns", type=_names, default=d.ignore_columns, help="CSV columns to skip: a,b"
    )
    t.add_argument("--group-column", help="CSV column of the group to split by (e.g. subject)")
    t.add_argument(
        "--val-groups", type=_names, default=d.val_groups, help="validation groups (subjects): a,b"
    )
    t.add_argument(
        "--test-groups", type=_names, default=d.test_groups, help="test groups (subjects): a,b"
    )
    t.add_argument(
        "--val-fraction",
        type=float,
        default=d.val_fraction,
        help="share of groups (basicmotions: of each class) to validate on, if none are named",
    )
    t.add_argument(
        "--test-fraction",
        type=float,
        default=d.test_fraction,
        help="share of groups to test on, if none are named",
    )
    t.add_argument(
        "--split-seed",
        type=int,
        default=d.split_seed,
        help="seed of the drawn groups; the next seeds are tried until every class of "
        "validation and test is also in training",
    )
    t.add_argument("--sample-rate", type=float, help="samples per second of your recordings")
    t.add_argument(
        "--allow-pickle",
        action="store_true",
        help="let a .npz hold object arrays (unpickling can run code: trusted files only)",
    )
    t.add_argument("--cell", default=d.cell, choices=["gru", "lstm", "rnn"])
    t.add_argument("--hidden", type=int, default=d.hidden)
    t.add_argument("--lam", type=float, default=d.lam, help="budget loss weight")
    t.add_argument(
        "--lam-warmup-epochs",
        type=int,
        default=d.lam_warmup_epochs,
        help="ramp lambda up from 0 over this many epochs (not with --target-rate)",
    )
    t.add_argument(
        "--budget",
        default=d.budget,
        choices=BUDGETS,
        help="mean: lambda x mean(u); sum: lambda x sum over steps, mean over batch and neurons",
    )
    t.add_argument(
        "--target-rate",
        type=float,
        help="update rate to reach (0..1): coordinator biases start there and the budget "
        "becomes lambda x |rate - target|",
    )
    t.add_argument(
        "--gate-grad",
        default=d.gate_grad,
        choices=GATE_GRADS,
        help="gate gradient: smooth (sigmoid surrogate) or band (the hard sigmoid's own)",
    )
    t.add_argument(
        "--threshold-range",
        type=float,
        nargs=2,
        metavar=("LO", "HI"),
        help="train each row at a threshold drawn uniformly in [LO, HI] (default: 0.5 only), "
        "so that lowering the serve-time threshold buys accuracy",
    )
    t.add_argument(
        "--target-slope",
        type=float,
        metavar="K",
        help="with --target-rate and --threshold-range: each row's target update rate is "
        "target-rate + K (0.5 - tau), so the serve-time threshold moves the update rate",
    )
    t.add_argument(
        "--final-slope",
        type=float,
        default=d.final_slope,
        metavar="A",
        help="the hard sigmoid's slope at the end of training (annealed from 1; default 5, the "
        "paper's). The served cut is (2 tau - 1) / A, so a lower A lets the threshold range "
        "move the cut further: a wider compute knob",
    )
    baseline = t.add_mutually_exclusive_group()
    baseline.add_argument(
        "--dense",
        action="store_true",
        help="baseline: the plain cell, every neuron at every step (exportable and servable)",
    )
    baseline.add_argument(
        "--skip-every",
        type=int,
        default=d.skip_every,
        metavar="K",
        help="baseline: the plain cell updates every neuron at every K-th step and none between "
        "(K times fewer multiply-adds); offline only: not exportable to the chunk graph",
    )
    baseline.add_argument(
        "--random-mask",
        type=float,
        metavar="R",
        help="baseline: each neuron updates with probability R per step, independently of the "
        "input (a fixed seeded pattern at evaluation); offline only: not exportable",
    )
    t.add_argument(
        "--streams",
        choices=VARIANTS,
        help="train and evaluate on information-sparse streams (export/streams.py): bouts "
        "separated by idle periods of a sensor at rest (or, for distractor, half of them noise)",
    )
    t.add_argument(
        "--idle-seconds",
        type=float,
        nargs=2,
        metavar=("MIN", "MAX"),
        default=(d.idle_min_s, d.idle_max_s),
        help="idle periods of --streams last log-uniform in [MIN, MAX] seconds",
    )
    t.add_argument(
        "--no-calibrate",
        dest="calibrate",
        action="store_false",
        help="with --target-rate: start with the gates open (coordinator bias 1) instead of "
        "calibrated to the target, so the budget shuts the cheapest gates first",
    )
    t.add_argument(
        "--coord-energy",
        action="store_true",
        help="energy features for the coordinator: W_e (x * x) beside W_x x (H x F more "
        "multiply-adds per step), so a gate can tell rest from motion",
    )
    t.add_argument(
        "--coord-accumulate",
        action="store_true",
        help="an accumulating coordinator: each neuron adds the rate sigmoid(a) to an "
        "accumulator and updates when it passes the neuron's level (then takes 1 off), so "
        "its updates come evenly spaced at the rate it asks for (H more multiply-adds per "
        "step, H more numbers of state)",
    )
    t.add_argument(
        "--coord-delta",
        action="store_true",
        help="with --coord-accumulate: motion features for the coordinator, W_v |x_t - xbar| "
        "with xbar the input's moving average over about 0.4 s (H x F more multiply-adds per "
        "step, F more numbers of state: the average), so a gate can tell rest from motion "
        "wherever the sensor rests",
    )
    t.add_argument(
        "--coord-shared-gate",
        action="store_true",
        help="with --coord-delta: one gate shared by all neurons learns whether the sensor "
        "moves, and each neuron a constant rate for when it does, p = sigmoid(c) sigmoid(g) "
        "(about 2H + 6F multiply-adds per step; offline only: not exported yet)",
    )
    t.add_argument(
        "--varied-rest",
        action="store_true",
        help="with --streams: train on idle periods of varied rest (louder noise, a frozen "
        "sensor, beside the measured rest; export/streams.py); validation and test streams "
        "keep the measured rest",
    )
    t.add_argument(
        "--fixed-rate",
        type=float,
        metavar="R",
        help="with --coord-accumulate: the periodic baseline, a frozen coordinator asking for "
        "rate R at every step (each neuron updates every 1/R steps on its own phase); with "
        "--coord-shared-gate: every neuron's rate frozen at R, the gate still learning (a "
        "periodic mask the gate pauses at rest)",
    )
    t.add_argument("--epochs", type=int, default=d.epochs)
    t.add_argument("--batches-per-epoch", type=int, default=d.batches_per_epoch)
    t.add_argument("--batch-size", type=int, default=d.batch_size)
    t.add_argument("--window", type=int, default=d.window)
    t.add_argument("--lr", type=float, default=d.lr, help="peak learning rate (one-cycle)")
    t.add_argument(
        "--coord-lr-scale",
        type=float,
        default=d.coord_lr_scale,
        help="the coordinator's peak learning rate is --lr times this (it learns only through "
        "the gate's surrogate, so its gradients are small)",
    )
    t.add_argument("--seed", type=int, default=d.seed)
    t.add_argument("--threads", type=int, default=d.threads)
    t.add_argument("--quiet", action="store_true")
    t.add_argument("--out", required=True)
    t.set_defaults(func=_train)
    o = sub.add_parser(
        "onnx",
        help="export a checkpoint (an SA-RNN or a --dense baseline) to an ONNX chunk graph + card",
    )
    o.add_argument("--checkpoint", required=True)
    o.add_argument(
        "--out",
        help="model directory to create (default: exported/<the checkpoint's folder name>); "
        "not in the repository's models/ unless --ship",
    )
    o.add_argument(
        "--ship",
        action="store_true",
        help="allow --out in the repository's models/: the shipped models, served by default "
        "and copied into the image",
    )
    o.add_argument("--name", default=None, help="model name (default: the directory name)")
    o.add_argument("--force", action="store_true", help="replace an existing model directory")
    o.add_argument(
        "--note", action="append", default=[], help="a note for the model card (repeatable)"
    )
    o.add_argument(
        "--seed-records",
        nargs="+",
        default=[],
        metavar="RECORD",
        help="result records (export pareto) or metrics.json files of this recipe at several "
        "seeds, this checkpoint's among them: the card gives their mean and spread",
    )
    o.add_argument(
        "--recipe-chosen-on",
        help="which data chose the recipe, for the card (e.g. 'validation subjects 7-8')",
    )
    o.set_defaults(func=_onnx)
    _add_pareto(sub)
    _add_streams(sub)
    v = sub.add_parser("verify", help="check an exported model against its checkpoint")
    v.add_argument("--checkpoint", required=True)
    v.add_argument("--model", required=True, help="model directory holding model.onnx")
    v.add_argument("--random-steps", type=int, default=10_000)
    v.set_defaults(func=_verify)
    c = sub.add_parser(
        "curve",
        help="measure an exported model's threshold curve again (from the checkpoint beside "
        "it) and rewrite its card; the graph is untouched",
    )
    c.add_argument("--model", required=True, help="model directory holding checkpoint.pt")
    c.set_defaults(func=_curve)
    f = sub.add_parser(
        "tiny-fixture",
        help="train and export the tests' tiny model and write their recording (tests/data)",
    )
    f.add_argument("--out", default="tests/data", help="where models/ and the CSV go")
    f.set_defaults(func=_fixture)
    return parser


def _add_streams(sub: argparse._SubParsersAction) -> None:
    from export.data import DATASETS
    from export.streams import VARIANTS, StreamSpec

    s = sub.add_parser(
        "streams",
        help="build information-sparse streams (bouts between idle periods of a sensor at rest) "
        "from the train, validation and test recordings",
    )
    source = s.add_mutually_exclusive_group()
    source.add_argument("--dataset", default="watch", choices=DATASETS)
    source.add_argument("--data", help="your own recordings: a folder of CSV files or a .npz")
    s.add_argument("--label-column", default="label")
    s.add_argument("--group-column")
    s.add_argument("--val-groups", type=_names, default=())
    s.add_argument("--test-groups", type=_names, default=())
    s.add_argument("--split-seed", type=int, default=0)
    s.add_argument("--sample-rate", type=float, help="samples per second of your recordings")
    s.add_argument("--variant", choices=VARIANTS, default="rest")
    s.add_argument(
        "--idle-seconds",
        type=float,
        nargs=2,
        metavar=("MIN", "MAX"),
        default=(StreamSpec.idle_min_s, StreamSpec.idle_max_s),
        help="idle periods last log-uniform in [MIN, MAX] seconds",
    )
    s.add_argument("--bouts-per-stream", type=int, default=StreamSpec.bouts_per_stream)
    s.add_argument(
        "--gravity",
        type=_names,
        help="three features that read gravity at rest (default ax,ay,az; '' for none)",
    )
    s.add_argument(
        "--rest-zero",
        type=_names,
        help="features that read zero at rest, e.g. a gyroscope (default wx,wy,wz; '' for none)",
    )
    s.add_argument("--seed", type=int, help="one seed for every part (default: fixed per part)")
    s.add_argument("--csv", action="store_true", help="also one CSV per stream, for replay")
    s.add_argument("--out", type=Path, required=True, help="folder for train/val/test.npz")
    s.set_defaults(func=_streams)


def _add_pareto(sub: argparse._SubParsersAction) -> None:
    from export import pareto
    from export.data import DATASETS

    g = pareto.Grid()
    p = sub.add_parser(
        "pareto",
        help="train SA-RNNs and cost-matched baselines (dense, skip, random mask) over seeds; "
        "table and plot of accuracy against multiply-adds per step (resumable)",
        description=pareto.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--hidden", type=int, nargs="+", default=list(g.hidden))
    p.add_argument("--target-rates", type=float, nargs="+", default=list(g.target_rates))
    p.add_argument("--seeds", type=int, nargs="+", default=list(g.seeds))
    p.add_argument("--cell", default=g.cell, choices=["gru", "lstm", "rnn"])
    p.add_argument("--dataset", default=g.dataset, choices=DATASETS)
    p.add_argument("--lam", type=float, default=g.lam, help="weight of |rate - target|")
    p.add_argument("--epochs", type=int, default=g.epochs)
    p.add_argument("--batches-per-epoch", type=int, default=g.batches_per_epoch)
    p.add_argument("--batch-size", type=int, default=g.batch_size)
    p.add_argument("--window", type=int, default=g.window)
    p.add_argument(
        "--max-macs",
        type=float,
        help="bound the study: no SA-RNN planned above this many multiply-adds per step, "
        "baselines only for points within it, plus the dense cell costing about it",
    )
    p.add_argument("--root", default=str(g.root), help="one directory per run in here")
    p.add_argument(
        "--results",
        default=str(g.results),
        help="tracked folder of the result records, one small JSON per finished run",
    )
    p.add_argument(
        "--out", help="where pareto.csv, .md and .png go (default: the parent of --results)"
    )
    p.add_argument(
        "--parts",
        default="0/1",
        metavar="I/N",
        help="run every N-th configuration from the I-th (start N processes: 0/N .. N-1/N)",
    )
    p.add_argument(
        "--report-only",
        action="store_true",
        help="rebuild table and plot from the result records; train nothing",
    )
    p.set_defaults(func=_pareto)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

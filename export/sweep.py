"""Rerunnable experiments: the lambda sweep and the seed comparison against a dense GRU.

    python -m export.sweep --lams 1 2.5 3 8 --seeds 0 --name sweep    # lambda trade-off
    python -m export.sweep --lams 2.5 --seeds 0 1 2 --dense --name seeds  # SA-RNN vs dense

Each run goes to runs/<tag>/ (skipped when its metrics.json exists); the table of every run
asked for is printed as markdown and written to runs/<name>.md. The table gives validation
figures, the data choices are made on; `--part test` reads the test figures, once, at the end.
"""

import argparse
import json
import statistics
from pathlib import Path

from export.train import TrainConfig, train


def _run_dir(root: Path, cfg: TrainConfig) -> Path:
    kind = "dense" if cfg.dense else f"lam{cfg.lam:g}w{cfg.lam_warmup_epochs}"
    shape = f"{cfg.cell}{cfg.hidden}-win{cfg.window}-e{cfg.epochs}"
    return root / f"{cfg.dataset}-{shape}-{kind}-s{cfg.seed}"


def run_all(configs: list[TrainConfig], root: Path) -> list[dict]:
    """Train every config not trained yet; return all their metrics."""
    results = []
    for cfg in configs:
        out = _run_dir(root, cfg)
        path = out / "metrics.json"
        if not path.exists():
            train(cfg, out)
        results.append(json.loads(path.read_text()))
    return results


def _fmt(values: list[float], scale: float = 100.0) -> str:
    mean = statistics.mean(values) * scale
    if len(values) < 2:
        return f"{mean:.1f}"
    return f"{mean:.1f} ± {statistics.stdev(values) * scale:.1f}"


def table(results: list[dict], part: str = "validation") -> str:
    """Markdown table grouped by (cell, H, lambda or dense), mean ± sd over seeds, of the
    figures on `part` ("validation" or "test")."""
    groups: dict[tuple, list[dict]] = {}
    for m in results:
        c = m["config"]
        key = (c["cell"], c["hidden"], "dense" if c["dense"] else f"{c['lam']:g}")
        groups.setdefault(key, []).append(m)
    lines = [
        f"| cell | H | lambda | seeds | {part} streaming acc % | last-step acc % | update rate % "
        "| MACs/step dense | MACs/step selective |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (cell, hidden, lam), ms in groups.items():
        tests = [m[part] for m in ms]
        rate = [1.0 if lam == "dense" else t["update_rate"] for t in tests]
        macs_sel = statistics.mean(m["macs_per_step"]["selective"] for m in ms)
        lines.append(
            f"| {cell} | {hidden} | {lam} | {len(ms)} "
            f"| {_fmt([t['streaming_accuracy'] for t in tests])} "
            f"| {_fmt([t['last_step_accuracy'] for t in tests])} "
            f"| {_fmt(rate)} | {ms[0]['macs_per_step']['dense']} | {macs_sel:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.sweep", description=__doc__)
    parser.add_argument("--dataset", default="watch")
    parser.add_argument("--cell", default="gru")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--lams", type=float, nargs="+", default=[1, 2.5, 3, 8])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--dense", action="store_true", help="also train dense baselines")
    d = TrainConfig()
    parser.add_argument("--epochs", type=int, default=d.epochs)
    parser.add_argument("--lam-warmup-epochs", type=int, default=d.lam_warmup_epochs)
    parser.add_argument("--window", type=int, default=d.window)
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--root", default="runs")
    parser.add_argument("--name", default="sweep")
    parser.add_argument(
        "--part",
        choices=["validation", "test"],
        default="validation",
        help="figures to tabulate: validation (to choose on) or test (read once, at the end)",
    )
    args = parser.parse_args(argv)
    base = {
        "dataset": args.dataset,
        "cell": args.cell,
        "hidden": args.hidden,
        "epochs": args.epochs,
        "window": args.window,
        "batch_size": args.batch_size,
    }
    configs = [
        TrainConfig(**base, lam=lam, lam_warmup_epochs=args.lam_warmup_epochs, seed=seed)
        for lam in args.lams
        for seed in args.seeds
    ]
    if args.dense:
        configs += [TrainConfig(**base, dense=True, seed=seed) for seed in args.seeds]
    root = Path(args.root)
    md = table(run_all(configs, root), args.part)
    print(md)
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{args.name}.md").write_text(md + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

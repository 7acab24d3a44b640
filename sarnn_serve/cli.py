"""`sarnn-serve`: run the server (default) or replay recorded data into one."""

import argparse
import os
import sys

from sarnn_serve import replay
from sarnn_serve.settings import Settings


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    overrides = {
        k: v
        for k, v in {
            "host": args.host,
            "port": args.port,
            "model_dir": args.model_dir,
            "workers": args.workers,
        }.items()
        if v is not None
    }
    settings = Settings(**overrides)
    if settings.workers > 1 and settings.store == "memory":
        print(
            "error: --workers > 1 needs SARNN_STORE=redis: with the memory store each worker "
            "would hold its own sessions",
            file=sys.stderr,
        )
        return 2
    kwargs = {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        # uvicorn closes the socket (1009) past its limit; twice ours leaves room to answer an
        # oversized message with an error frame instead
        "ws_max_size": 2 * settings.ws_max_message_bytes,
        "ws_per_message_deflate": False,
        "access_log": False,
    }
    if settings.workers > 1:
        for key, value in overrides.items():
            os.environ[f"SARNN_{key.upper()}"] = str(value)
        uvicorn.run(
            "sarnn_serve.api.app:create_app", factory=True, workers=settings.workers, **kwargs
        )
    else:
        from sarnn_serve.api.app import create_app

        uvicorn.run(create_app(settings), **kwargs)
    return 0


COMMANDS = ("serve", "replay")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sarnn-serve", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    s = sub.add_parser("serve", help="serve the models under --model-dir (the default command)")
    s.add_argument("--host")
    s.add_argument("--port", type=int)
    s.add_argument("--model-dir")
    s.add_argument("--workers", type=int)
    s.set_defaults(func=_serve)
    r = sub.add_parser("replay", help="stream a recorded sensor file into a running server")
    replay.add_arguments(r)
    r.set_defaults(func=replay.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or (argv[0] not in COMMANDS and argv[0] not in ("-h", "--help")):
        argv = ["serve", *argv]
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())

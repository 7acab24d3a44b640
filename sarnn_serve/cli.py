"""`sarnn-serve`: run the server (the default command) or replay recorded data into one."""

import argparse
import errno
import importlib
import os
import socket
import sys
import textwrap
from importlib import metadata
from typing import Any, NoReturn

from pydantic import ValidationError
from pydantic_settings import SettingsError

from sarnn_serve import replay
from sarnn_serve.settings import Settings
from sarnn_serve.slow_clients import http_protocol

PROG = "sarnn-serve"
COMMANDS = ("serve", "replay")
# Settings fields that `serve` also takes as options; their help comes from the fields.
SERVE_OPTIONS = ("host", "port", "model_dir", "workers")
ENV_PREFIX = Settings.model_config["env_prefix"]


class UsageError(Exception):
    """Bad configuration or models: reported as one line on stderr, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line on stderr (exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{PROG}: error: {message} (see {self.prog} --help)\n")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the layout of descriptions; adds `(default: X)` where an option's help has none."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "default" not in text:
            text += " (default: %(default)s)"
        return text

    def _split_lines(self, text: str, width: int) -> list[str]:
        """Wrapped at spaces only: a path or variable is never split at its hyphens."""
        text = self._whitespace_matcher.sub(" ", text).strip()
        return textwrap.wrap(text, width, break_on_hyphens=False)


def env_var(field: str) -> str:
    """The environment variable of a Settings field, e.g. SARNN_PORT."""
    return f"{ENV_PREFIX}{field.upper()}"


def option(field: str) -> str:
    """The command-line option of a Settings field, e.g. --model-dir."""
    return "--" + field.replace("_", "-")


def _default(field: str) -> str:
    value = Settings.model_fields[field].get_default(call_default_factory=True)
    return "unset" if value is None or value == "" else str(value)


def _description(field: str) -> str:
    return Settings.model_fields[field].description or "(undocumented)"


def _option_help(field: str) -> str:
    text = f"{_description(field)} (default: {_default(field)}; env {env_var(field)})"
    return text.replace("%", "%%")


def _settings_table(fields: list[str]) -> str:
    """One entry per setting: its variable and default, then its description, indented."""
    lines = []
    for field in fields:
        lines.append(f"  {env_var(field)} (default: {_default(field)})")
        lines += textwrap.wrap(
            _description(field), 88, initial_indent=" " * 6, subsequent_indent=" " * 6
        )
    return "\n".join(lines)


def _version() -> str:
    try:
        return metadata.version(PROG)
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _describe(error: dict[str, Any], overrides: dict[str, str]) -> str:
    """One validation error, named by the option or variable that set the value."""
    if not error["loc"]:
        return error["msg"]
    field = str(error["loc"][0])
    if field in overrides:
        return f"{option(field)} {error['input']}: {error['msg']}"
    return f"{env_var(field)}={error['input']}: {error['msg']}"


def load_settings(overrides: dict[str, str]) -> Settings:
    """Settings from the environment and the command line's `overrides`; UsageError if bad."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise UsageError("; ".join(_describe(e, overrides) for e in exc.errors())) from None
    except SettingsError as exc:
        raise UsageError(str(exc)) from None


def check_address(settings: Settings) -> None:
    """Refuse an address the server cannot listen on (a port in use, an unknown host): the HTTP
    port, and the gRPC port when gRPC is on, each bound here once as the servers will bind it."""
    ports = {settings.port: f"--port or {env_var('port')}"}
    if settings.grpc_enabled and settings.grpc_port:
        if settings.grpc_port == settings.port:
            raise UsageError(
                f"{env_var('grpc_port')}={settings.grpc_port} is the HTTP port too: choose "
                f"another (or turn gRPC off with {env_var('grpc_enabled')}=false)"
            )
        ports[settings.grpc_port] = f"{env_var('grpc_port')} (or {env_var('grpc_enabled')}=false)"
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    for port, setting in ports.items():
        try:
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((settings.host, port))
        except OSError as exc:
            reason = "in use" if exc.errno == errno.EADDRINUSE else exc.strerror or str(exc)
            raise UsageError(
                f"cannot listen on {settings.host}:{port}: {reason} (choose another port with "
                f"{setting}, the address with {env_var('host')})"
            ) from None


def check(settings: Settings) -> None:
    """Refuse, before uvicorn starts, what would otherwise fail later with a traceback.

    The address and the key file first, then the models: they are loaded once here and
    dropped, so a model that cannot load stops the command with one line instead of a failed
    lifespan."""
    from sarnn_serve.auth import KeyRing
    from sarnn_serve.errors import ModelLoadError
    from sarnn_serve.registry import Registry

    check_address(settings)
    try:
        KeyRing.from_settings(settings)
    except (OSError, ValueError) as exc:
        raise UsageError(f"{env_var('api_keys_file')}: {exc}") from None
    if settings.store == "redis":
        try:
            importlib.import_module("redis.asyncio")
        except ImportError as exc:
            raise UsageError(
                f"{env_var('store')}=redis needs the [redis] extra: "
                f"pip install 'sarnn-serve[redis]' (import redis failed: {exc})"
            ) from None
    try:
        registry = Registry.load(
            settings.model_dir,
            settings.ort_intra_op_threads,
            settings.ort_inter_op_threads,
            settings.native_kernel,
        )
    except ModelLoadError as exc:
        raise UsageError(str(exc)) from None
    if settings.default_model and settings.default_model not in registry.names():
        raise UsageError(
            f"{env_var('default_model')}={settings.default_model}: no such model under "
            f"{settings.model_dir} (available: {', '.join(registry.names())})"
        )
    forced = settings.engine_path
    for name, model in registry.models.items():
        if forced in ("sparse", "native") and forced not in model.engine.paths:
            why = f"native kernel ({model.native})" if forced == "native" else "sparse graph"
            raise UsageError(f"{env_var('engine_path')}={forced}: model {name} has no {why}")


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's options for `settings` (everything but the app and the worker count)."""
    proxies = [e.strip() for e in settings.forwarded_allow_ips.split(",") if e.strip()]
    return {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        # uvicorn closes the socket (1009) past its limit; twice ours leaves room to answer an
        # oversized message with an error frame instead
        "ws_max_size": 2 * settings.ws_max_message_bytes,
        "ws_per_message_deflate": False,
        "access_log": False,
        # X-Forwarded-For names the client only when the proxy sent it; passed explicitly, so
        # uvicorn's own FORWARDED_ALLOW_IPS variable (and its default, 127.0.0.1) never applies
        "proxy_headers": bool(proxies),
        "forwarded_allow_ips": proxies or None,
        # uvicorn waits for headers for ever; this protocol gives them a deadline
        "http": http_protocol(settings.header_timeout_s, settings.max_header_bytes),
        "h11_max_incomplete_event_size": settings.max_header_bytes,
    }


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    overrides = {f: getattr(args, f) for f in SERVE_OPTIONS if getattr(args, f) is not None}
    settings = load_settings(overrides)
    check(settings)
    kwargs = uvicorn_options(settings)
    if settings.workers > 1:
        for field, value in overrides.items():
            os.environ[env_var(field)] = str(value)
        uvicorn.run(
            "sarnn_serve.api.app:create_app", factory=True, workers=settings.workers, **kwargs
        )
    else:
        from sarnn_serve.api.app import create_app

        uvicorn.run(create_app(settings), **kwargs)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The `sarnn-serve` parser with its `serve` and `replay` commands."""
    every_setting = list(Settings.model_fields)
    parser = _Parser(
        prog=PROG,
        description=f"{__doc__}\nWith no command it serves: `{PROG} --port 8001` is "
        f"`{PROG} serve --port 8001`.",
        epilog="settings (environment variables; the serve options override them):\n"
        + _settings_table(every_setting),
        formatter_class=_HelpFormatter,
    )
    parser.add_argument(
        "--version", action="version", version=f"{PROG} {_version()}", help="print the version"
    )
    sub = parser.add_subparsers(dest="command", title="commands")
    s = sub.add_parser(
        "serve",
        help="serve the models under --model-dir (the default command)",
        description="Serve the models under --model-dir over HTTP and WebSocket.",
        epilog="other settings (environment variables only):\n"
        + _settings_table([f for f in every_setting if f not in SERVE_OPTIONS]),
        formatter_class=_HelpFormatter,
    )
    for field in SERVE_OPTIONS:
        s.add_argument(option(field), dest=field, metavar=field.upper(), help=_option_help(field))
    s.set_defaults(func=_serve)
    r = sub.add_parser(
        "replay",
        help="stream a recorded sensor file into a running server",
        description=replay.__doc__,
        formatter_class=_HelpFormatter,
    )
    replay.add_arguments(r)
    r.set_defaults(func=replay.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse `argv` (default: sys.argv), run the command, return its status."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in (*COMMANDS, "-h", "--help", "--version"):
        argv = ["serve", *argv]
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UsageError as exc:
        print(f"{PROG}: error: {_one_line(str(exc))}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())

"""Where settings come from: CLI flags, then ``TTS_*`` environment variables, then defaults.

Every flag and variable is derived from a :class:`~tts_server.config.ServerConfig` field (its name
and help text), so the parser, the README's settings table (:func:`settings_markdown`) and the
config cannot drift apart. Nothing else in the server reads the environment.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, Field, fields
from typing import Any

from tts_server.config import ConfigError, ServerConfig, env_of, flag_of

__all__ = ["build_parser", "load_config", "settings_markdown"]


def _show(default: Any) -> str:
    """A default as it is typed on the command line (``(10, 5)`` → ``10,5``)."""
    return ",".join(map(str, default)) if isinstance(default, tuple) else str(default)


def _parse(f: Field[Any], text: str, source: str) -> Any:
    parse = f.metadata["parse"] or str
    try:
        return parse(text)
    except ValueError as exc:
        shown = "***" if f.metadata["secret"] else repr(text)
        raise ConfigError(f"{source}: cannot parse {shown} ({exc})") from exc


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser (every flag defaults to "not given", so the environment can fill in)."""
    parser = argparse.ArgumentParser(
        prog="tts-server",
        description="VoxCPM text-to-speech HTTP server. Every flag can also be set as a TTS_* environment variable.",
    )
    for f in fields(ServerConfig):
        default = "required" if f.default is MISSING else f"default {_show(f.default)}"
        help_text = f"{f.metadata['help']} [{env_of(f.name)}; {default}]".replace("%", "%%")
        if f.type in (bool, "bool"):
            parser.add_argument(flag_of(f.name), dest=f.name, action=argparse.BooleanOptionalAction, help=help_text)
        else:
            parser.add_argument(flag_of(f.name), dest=f.name, metavar=f.name.upper(), help=help_text)
    return parser


def load_config(argv: Sequence[str] | None, environ: Mapping[str, str]) -> ServerConfig:
    """Read the settings: command line first, then ``TTS_*`` variables, then defaults.

    Args:
        argv: Command-line arguments without the program name.
        environ: The environment (``os.environ``).

    Returns:
        The validated config.

    Raises:
        ConfigError: A value cannot be parsed or is invalid (the message names the flag or variable).
        SystemExit: ``--help`` or an unknown flag (argparse's behaviour).
    """
    given = vars(build_parser().parse_args(list(argv or [])))
    values: dict[str, Any] = {}
    for f in fields(ServerConfig):
        cli = given.get(f.name)
        if isinstance(cli, bool):
            values[f.name] = cli
        elif cli is not None:
            values[f.name] = _parse(f, cli, flag_of(f.name))
        elif env_of(f.name) in environ:
            values[f.name] = _parse(f, environ[env_of(f.name)], env_of(f.name))
    if "model" not in values:
        raise ConfigError(f"--model is required (or set {env_of('model')}): the checkpoint directory")
    return ServerConfig(**values)


def settings_markdown() -> str:
    """The README's settings table: flag, environment variable, default, meaning."""
    rows = ["| flag | environment | default | meaning |", "|---|---|---|---|"]
    for f in fields(ServerConfig):
        default = "required" if f.default is MISSING else "unset" if f.default is None else f"`{_show(f.default)}`"
        rows.append(f"| `{flag_of(f.name)}` | `{env_of(f.name)}` | {default} | {f.metadata['help']} |")
    return "\n".join(rows)

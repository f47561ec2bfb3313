"""Render ``haproxy.cfg.template`` for N ``python -m tts_server`` instances on loopback ports.

Standard library only, so it runs with any Python 3.10+::

    python deploy/haproxy/render.py --servers 127.0.0.1:8001,127.0.0.1:8002 --maxconn 32 > haproxy.cfg
    python deploy/haproxy/render.py --base-port 8001 --count 3 --maxconn 32 --out haproxy.cfg

``--maxconn`` must equal each instance's ``--max-concurrent-connections`` (default there:
2 x ``--max-num-seqs`` x devices): HAProxy then never sends an instance more work requests than it
admits, and queues the rest itself (``timeout queue``) instead of passing on 503s.
"""

from __future__ import annotations

import argparse
import string
import sys
from pathlib import Path

__all__ = ["main", "render"]

TEMPLATE = Path(__file__).with_name("haproxy.cfg.template")


def _server_lines(servers: list[str]) -> tuple[str, str]:
    """The ``server`` lines and the ``use-server`` routes of /cancel and /queue by X-TTS-Server."""
    names = [f"tts{i + 1}" for i in range(len(servers))]
    server_lines = "\n".join(f"    server {names[i]} {addr}" for i, addr in enumerate(servers))
    rule = "    use-server {0} if {{ path /cancel /queue }} {{ req.hdr(x-tts-server) -m str {0} }}"
    routes = "\n".join(rule.format(name) for name in names)
    return server_lines, routes


def render(
    servers: list[str],
    *,
    maxconn: int,
    bind: str = "127.0.0.1:8000",
    stats_bind: str = "127.0.0.1:8404",
    timeout_server: str = "300s",
    timeout_queue: str = "60s",
    timeout_connect: str = "2s",
    timeout_client: str = "300s",
    timeout_check: str = "2s",
    check_inter: str = "1s",
    check_fall: int = 2,
    check_rise: int = 2,
    retries: int | None = None,
    bufsize: int = 16384,
    log_level: str = "info",
    template: Path = TEMPLATE,
) -> str:
    """The configuration text.

    Args:
        servers: ``host:port`` of each instance (loopback).
        maxconn: Per-instance ``maxconn``; equal to each instance's ``--max-concurrent-connections``.
        bind: Address of the public frontend.
        stats_bind: Address of the stats page.
        timeout_server: Longest silence from an instance (first byte wait, gaps in a stream).
        timeout_queue: Longest wait in HAProxy's queue when every instance is full.
        timeout_connect: Connect timeout to an instance.
        timeout_client: Longest silence from a client.
        timeout_check: Health check answer timeout.
        check_inter: Interval between health checks.
        check_fall: Failed checks before an instance is taken out.
        check_rise: Passed checks before it is put back.
        retries: Retries of a refused or failed request; default: one per other instance (at least 1).
        bufsize: ``tune.bufsize``: the largest request that can be replayed on another instance.
        log_level: HAProxy log level (``info`` logs every request, ``notice`` only state changes).
        template: Template file.
    """
    if not servers:
        raise ValueError("at least one server is needed")
    if maxconn < 1:
        raise ValueError("maxconn must be >= 1")
    server_lines, routes = _server_lines(servers)
    values = {
        "global_maxconn": max(1024, 4 * maxconn * len(servers)),
        "bind": bind,
        "stats_bind": stats_bind,
        "maxconn": maxconn,
        "timeout_server": timeout_server,
        "timeout_queue": timeout_queue,
        "timeout_connect": timeout_connect,
        "timeout_client": timeout_client,
        "timeout_check": timeout_check,
        "check_inter": check_inter,
        "check_fall": check_fall,
        "check_rise": check_rise,
        "retries": retries if retries is not None else max(1, len(servers) - 1),
        "bufsize": bufsize,
        "log_level": log_level,
    }
    text = string.Template(template.read_text()).substitute(values)
    text = text.replace("\n@SERVERS@\n", f"\n{server_lines}\n").replace("\n@CANCEL_ROUTES@\n", f"\n{routes}\n")
    return text if text.endswith("\n") else text + "\n"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--servers", help="Comma list of host:port, one per instance.")
    where.add_argument("--base-port", type=int, help="First instance port (with --count; host 127.0.0.1).")
    parser.add_argument("--count", type=int, default=2, help="Instances on base-port, base-port+1, ... (default 2).")
    parser.add_argument("--maxconn", type=int, required=True, help="Each instance's --max-concurrent-connections.")
    parser.add_argument("--bind", default="127.0.0.1:8000", help="Frontend address (default 127.0.0.1:8000).")
    parser.add_argument("--stats-bind", default="127.0.0.1:8404", help="Stats page address (default 127.0.0.1:8404).")
    parser.add_argument("--timeout-server", default="300s", help="Longest silence from an instance (default 300s).")
    parser.add_argument("--timeout-queue", default="60s", help="Longest wait for a free instance (default 60s).")
    parser.add_argument("--check-inter", default="1s", help="Health check interval (default 1s).")
    parser.add_argument("--check-fall", type=int, default=2, help="Failed checks to take an instance out (2).")
    parser.add_argument("--check-rise", type=int, default=2, help="Passed checks to put it back (2).")
    parser.add_argument("--retries", type=int, default=None, help="Retries (default: instances - 1, at least 1).")
    parser.add_argument("--bufsize", type=int, default=16384, help="tune.bufsize: largest replayable request.")
    parser.add_argument("--log-level", default="info", help="HAProxy log level (default info).")
    parser.add_argument("--out", type=Path, default=None, help="Write here instead of stdout.")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    args = _parse(argv)
    if args.servers:
        servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    else:
        servers = [f"127.0.0.1:{args.base_port + i}" for i in range(args.count)]
    text = render(
        servers,
        maxconn=args.maxconn,
        bind=args.bind,
        stats_bind=args.stats_bind,
        timeout_server=args.timeout_server,
        timeout_queue=args.timeout_queue,
        check_inter=args.check_inter,
        check_fall=args.check_fall,
        check_rise=args.check_rise,
        retries=args.retries,
        bufsize=args.bufsize,
        log_level=args.log_level,
    )
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The time one INFO log call costs its caller: a plain ``StreamHandler`` against the server's log output.

Each request the server serves ends in one INFO line on the event loop. ``--handler stream`` logs
the way ``logging.basicConfig`` sets up (format and write on the caller's thread);
``--handler queue`` through :class:`tts_server.log_output.LogOutput` (render the message, queue the
record; a writer thread formats and writes). Both write to /dev/null, so the figure is the caller's
own cost, not the stream's. Run: ``python scripts/bench_log_call.py --handler stream|queue [--n 50000]``.
"""

from __future__ import annotations

import argparse
import logging
import os
import timeit

from tts_server.log_output import LOG_FORMAT, LogOutput


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--handler", choices=("stream", "queue"), required=True)
    parser.add_argument("--n", type=int, default=50_000)
    args = parser.parse_args()
    with open(os.devnull, "w") as sink:
        output = None
        if args.handler == "stream":
            logging.basicConfig(level="INFO", stream=sink, format=LOG_FORMAT, force=True)
        else:
            output = LogOutput("info", sink)
            output.start()
        log = logging.getLogger("tts_server.jobs.job")
        line = "request %s %s: %s, %.2f s of audio, %d segment(s) %s"
        seconds = timeit.timeit(lambda: log.info(line, "r-1", "generate", "ok", 8.0, 1, ""), number=args.n)
        if output is not None:
            output.stop()
    print(f"{args.handler}: {seconds / args.n * 1e6:.1f} us per INFO call on the caller's thread ({args.n} calls)")


if __name__ == "__main__":
    main()

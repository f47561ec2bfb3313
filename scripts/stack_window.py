"""Print what ``scripts/stack_sampler`` recorded in every process around one moment.

    python scripts/stack_window.py /tmp/stk 12345.678 [--before 0.3] [--after 0.6]

The moment is a ``time.monotonic()`` value (``scripts/first_requests.py`` prints one per request).
Each line: seconds from the moment, how late that sample came (ms), the main thread's stack
(innermost first); late samples list the other threads' stacks below them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    """Print the records of every ``*.jsonl`` in the folder that fall inside the window."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("directory", type=Path)
    ap.add_argument("moment", type=float)
    ap.add_argument("--before", type=float, default=0.3, help="seconds before the moment (default 0.3)")
    ap.add_argument("--after", type=float, default=0.6, help="seconds after the moment (default 0.6)")
    args = ap.parse_args()
    for path in sorted(args.directory.glob("*.jsonl")):
        print(f"=== process {path.stem}")
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if args.moment - args.before <= record["t"] <= args.moment + args.after:
                print(f"{record['t'] - args.moment:+.4f} late {record['gap_ms']:6.1f} | {record['main']}")
                for name, stack in record.get("others", {}).items():
                    print(f"        {name}: {stack}")


if __name__ == "__main__":
    main()

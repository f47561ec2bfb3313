"""Progress bars of long command-line work (checkpoint writing, ``say --batch``, the benchmark's sweeps).

Bars go to stderr and show only when stderr is a terminal, so stdout (tables, JSON, paths a script
captures) stays clean and a log file gets no carriage-return litter. ``VOXCPM_PROGRESS=1`` forces
the bars on anyway (a CI log that wants them), ``VOXCPM_PROGRESS=0`` forces them off.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from tqdm import tqdm

__all__ = ["ENV", "echo", "progress_bar", "progress_enabled"]

ENV = "VOXCPM_PROGRESS"


def progress_enabled() -> bool | None:
    """``True``/``False`` when :data:`ENV` forces the bars on or off; ``None``: on exactly when stderr is a terminal."""
    value = os.environ.get(ENV, "").strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    return None


def progress_bar(total: float | None = None, *, desc: str, unit: str = "it", **kwargs: Any) -> tqdm:
    """A tqdm bar on stderr, shown only on a terminal (see the module docstring).

    Args:
        total: Units of work expected (``None``: unknown, the bar counts up).
        desc: What is being done, before the bar.
        unit: What one unit is (``"req"``, ``"run"``; with ``unit_scale=True`` a count like parameters).
        kwargs: More tqdm options (``unit_scale``, ``leave``, ...).

    Returns:
        The bar; use it as a context manager so it is closed (and its line finished) on errors too.
    """
    forced = progress_enabled()
    # tqdm's disable=None is "off unless the file is a terminal"; an explicit False shows it regardless.
    disable = None if forced is None else not forced
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=disable, dynamic_ncols=True, **kwargs)


def echo(line: str) -> None:
    """Print a line to stdout without tearing a bar that is on screen (the bar is redrawn below it)."""
    tqdm.write(line, file=sys.stdout)
    sys.stdout.flush()

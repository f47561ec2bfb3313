"""scripts/add_request_cost.py on the tiny model: adds a burst, aborts it, reports the time."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.server_process import ROOT


def test_it_times_a_burst_of_adds(tiny_v1):
    argv = [sys.executable, "scripts/add_request_cost.py", str(tiny_v1), "--requests", "4", "--repeats", "2"]
    out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert re.search(
        r"^4 adds: median [0-9.]+ ms \([0-9.]+-[0-9.]+\) over 2 repeats, [0-9]+ us per request$", out.stdout.strip()
    )

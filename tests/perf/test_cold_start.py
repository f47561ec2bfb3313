"""``benchmark.py --mode cold-start``: two real server starts (tiny model, CPU, loopback), measured per level."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from perf.cold_start import ColdStartPlan, cold_start, measure_start

ROOT = Path(__file__).resolve().parents[2]
SERVER_ARGS = "--device cpu --max-num-batched-tokens 64 --max-model-len 256 --engine-threads 1 --log-level warning"


def test_cold_start_mode_starts_twice_on_one_cache_and_measures_each_level(tmp_path):
    out = tmp_path / "cold.json"
    cache = tmp_path / "kernels"
    argv = [
        sys.executable, "benchmark.py", "--mode", "cold-start", "--preset", "tiny-v1", "--cache-dir",
        str(tmp_path / "ckpt"), "--concurrency", "1", "2", "--steps", "3", "--repeats", "2",
        "--kernel-cache-dir", str(cache), "--server-args", SERVER_ARGS, "--json", str(out),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    starts = json.loads(out.read_text())["cold_start"]
    assert [s["label"] for s in starts] == ["empty-cache", "filled-cache"]
    for start in starts:
        assert start["ready_s"] > 0 and start["kernel_cache_dir"] == str(cache)
        assert [lv["concurrency"] for lv in start["levels"]] == [1, 2]
        for lv in start["levels"]:
            first, warm = lv["first"], lv["warm"]
            # The first run of a level is exactly that level's requests; the warm value is over two runs.
            assert first["ok"] == first["requests"] == lv["concurrency"] and first["errors"] == 0
            assert warm["repeats"] == 2 and warm["ok"] == 2 * lv["concurrency"]
            assert first["ttfb_ms_p50"] > 0 and first["ttfb_ms_max"] >= first["ttfb_ms_p50"]
            assert lv["first_over_warm"] == pytest.approx(first["ttfb_ms_p50"] / warm["ttfb_ms_p50"])
            assert lv["ok"] == (lv["first_over_warm"] <= 1.5 and first["max_gap_ms_max"] <= 100.0)
    assert "## Cold start" in proc.stdout and "| empty-cache |" in proc.stdout
    # Where the first requests' time went, from the server's Server-Timing headers.
    assert "empty-cache: server stages of the first runs" in proc.stdout
    assert starts[0]["levels"][0]["first"]["server_timing_ms"]["total"]["n"] == 1
    # Each server's log is kept beside the JSON.
    assert (tmp_path / "cold-start-server-empty-cache.log").is_file()


def test_cold_start_refuses_a_cache_that_is_not_empty(tmp_path):
    (tmp_path / "old").mkdir()
    with pytest.raises(ValueError, match="not empty"):
        cold_start(ColdStartPlan(model_dir=tmp_path, kernel_cache_dir=tmp_path))


def test_a_server_that_cannot_start_ends_the_run_at_once_with_its_log(tmp_path):
    plan = ColdStartPlan(model_dir=tmp_path / "missing", levels=(1,), log_dir=tmp_path, server_args=("--device", "cpu"))
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="exited with code") as exc:
        measure_start(plan, tmp_path / "k", "broken")
    assert time.monotonic() - started < 60
    assert "missing" in str(exc.value)  # the end of the server's log says what was wrong


def test_the_server_gets_the_benchmarks_token_budget_and_extra_flags_win(tmp_path):
    from perf.cold_start import server_argv

    plan = ColdStartPlan(model_dir=tmp_path, levels=(1, 8), max_num_batched_tokens=4096)
    argv = server_argv(plan, 8000, tmp_path / "k")
    assert argv[argv.index("--max-num-batched-tokens") + 1] == "4096"
    assert argv[argv.index("--max-num-seqs") + 1] == "8"
    assert "--max-num-batched-tokens" not in server_argv(ColdStartPlan(model_dir=tmp_path), 8000, tmp_path)
    extra = server_argv(
        ColdStartPlan(model_dir=tmp_path, max_num_batched_tokens=4096, server_args=("--max-num-batched-tokens", "64")),
        8000,
        tmp_path,
    )
    assert extra[-2:] == ["--max-num-batched-tokens", "64"]  # argparse keeps the last

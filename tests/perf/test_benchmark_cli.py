"""``benchmark.py`` as a user runs it: help, the engine mode on the tiny preset, strict JSON out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import benchmark
from perf import report

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    # One OpenMP thread: on a busy 2-core box, spin-waiting threads make the tiny model 5x slower.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "benchmark.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env
    )


def _strict(text: str) -> dict:
    def no_constants(name: str) -> None:
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=no_constants)


def test_help_documents_every_mode_and_flag(capsys):
    with pytest.raises(SystemExit) as exc:
        benchmark.parse_args(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for word in (
        "engine",
        "peer",
        "open-loop",
        "http",
        "--compare",
        "--profile",
        "--ipc",
        "--json",
        "--rates",
        "--server",
        "--num-requests",
        "--concurrency",
        "--warmup",
        "--temperature",
        "--cfg-value",
        "--max-generate-length",
        "--peak-tflops",
        "--requests-per-level",
        "--steps",
        "--duration",
        "--loras",
        "--no-fused-kernels",
        "--vae-fp32",
    ):
        assert word in out, word


def test_engine_mode_tiny_preset_writes_strict_json(tmp_path):
    out = tmp_path / "out.json"
    args = ["--preset", "tiny-v1", "--device", "cpu", "--concurrency", "1", "2", "--steps", "3", "--repeats", "2"]
    proc = _run(*args, "--json", str(out), "--cache-dir", str(tmp_path / "ckpt"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = _strict(out.read_text())
    assert data["meta"]["torch"] and data["meta"]["date"] and "--preset tiny-v1" in data["meta"]["command"]
    assert data["model"]["architecture"] == "voxcpm" and data["model"]["flops_per_patch"]["total"] > 0
    rows = data["ours"]
    assert [r["concurrency"] for r in rows] == [1, 2]
    for r in rows:
        # Two measured runs per level: the counts add up, the figures are medians with their spread.
        assert r["repeats"] == 2 and r["ok"] == r["requests"] == 2 * r["concurrency"]
        assert r["patches"] == 3 * r["concurrency"]
        assert r["ttfb_ms_p50"] > 0 and r["rtf_mean"] > 0 and r["achieved_tflops"] > 0
        low, high = r["spread"]["ttfb_ms_p50"]
        assert low <= r["ttfb_ms_p50"] <= high and len(r["runs"]) == 2
        assert r["mfu"] is None  # no peak known for a CPU
    assert "| ours | 2 |" in proc.stdout and "Median (min-max) over 2 runs per level" in proc.stdout
    assert "sweep" not in proc.stderr and "\r" not in proc.stderr  # stderr is a pipe: no progress bar
    assert out.with_suffix(".png").is_file()  # the figure beside --json by default


def test_engine_mode_with_lora_voices_on_every_row(tmp_path):
    out = tmp_path / "out.json"
    args = [
        "--preset",
        "tiny-v2",
        "--device",
        "cpu",
        "--concurrency",
        "2",
        "--steps",
        "2",
        "--loras",
        "2",
        "--repeats",
        "1",
    ]
    proc = _run(*args, "--lora-rank", "4", "--json", str(out), "--cache-dir", str(tmp_path / "ckpt"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = _strict(out.read_text())
    assert data["args"]["loras"] == 2 and data["args"]["fused_kernels"] is True
    assert data["ours"][0]["ok"] == 2
    assert sorted(p.name for p in (tmp_path / "ckpt").glob("*-loras/*")) == ["lora0", "lora1"]


def test_bad_arguments_are_refused(tmp_path):
    for argv in (["--mode", "http"], ["--mode", "engine"], ["--preset", "tiny-v1", "--model", str(tmp_path)]):
        with pytest.raises(SystemExit) as exc:
            benchmark.parse_args(argv)
        assert exc.value.code == 2
    args = benchmark.parse_args(["--server", "http://x:1"])
    assert args.mode == "http" and args.concurrency == [16]
    args = benchmark.parse_args(["--preset", "tiny-v1", "--num-requests", "7", "--max-generate-length", "9"])
    assert args.mode == "engine" and args.concurrency == [1, 16, 64, 128] and (args.requests, args.steps) == (7, 9)


def test_compare_without_the_peer_says_why(tmp_path):
    from perf.peer import peer_unavailable

    if peer_unavailable() is None:
        pytest.skip("the peer is runnable here")
    with pytest.raises(SystemExit) as exc:
        benchmark.main(["--preset", "tiny-v1", "--device", "cpu", "--compare", "--cache-dir", str(tmp_path)])
    assert "nano-vllm-voxcpm" in str(exc.value.code)


def test_seed_block_and_tables_render():
    summary = {
        "requests": 32,
        "ok": 32,
        "errors": 0,
        "rejected_503": 0,
        "ttfb_ms_p50": 156.2,
        "ttfb_ms_p90": 234.1,
        "ttfb_ms_p95": 278.3,
        "rtf_p50": 0.037,
        "rtf_p90": 0.045,
        "rtf_p95": 0.052,
        "audio_s": 89.6,
        "audio_s_per_s": 27.22,
    }
    block = report.seed_block(summary, concurrency=16, wall_s=8.45)
    for line in (
        "TTS BENCHMARK RESULTS",
        "Total Requests:      32",
        "Concurrency:         16",
        "Wall Clock Time:     8.45s",
        "P95:       278.3 ms",
        "P95:       0.052x",
        "Total Audio Generated:      89.6 s",
        "27.22x real-time",
        "REAL-TIME CAPABLE: P95 RTF < 1.0",
    ):
        assert line in block, line
    summary.update(rejected_503=3, rtf_p95=1.5)
    block = report.seed_block(summary, concurrency=16, wall_s=8.45)
    assert "Rejected (503):      3" in block and "NOT REAL-TIME CAPABLE" in block
    row = {"concurrency": 4, "ttfb_ms_p50": 10.0, "rtf_mean": 0.1, "audio_s_per_s": 100.0}
    table = report.compare_table([row], [{**row, "ttfb_ms_p50": 40.0, "rtf_mean": 0.4, "audio_s_per_s": 25.0}])
    assert "10.0 / 40.0 (0.25)" in table and "100.0 / 25.0 (4.00)" in table


def test_http_mode_prints_and_writes_server_stages(tmp_path, monkeypatch, capsys):
    from perf import http_client
    from perf.metrics import StreamTrace

    def level(server: str, *, num_requests: int, concurrency: int, **_: object) -> tuple[list[StreamTrace], float]:
        # Level 1 answers like a server without the header; level 2 with it, one value per request.
        traces = []
        for i in range(num_requests):
            t = StreamTrace(f"c{concurrency}-{i}", 0.0)
            t.add_chunk(0.05, 2.0)
            if concurrency == 2:
                t.server_timing = {"total": 20.0 + i, "queue": 1.0 + i, "gpu": 0.5}
            traces.append(t)
        return traces, 1.0

    monkeypatch.setattr(http_client, "http_level", level)
    out = tmp_path / "http.json"
    argv = ["--server", "http://x", "--concurrency", "1", "2", "--repeats", "1", "--json", str(out)]
    assert benchmark.main(argv) == 0
    text = capsys.readouterr().out
    first, second = text.split("TTS BENCHMARK RESULTS")[1:]
    assert "Server-Timing" not in first  # no header, no breakdown
    # One wave per level by default: as many requests as the level, started together.
    assert "Server-Timing, ms (2 of 2 answered requests carried it):" in second
    assert "| ms | queue | total | gpu |" in second and "| p50 | 1.50 | 20.50 | 0.50 |" in second
    assert "| n | 2 | 2 | 2 |" in second
    assert "| 1 | - | - | - |" in text and "| 2 | 1.50 | 20.50 | 0.50 |" in text  # p50 per level
    rows = _strict(out.read_text())["http"]
    assert [r["concurrency"] for r in rows] == [1, 2]
    assert rows[0]["server_timing_ms"] == {} and rows[0]["server_timing_responses"] == 0
    assert rows[1]["server_timing_responses"] == 2 and list(rows[1]["server_timing_ms"]) == ["queue", "total", "gpu"]
    assert rows[1]["server_timing_ms"]["total"] == {"p50": 20.5, "p90": pytest.approx(20.9), "n": 2}
    # The seed block's figures keep their keys.
    assert rows[1]["ok"] == 2 and rows[1]["ttfb_ms_p50"] == pytest.approx(50.0) and rows[1]["audio_s"] == 4.0

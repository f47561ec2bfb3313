"""``perf/plots.py`` and ``benchmark.py --plot``: figures of real runs (tiny model, CPU), redrawn from their JSON."""

from __future__ import annotations

import copy
import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

import benchmark
from perf import plots

ROOT = Path(__file__).resolve().parents[2]
PEER = "nano-vllm-voxcpm"


def _png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's header; fails on anything that is not a PNG."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert data[12:16] == b"IHDR" and data.rstrip(b"\x00").endswith(b"IEND\xaeB`\x82")
    return struct.unpack(">II", data[16:24])


def _series(ax, label: str) -> tuple[list[float], list[float]]:
    """The x and y data of the line drawn for ``label`` (exactly one)."""
    (line,) = [line for line in ax.get_lines() if line.get_label() == label]
    return [float(x) for x in line.get_xdata()], [float(y) for y in line.get_ydata()]


def _main_labels(ax) -> list[str]:
    return sorted(line.get_label() for line in ax.get_lines() if not line.get_label().startswith("_"))


@pytest.fixture(scope="module")
def closed_run(tiny_v1, tmp_path_factory) -> Path:
    """A real in-process sweep of two levels, two runs each: its ``--json`` (the figure is written beside it)."""
    work = tmp_path_factory.mktemp("closed")
    argv = ["--model", str(tiny_v1), "--device", "cpu", "--concurrency", "1", "2", "--steps", "2"]
    assert benchmark.main([*argv, "--repeats", "2", "--warmup", "0", "--json", str(work / "ours.json")]) == 0
    return work / "ours.json"


def _as_peer(data: dict, slower: float = 4.0) -> dict:
    """The same result as the peer would write it, ``slower`` times slower (the peer is not installed here)."""
    peer = copy.deepcopy({k: v for k, v in data.items() if k != "ours"})
    peer["peer"] = copy.deepcopy(data["ours"])
    for row in peer["peer"]:
        row["engine"] = PEER
        for key in ("ttfb_ms_p50", "ttfb_ms_p99"):
            row[key] *= slower
        row["audio_s_per_s"] /= slower
        row["spread"] = {
            k: [v * slower if "ttfb" in k else v / slower for v in pair] for k, pair in row["spread"].items()
        }
    return peer


def test_the_run_writes_a_png_beside_its_json(closed_run):
    figure = closed_run.with_suffix(".png")
    width, height = _png_size(figure)
    assert 900 <= width <= 2400 and 300 <= height <= 1200 and width > height
    assert figure.stat().st_size > 20_000  # drawn, not blank


def test_axes_carry_the_measured_levels_and_values(closed_run):
    data = plots.load_result(closed_run)
    fig = plots.figures([("ours", data)])["concurrency"]
    ttfa, tput = fig.axes
    levels = [float(r["concurrency"]) for r in data["ours"]]
    assert levels == [1.0, 2.0]
    assert _series(ttfa, "ours") == (levels, [r["ttfb_ms_p50"] for r in data["ours"]])
    assert _series(ttfa, "ours p99") == (levels, [r["ttfb_ms_p99"] for r in data["ours"]])
    assert _series(tput, "ours") == (levels, [r["audio_s_per_s"] for r in data["ours"]])
    assert _main_labels(tput) == ["ours"]  # one engine, one series
    assert [float(t) for t in tput.get_xticks()] == levels  # ticks at exactly the levels measured
    assert "2 patches each" in fig.get_suptitle()


def test_ours_beside_the_peer_from_two_json_files(closed_run, tmp_path):
    ours = plots.load_result(closed_run)
    peer = _as_peer(ours)
    (tmp_path / "peer.json").write_text(json.dumps(peer))
    for results in (
        [("ours", ours), ("peer", peer)],
        [("both", {**ours, "peer": peer["peer"]})],
    ):  # two files; --compare
        ttfa, tput = plots.figures(results)["concurrency"].axes
        assert _main_labels(tput) == sorted(["ours", PEER])
        for name, rows in (("ours", ours["ours"]), (PEER, peer["peer"])):
            assert _series(tput, name) == ([1.0, 2.0], [r["audio_s_per_s"] for r in rows])
            assert _series(ttfa, name) == ([1.0, 2.0], [r["ttfb_ms_p50"] for r in rows])
    # The command line redraws them from the files, onto one figure.
    out = tmp_path / "figs"
    assert plots.main([str(closed_run), str(tmp_path / "peer.json"), "--out", str(out), "--format", "png", "svg"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["ours-concurrency.png", "ours-concurrency.svg"]
    _png_size(out / "ours-concurrency.png")
    svg = (out / "ours-concurrency.svg").read_text()
    assert "<svg" in svg and PEER in svg


def test_the_same_engine_from_two_files_is_told_apart_by_file(closed_run):
    data = plots.load_result(closed_run)
    (_, tput) = plots.figures([("h100", data), ("h200", data)])["concurrency"].axes
    assert _main_labels(tput) == ["ours (h100)", "ours (h200)"]


def test_the_command_line_redraws_in_a_fresh_process(closed_run, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "perf.plots", str(closed_run), "--out", str(tmp_path), "--name", "cpu"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(tmp_path / "cpu-concurrency.png")]
    _png_size(tmp_path / "cpu-concurrency.png")
    (tmp_path / "cold.json").write_text(json.dumps({"meta": {}, "cold_start": []}))  # nothing to draw
    assert plots.main([str(tmp_path / "cold.json"), "--out", str(tmp_path / "none")]) == 1


def test_open_loop_figure_of_a_real_run(tiny_v1, tmp_path):
    out = tmp_path / "ol.json"
    argv = ["--model", str(tiny_v1), "--device", "cpu", "--mode", "open-loop", "--rates", "2", "5"]
    assert (
        benchmark.main(
            [*argv, "--duration", "1", "--steps", "2", "--json", str(out), "--plot", str(out.with_suffix(".svg"))]
        )
        == 0
    )
    assert "<svg" in out.with_suffix(".svg").read_text() and not out.with_suffix(".png").exists()
    data = plots.load_result(out)
    under, ttfa = plots.figures([("ol", data)])["open-loop"].axes
    rows = data["open_loop"]["ours"]
    assert _series(under, "ours") == ([2.0, 5.0], [100 * r["underrun_share"] for r in rows])
    assert _series(ttfa, "ours p99") == ([2.0, 5.0], [r["ttfb_ms_p99"] for r in rows])
    if data["capacity"]["ours"] is not None:  # the gap-free capacity is marked where there is one
        assert f"ours: gap-free ≥ {data['capacity']['ours']:g}/s" in _main_labels(under)


def test_session_figure_of_a_real_run(server, tmp_path):
    out = tmp_path / "s.json"
    argv = ["--mode", "session", "--server", server, "--concurrency", "1", "2", "--steps", "2", "--warmup", "0"]
    assert benchmark.main([*argv, "--repeats", "1", "--json", str(out)]) == 0
    _png_size(out.with_suffix(".png"))
    data = plots.load_result(out)
    first, gaps = plots.figures([("s", data)])["sessions"].axes
    by_level = {r["concurrency"]: r for r in data["session"]}
    assert _series(first, "first audio p50") == ([1.0, 2.0], [by_level[n]["first_audio_ms"]["p50"] for n in (1, 2)])
    assert _series(gaps, "gap at a join p99")[0] == [1.0, 2.0]


def test_plot_flags(tmp_path, monkeypatch, capsys):
    args = benchmark.parse_args(["--preset", "tiny-v1", "--json", str(tmp_path / "r.json")])
    assert args.plot == tmp_path / "r.png"  # beside --json by default
    assert benchmark.parse_args(["--preset", "tiny-v1", "--json", "r.json", "--no-plot"]).plot is None
    assert benchmark.parse_args(["--preset", "tiny-v1"]).plot is None  # no --json, no figure
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--preset", "tiny-v1", "--plot", "figure.jpg"])
    assert "must end in .png, .svg or .pdf" in capsys.readouterr().err
    # Without matplotlib: an asked-for figure is refused before the run; the default one is skipped after it.
    real = benchmark.importlib.util.find_spec
    monkeypatch.setattr(benchmark.importlib.util, "find_spec", lambda n, *a: None if n == "matplotlib" else real(n, *a))
    with pytest.raises(SystemExit) as exc:
        benchmark.parse_args(["--preset", "tiny-v1", "--plot", str(tmp_path / "f.png")])
    assert exc.value.code == 2 and "bench" in capsys.readouterr().err
    plots.draw_run(tmp_path / "f.png", {"ours": [{"concurrency": 1}]})
    assert "matplotlib is not installed" in capsys.readouterr().err and not (tmp_path / "f.png").exists()


def test_matplotlib_is_loaded_only_to_draw():
    code = (
        "import sys, benchmark, perf.plots, perf.drivers, voxcpm_engine.tools.say, voxcpm_engine.tools.synthetic\n"
        "import tts_server.app\n"
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported without drawing'\n"
        "perf.plots.figures([('x', {'http': [{'concurrency': 1, 'ttfb_ms_p50': 1.0, 'audio_s_per_s': 2.0}]})])\n"
        "assert 'matplotlib' in sys.modules\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr

"""Benchmark tooling behind ``benchmark.py``: FLOP model, metrics, drivers, HTTP client, reports, figures, profiling.

Modules:
    flops: model FLOPs per generated patch from a :class:`~voxcpm_engine.config.model_config.ModelConfig`, and the same
        counted with ``torch.utils.flop_counter`` on the real modules.
    metrics: per-request timelines and what they give (TTFB, RTF, gaps, underruns, percentiles).
    system: device name, peak FLOP/s table, peak memory, run metadata.
    drivers: the in-process closed-batch and open-loop drivers, generic over an engine adapter.
    local_engine: the adapter for our in-process engine, and the engine limits of a benchmark run.
    peer: the adapter for ``nano-vllm-voxcpm`` (same protocol, when it is importable).
    http_client: the streaming ``POST /generate`` load generator (its entry points).
    http_wire: its HTTP/1.1 client on raw asyncio streams, one request per call.
    http_workers: that client's runs spread over worker processes started together.
    server_timing: the ``Server-Timing`` header parser.
    server_modes: the HTTP and cold-start modes of ``benchmark.py`` (a running server; one it starts).
    cold_start: a server started on an empty, then a filled kernel cache, measured per level.
    report: the printed tables, and the run's strict JSON file.
    plots: the figures of a run, or of saved JSON runs (``python -m perf.plots``); matplotlib, loaded only to draw.
    profiling: where a step's time goes (``--profile``) and the IPC cost of the engine process.
"""

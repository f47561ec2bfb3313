"""Command line: synthesize one utterance, or a batch of them through the batched engine.

``python -m voxcpm_engine.tools.say --model DIR --text "..." --out a.wav [--seed N] [--prompt-wav F --prompt-text T]
[--ref-wav F] [--min-steps N] [--max-steps N] [--cfg-value X] [--timesteps N] [--device D]``

``python -m voxcpm_engine.tools.say --model DIR --batch REQUESTS.jsonl --out-dir DIR [--lora NAME=PATH ...]
[--device D]``:
every line (``id``, ``text``, optional ``seed``, ``min_steps``, ``max_steps``, ``lora``, ``prompt_wav``,
``prompt_text``, ``ref_wav``) runs through the batched engine at once; each result is written to ``<id>.wav``.
On a terminal a progress bar on stderr counts the finished requests and the seconds of audio made
(``VOXCPM_PROGRESS=1``/``0`` forces it on/off, see :mod:`voxcpm_engine.tools.progress`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from voxcpm_engine.config.engine_config import EngineConfig
from voxcpm_engine.engine import Engine
from voxcpm_engine.io.checkpoint import CheckpointError
from voxcpm_engine.single.synthesizer import Synthesizer
from voxcpm_engine.tools.progress import progress_bar
from voxcpm_engine.types import GenerationParams


def write_wav(path: Path, wav, sample_rate: int) -> None:
    """Write 16-bit PCM; the file appears complete or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    sf.write(str(partial), wav, sample_rate, subtype="PCM_16", format="WAV")
    os.replace(partial, path)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used by the docs)."""
    p = argparse.ArgumentParser(
        prog="python -m voxcpm_engine.tools.say", description="Synthesize speech with a VoxCPM checkpoint."
    )
    p.add_argument("--model", required=True, type=Path, help="checkpoint directory (official layout)")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--text", help="text to speak")
    mode.add_argument("--batch", type=Path, help="JSONL file of requests for the batched engine")
    p.add_argument("--out", type=Path, help="output wav file (with --text)")
    p.add_argument("--out-dir", type=Path, help="output directory (with --batch): one <id>.wav per request")
    p.add_argument("--seed", type=int, default=None, help="random seed (same seed, same audio)")
    p.add_argument("--min-steps", type=int, default=2, help="steps before the model may stop (default 2)")
    p.add_argument("--max-steps", type=int, default=None, help="most steps (default: 6 x target tokens + 10)")
    p.add_argument("--cfg-value", type=float, default=2.0, help="guidance scale (default 2.0)")
    p.add_argument("--timesteps", type=int, default=10, help="flow sampler steps per patch (default 10)")
    p.add_argument("--temperature", type=float, default=1.0, help="initial-noise scale (default 1.0)")
    p.add_argument("--prompt-wav", type=Path, help="voice prompt audio to continue (needs --prompt-text)")
    p.add_argument("--prompt-text", help="transcript of --prompt-wav")
    p.add_argument("--ref-wav", type=Path, help="reference voice recording (VoxCPM2 only)")
    p.add_argument(
        "--lora", action="append", default=[], metavar="NAME=PATH", help="LoRA voice for --batch lines (repeatable)"
    )
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.batch is not None:
        if args.out_dir is None:
            parser.error("--batch needs --out-dir")
        return run_batch(args)
    if args.out is None:
        parser.error("--text needs --out")
    try:
        params = GenerationParams(
            cfg_value=args.cfg_value,
            inference_timesteps=args.timesteps,
            min_steps=args.min_steps,
            max_steps=args.max_steps,
            temperature=args.temperature,
            seed=args.seed,
        )
        synth = Synthesizer.from_dir(args.model, device=args.device)
        voice = synth.make_voice(
            prompt_text=args.prompt_text,
            prompt_audio=args.prompt_wav,
            ref_audio=args.ref_wav,
        )
        start = time.perf_counter()
        wav = synth.generate(args.text, voice, params)
        elapsed = time.perf_counter() - start
    except (CheckpointError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    write_wav(args.out, wav, synth.sample_rate)
    seconds = len(wav) / synth.sample_rate
    rtf = elapsed / max(seconds, 1e-9)
    print(f"wrote {args.out}: {seconds:.2f} s at {synth.sample_rate} Hz in {elapsed:.2f} s (RTF {rtf:.3f})")
    return 0


def run_batch(args: argparse.Namespace) -> int:
    """Send every line of the JSONL file through the batched engine together."""
    try:
        jobs = read_batch_file(args.batch)
        loras = dict(parse_lora_arg(item) for item in args.lora)
        for job in jobs:
            if job.get("lora") is not None and job["lora"] not in loras:
                raise ValueError(f"{args.batch}: request {job['id']!r} uses lora {job['lora']!r}, not given by --lora")
        config = EngineConfig(max_num_seqs=max(1, min(len(jobs), 64)), max_loras=len(loras))
        engine = Engine.from_dir(args.model, config, args.device)
        for name, path in loras.items():
            engine.register_voice(name, path)
        for job in jobs:
            voice = engine.frontend.make_voice(
                prompt_text=job.get("prompt_text"), prompt_audio=job.get("prompt_wav"), ref_audio=job.get("ref_wav")
            )
            params = GenerationParams(
                min_steps=job.get("min_steps", args.min_steps),
                max_steps=job.get("max_steps", args.max_steps),
                seed=job.get("seed", args.seed),
                cfg_value=args.cfg_value,
                inference_timesteps=args.timesteps,
                temperature=args.temperature,
            )
            engine.add_request(job["id"], job["text"], voice, params, lora=job.get("lora"))
        start = time.perf_counter()
        chunks: dict[str, list] = {job["id"]: [] for job in jobs}
        audio_s, shown = 0.0, start
        # Requests finish one by one as their lengths run out; the bar counts them and the audio made so far.
        with progress_bar(len(jobs), desc="synthesizing", unit="req") as bar:
            while engine.has_unfinished():
                done = 0
                for out in engine.step():
                    chunks[out.request_id].append(out.audio)
                    if out.audio is not None:
                        audio_s += len(out.audio) / engine.sample_rate
                    done += out.finished
                bar.set_postfix_str(f"{audio_s:.1f} s of audio", refresh=False)
                if done:
                    bar.update(done)
                elif time.perf_counter() - shown > 0.5:  # long requests: the audio count moves before one ends
                    bar.refresh()
                    shown = time.perf_counter()
        elapsed = time.perf_counter() - start
    except (CheckpointError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    total = 0.0
    for rid, parts in chunks.items():
        wav = np.concatenate([p for p in parts if p is not None])
        write_wav(args.out_dir / f"{rid}.wav", wav, engine.sample_rate)
        total += len(wav) / engine.sample_rate
    print(f"wrote {len(chunks)} files to {args.out_dir}: {total:.2f} s of audio in {elapsed:.2f} s")
    return 0


def parse_lora_arg(item: str) -> tuple[str, Path]:
    """``NAME=PATH`` of ``--lora``."""
    name, sep, path = item.partition("=")
    if not sep or not _ID.match(name) or not path:
        raise ValueError(f"--lora {item!r}: expected NAME=PATH with a name of letters, digits, '.', '_', '-'")
    return name, Path(path)


_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_INT_FIELDS = ("seed", "min_steps", "max_steps")
_STR_FIELDS = ("text", "prompt_text", "prompt_wav", "ref_wav", "lora")


def read_batch_file(path: Path) -> list[dict]:
    """Parse and validate a JSONL batch file; errors name the line and the field."""
    jobs, seen = [], set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            job = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: invalid JSON ({exc.msg})") from exc
        if not isinstance(job, dict):
            raise ValueError(f"{where}: expected a JSON object")
        rid = job.get("id")
        if not isinstance(rid, str) or not _ID.match(rid):
            raise ValueError(f"{where}: id must be 1-128 characters of letters, digits, '.', '_', '-'")
        if rid in seen:
            raise ValueError(f"{where}: id {rid!r} appears twice")
        seen.add(rid)
        if not isinstance(job.get("text"), str):
            raise ValueError(f"{where}: text is required and must be a string")
        for name in _INT_FIELDS:
            if name in job and (not isinstance(job[name], int) or isinstance(job[name], bool)):
                raise ValueError(f"{where}: {name} must be an integer")
        for name in _STR_FIELDS:
            if name in job and not isinstance(job[name], str):
                raise ValueError(f"{where}: {name} must be a string")
        jobs.append(job)
    if not jobs:
        raise ValueError(f"{path}: no requests")
    return jobs


if __name__ == "__main__":
    sys.exit(main())

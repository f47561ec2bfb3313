"""Command line: synthesize one utterance to a wav file.

``python -m engine.say --model DIR --text "..." --out a.wav [--seed N] [--prompt-wav F --prompt-text T]
[--ref-wav F] [--min-steps N] [--max-steps N] [--cfg-value X] [--timesteps N] [--device D]``
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import soundfile as sf

from engine.loader import CheckpointError
from engine.pipeline import GenerationParams, Synthesizer


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used by the docs)."""
    p = argparse.ArgumentParser(prog="python -m engine.say", description="Synthesize speech with a VoxCPM checkpoint.")
    p.add_argument("--model", required=True, type=Path, help="checkpoint directory (official layout)")
    p.add_argument("--text", required=True, help="text to speak")
    p.add_argument("--out", required=True, type=Path, help="output wav file")
    p.add_argument("--seed", type=int, default=None, help="random seed (same seed, same audio)")
    p.add_argument("--min-steps", type=int, default=2, help="steps before the model may stop (default 2)")
    p.add_argument("--max-steps", type=int, default=None, help="most steps (default: 6 x target tokens + 10)")
    p.add_argument("--cfg-value", type=float, default=2.0, help="guidance scale (default 2.0)")
    p.add_argument("--timesteps", type=int, default=10, help="flow sampler steps per patch (default 10)")
    p.add_argument("--temperature", type=float, default=1.0, help="initial-noise scale (default 1.0)")
    p.add_argument("--prompt-wav", type=Path, help="voice prompt audio to continue (needs --prompt-text)")
    p.add_argument("--prompt-text", help="transcript of --prompt-wav")
    p.add_argument("--ref-wav", type=Path, help="reference voice recording (VoxCPM2 only)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    args = build_parser().parse_args(argv)
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
    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_name(f".{args.out.name}.partial")
    sf.write(str(partial), wav, synth.sample_rate, subtype="PCM_16", format="WAV")
    os.replace(partial, args.out)  # the output appears complete or not at all
    seconds = len(wav) / synth.sample_rate
    rtf = elapsed / max(seconds, 1e-9)
    print(f"wrote {args.out}: {seconds:.2f} s at {synth.sample_rate} Hz in {elapsed:.2f} s (RTF {rtf:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A voice agent's side of ``/v1/tts/stream``: stream a reply token by token, hear it as it is written.

It plays an LLM: the reply goes out a token (a word or part of one) at a time with random delays,
the server speaks each sentence as soon as its end is certain, and the audio is written to a WAV
file as it arrives (and played with ``--play`` through ``aplay``, ``paplay`` or ``ffplay`` where one
is installed). Every event is printed with the time since the first token, and at the end the time
to first audio, each segment's timing and the real-time factor.

Examples::

    python example_agent.py --out reply.wav
    python example_agent.py --text "Hi there. How can I help you today?" --voice alice --play
    python example_agent.py --barge-in 1.5 --out cut.wav   # the caller talks over the agent after 1.5 s of audio

``--barge-in S`` sends ``clear`` once S seconds of audio have arrived (as a voice agent does when it
hears the caller), then a short second reply, as an agent answers the interruption. A refused
connection (401, 503 with Retry-After) or a fatal ``error`` event exits non-zero with the message.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import shutil
import subprocess
import sys
import time
import wave
from pathlib import Path
from typing import Any

REPLY = (
    "Thanks for waiting! I checked your order, number 4521, and it left our warehouse this morning. "
    "It should reach you on Thursday, between 9 and 11 a.m. Is there anything else I can help with?"
)
AFTER_BARGE_IN = "Sorry, go ahead."
PLAYERS = (
    ("aplay", ["-q", "-t", "raw", "-f", "S16_LE", "-c", "1", "-r", "{rate}"]),
    ("paplay", ["--raw", "--format=s16le", "--channels=1", "--rate={rate}"]),
    (
        "ffplay",
        ["-loglevel", "error", "-nodisp", "-autoexit", "-f", "s16le", "-ch_layout", "mono", "-ar", "{rate}", "-"],
    ),
)


def tokens(text: str, rng: random.Random) -> list[str]:
    """Split like an LLM's tokenizer would, roughly: words with their leading space, long words in pieces."""
    out = []
    for word in re.findall(r"\s*\S+", text):
        while len(word) > 6:
            cut = rng.randint(3, 6)
            out.append(word[:cut])
            word = word[cut:]
        out.append(word)
    return out


def player(rate: int) -> subprocess.Popen[bytes] | None:
    """A process that plays s16le mono PCM from its stdin, if a player is installed."""
    for name, args in PLAYERS:
        if path := shutil.which(name):
            return subprocess.Popen([path, *(a.format(rate=rate) for a in args)], stdin=subprocess.PIPE)
    print("no audio player found (aplay, paplay, ffplay): writing the file only", file=sys.stderr)
    return None


class Agent:
    """One session: sends the reply, receives events and audio, records timings."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.t0 = 0.0
        self.rate = 0
        self.samples = 0
        self.first_audio: float | None = None
        self.wav: wave.Wave_write | None = None
        self.play: subprocess.Popen[bytes] | None = None
        self.barged = asyncio.Event()  # the caller spoke over the reply
        self.answered = False  # the interruption was answered: no second barge-in
        self.failed: str | None = None

    def log(self, what: str) -> None:
        print(f"{time.monotonic() - self.t0:7.3f} s  {what}", flush=True)

    def on_audio(self, pcm: bytes) -> None:
        if self.first_audio is None:
            self.first_audio = time.monotonic() - self.t0
            self.log(f"first audio ({len(pcm) // 2} samples)")
        self.samples += len(pcm) // 2
        assert self.wav is not None
        self.wav.writeframes(pcm)
        if self.play is not None and self.play.stdin is not None:
            self.play.stdin.write(pcm)
        if self.args.barge_in is not None and self.samples >= self.args.barge_in * self.rate and not self.answered:
            self.barged.set()

    def on_event(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind == "started":
            self.rate = event["sample_rate"]
            self.wav = wave.open(str(self.args.out), "wb")  # closed in run()
            self.wav.setnchannels(1)
            self.wav.setsampwidth(2)
            self.wav.setframerate(self.rate)
            self.play = player(self.rate) if self.args.play else None
        if kind == "error" and event["fatal"]:
            self.failed = f"{event['code']}: {event['message']}"
        detail = {k: v for k, v in event.items() if k != "type"}
        self.log(f"{kind} {json.dumps(detail) if detail else ''}")

    async def receive(self, ws: Any) -> None:
        async for message in ws:
            if isinstance(message, bytes):
                self.on_audio(message)
            else:
                self.on_event(json.loads(message))

    async def send_reply(self, ws: Any, text: str, rng: random.Random) -> None:
        for token in tokens(text, rng):
            if self.barged.is_set():
                return
            await ws.send(json.dumps({"type": "text", "text": token}))
            await asyncio.sleep(rng.uniform(0, 2 * self.args.token_delay))

    async def run(self) -> int:
        from websockets.asyncio.client import connect
        from websockets.exceptions import InvalidStatus

        args = self.args
        url = args.server.rstrip("/").replace("http", "ws", 1) + "/v1/tts/stream"
        headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
        start: dict[str, Any] = {"type": "start", "format": "pcm", "voice": args.voice, "seed": args.seed}
        if args.max_generate_length:
            start["max_generate_length"] = args.max_generate_length
        rng = random.Random(args.seed)
        try:
            async with connect(url, additional_headers=headers, max_size=None) as ws:
                self.t0 = time.monotonic()
                await ws.send(json.dumps({k: v for k, v in start.items() if v is not None}))
                receiver = asyncio.create_task(self.receive(ws))
                await self.send_reply(ws, args.text, rng)
                if self.barged.is_set() or args.barge_in is not None:
                    await ws.send(json.dumps({"type": "flush"}))
                    await asyncio.wait(
                        {receiver, asyncio.create_task(self.barged.wait())}, return_when="FIRST_COMPLETED"
                    )
                    self.log("caller speaks: clear")
                    await ws.send(json.dumps({"type": "clear"}))
                    self.answered = True
                    self.barged.clear()
                    await self.send_reply(ws, AFTER_BARGE_IN, random.Random(0))
                await ws.send(json.dumps({"type": "close"}))
                await receiver
        except InvalidStatus as exc:
            response = exc.response
            print(f"refused: HTTP {response.status_code} {response.body.decode(errors='replace')}", file=sys.stderr)
            return 1
        finally:
            if self.wav is not None:
                self.wav.close()
            if self.play is not None and self.play.stdin is not None:
                self.play.stdin.close()
                self.play.wait()
        if self.failed:
            print(f"session failed: {self.failed}", file=sys.stderr)
            return 1
        seconds = self.samples / self.rate if self.rate else 0.0
        wall = time.monotonic() - self.t0
        first = f"{self.first_audio * 1e3:.0f} ms" if self.first_audio is not None else "none"
        print(f"first audio {first} after the first token; {seconds:.2f} s of audio in {wall:.2f} s -> {args.out}")
        return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--server", default="http://127.0.0.1:8000", help="server base URL")
    ap.add_argument("--text", default=REPLY, help="the reply the 'LLM' writes")
    ap.add_argument("--voice", help="a registered voice (default: the server's)")
    ap.add_argument("--out", type=Path, default=Path("agent.wav"), help="WAV file written as audio arrives")
    ap.add_argument("--play", action="store_true", help="also play the audio (aplay, paplay or ffplay)")
    ap.add_argument("--token-delay", type=float, default=0.03, help="mean seconds between tokens (default 0.03)")
    ap.add_argument("--barge-in", type=float, help="send clear after this many seconds of audio")
    ap.add_argument("--max-generate-length", type=int, help="most patches per segment")
    ap.add_argument("--seed", type=int, default=0, help="token timing and sampling seed")
    ap.add_argument("--api-key", help="API key, if the server has one")
    return asyncio.run(Agent(ap.parse_args(argv)).run())


if __name__ == "__main__":
    sys.exit(main())

"""Stream speech from a running ``tts_server`` to a wav or mp3 file, printing TTFB and RTF.

Examples::

    python example.py --text "Hello from VoxCPM." --out hello.wav
    python example.py --list-voices
    python example.py --voice alice --text "Hi." --out hi.mp3
    python example.py --text "A long story ..." --max-generate-length 500 --cancel-after 1.0 --out cut.wav

The audio is written as it arrives. A streamed WAV carries placeholder sizes in its header (the
length is unknown when it is sent); once the stream ends they are patched so that any reader
accepts the file. ``--cancel-after`` sends ``POST /cancel`` with this request's id while the audio
streams, and reports that the stream ended as cancelled. HTTP errors exit non-zero with the
server's error message.
"""

from __future__ import annotations

import argparse
import struct
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

FORMATS = {".wav": "wav", ".mp3": "mp3"}
WAV_HEADER_BYTES = 44  # the server's streamed WAV header: RIFF + fmt (16 bytes) + data chunk header


class ClientError(Exception):
    """A failure to report to the user (exit status 1)."""


@dataclass
class StreamResult:
    """What one streamed generation gave."""

    request_id: str
    path: Path
    sample_rate: int
    body_bytes: int
    ttfb_s: float | None
    total_s: float
    audio_s: float | None
    cancelled: bool

    @property
    def rtf(self) -> float | None:
        """Real-time factor: wall time over audio time (below 1: faster than real time)."""
        return self.total_s / self.audio_s if self.audio_s else None


def error_message(response: httpx.Response) -> str:
    """The server's JSON error message of ``response`` (``{"error": {"message": ...}}``), else its text."""
    try:
        body: Any = response.json()
    except ValueError:
        return response.text.strip() or response.reason_phrase
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("message", body["error"]))
    return str(body)


def check(response: httpx.Response) -> None:
    """Raise :class:`ClientError` with the server's message on an HTTP error status."""
    if response.is_error:
        raise ClientError(f"HTTP {response.status_code} from {response.request.url.path}: {error_message(response)}")


def list_voices(client: httpx.Client) -> list[str]:
    """The names of the server's registered voices."""
    response = client.get("/voices")
    check(response)
    return list(response.json()["voices"])


def patch_wav_sizes(path: Path) -> None:
    """Replace the placeholder RIFF and data sizes of a streamed WAV file with the real ones."""
    size = path.stat().st_size
    if size < WAV_HEADER_BYTES:
        return
    with path.open("r+b") as f:
        header = f.read(WAV_HEADER_BYTES)
        if header[:4] != b"RIFF" or header[36:40] != b"data":
            return  # not the layout this client knows; leave it alone
        data_bytes = size - WAV_HEADER_BYTES
        data_bytes -= data_bytes % 2  # whole 16-bit samples
        f.seek(4)
        f.write(struct.pack("<I", min(WAV_HEADER_BYTES - 8 + data_bytes, 0xFFFFFFFF)))
        f.seek(40)
        f.write(struct.pack("<I", min(data_bytes, 0xFFFFFFFF)))


def audio_seconds(path: Path, fmt: str, sample_rate: int) -> float | None:
    """Duration of the audio in ``path`` (None when it cannot be read)."""
    if fmt == "wav":
        return max(path.stat().st_size - WAV_HEADER_BYTES, 0) / 2 / sample_rate if sample_rate else None
    try:
        import soundfile

        return float(soundfile.info(str(path)).duration)
    except Exception:  # the duration is informative only
        return None


def cancel(client: httpx.Client, request_id: str) -> str:
    """``POST /cancel`` for ``request_id``; returns the server's status (``cancelled`` or ``not_found``)."""
    response = client.post("/cancel", json={"request_id": request_id})
    check(response)
    return str(response.json()["status"])


def stream_speech(
    client: httpx.Client, body: dict[str, Any], out: Path, cancel_after: float | None = None
) -> StreamResult:
    """POST ``body`` to ``/generate`` and write the streamed audio to ``out``.

    Args:
        client: A client with the server's base URL (and key).
        body: The request body; ``request_id`` is set here when absent.
        out: The output file.
        cancel_after: Seconds after sending at which to cancel the request by its id.

    Raises:
        ClientError: The server answered an error status (unless it was this client's cancellation).
    """
    fmt = body["response_format"]
    rid = body.setdefault("request_id", uuid.uuid4().hex)
    cancel_status: list[str] = []
    timer: threading.Timer | None = None
    if cancel_after is not None:
        timer = threading.Timer(cancel_after, lambda: cancel_status.append(cancel(client, rid)))
    start = time.perf_counter()
    ttfb: float | None = None
    received = 0
    try:
        if timer is not None:
            timer.start()
        with client.stream("POST", "/generate", json=body) as response:
            if response.is_error:
                response.read()
                if response.status_code == 409 and cancel_status == ["cancelled"]:
                    return StreamResult(rid, out, 0, 0, None, time.perf_counter() - start, None, True)
                check(response)
            rate = int(response.headers.get("X-Sample-Rate", "0"))
            with out.open("wb") as f:
                for chunk in response.iter_bytes():
                    if not chunk:
                        continue
                    received += len(chunk)
                    if ttfb is None and (fmt != "wav" or received > WAV_HEADER_BYTES):
                        ttfb = time.perf_counter() - start
                    f.write(chunk)
    finally:
        if timer is not None:
            timer.cancel()
            timer.join()
    total = time.perf_counter() - start
    if fmt == "wav":
        patch_wav_sizes(out)
    cancelled = cancel_status == ["cancelled"]
    return StreamResult(rid, out, rate, received, ttfb, total, audio_seconds(out, fmt, rate), cancelled)


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--server", default="http://127.0.0.1:8000", help="Server URL (default %(default)s).")
    p.add_argument("--api-key", default=None, help="API key, sent as `Authorization: Bearer <key>`.")
    p.add_argument("--text", default="Hello! This is VoxCPM speaking, streamed as it is made.", help="Text to speak.")
    p.add_argument("--voice", default=None, help="A registered voice (see --list-voices); default: zero-shot.")
    p.add_argument("--out", type=Path, default=Path("out.wav"), help="Output file, .wav or .mp3 (default out.wav).")
    p.add_argument("--temperature", type=float, default=None, help="Sampler temperature.")
    p.add_argument("--cfg-value", type=float, default=None, help="Classifier-free guidance scale.")
    p.add_argument("--max-generate-length", type=int, default=None, help="Most patches per segment.")
    p.add_argument("--cancel-after", type=float, default=None, metavar="SECONDS", help="Cancel mid-stream.")
    p.add_argument("--list-voices", action="store_true", help="List the server's voices and exit.")
    p.add_argument("--timeout", type=float, default=300.0, help="HTTP timeout in seconds (default %(default)s).")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the client; returns the exit status."""
    args = build_parser().parse_args(argv)
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    try:
        with httpx.Client(base_url=args.server, headers=headers, timeout=args.timeout) as client:
            if args.list_voices:
                voices = list_voices(client)
                print("\n".join(voices) if voices else "(no voices registered)")
                return 0
            fmt = FORMATS.get(args.out.suffix.lower())
            if fmt is None:
                raise ClientError(f"--out: use a .wav or .mp3 file name, not {args.out.name!r}")
            body: dict[str, Any] = {"target_text": args.text, "response_format": fmt, "stream": True}
            optional = {
                "voice": args.voice,
                "temperature": args.temperature,
                "cfg_value": args.cfg_value,
                "max_generate_length": args.max_generate_length,
            }
            body.update({k: v for k, v in optional.items() if v is not None})
            result = stream_speech(client, body, args.out, args.cancel_after)
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except httpx.HTTPError as exc:
        print(f"error: cannot talk to {args.server}: {exc}", file=sys.stderr)
        return 1
    print(f"request id: {result.request_id}")
    print(f"TTFB: {result.ttfb_s * 1000:.0f} ms" if result.ttfb_s is not None else "TTFB: - (no audio)")
    audio = f"{result.audio_s:.2f} s of audio" if result.audio_s is not None else "audio length unknown"
    print(f"total: {result.total_s:.2f} s, {result.body_bytes} bytes, {audio}")
    print(f"RTF: {result.rtf:.3f}" if result.rtf is not None else "RTF: -")
    if result.cancelled:
        print(f"stream ended: cancelled (request {result.request_id}) after {result.total_s:.2f} s")
    else:
        print("stream ended: complete")
    print(f"wrote {result.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The on-disk format of named voices (used by :mod:`tts_server.voices.store`; blocking: call in threads).

One directory per voice, written whole or not at all::

    <voices_dir>/<name>/voice.json                  format version, kinds, prompt_text, seconds,
                                                    created/updated, the model it was made for,
                                                    sha256 of every file below
                        prompt_latents.safetensors  {"latents": float32 [T, P, D]}
                        ref_latents.safetensors     {"latents": float32 [R, P, D]}
                        lora/lora_weights.safetensors + lora/lora_config.json

A change is staged in ``.staging.<name>.<random>`` (files and directories fsynced), then committed
by one rename (a new voice), one atomic exchange of the two directories (a replace:
``renameat2(RENAME_EXCHANGE)``; two renames via ``.replaced.*`` where the filesystem lacks it) or a
rename to ``.removed.*`` (a removal). :func:`recover` finishes or rolls back whatever a crash
interrupted, and every file is checked against its sha256 when read, so a half-written or damaged
voice never loads. Only JSON and safetensors are read, never pickle; symlinks are never followed.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import Tensor

__all__ = [
    "FORMAT_VERSION", "LORA_DIR", "NAME_PATTERN", "VoiceFileError", "VoiceFiles",
    "commit", "discard", "read_voice", "recover", "remove_tree", "stage",
]  # fmt: skip

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
VOICE_FILE, PROMPT_FILE, REF_FILE = "voice.json", "prompt_latents.safetensors", "ref_latents.safetensors"
LORA_DIR, LORA_WEIGHTS, LORA_CONFIG = "lora", "lora_weights.safetensors", "lora_config.json"
MAX_JSON_BYTES = 1 << 20
_STAGING, _REPLACED, _REMOVED = ".staging.", ".replaced.", ".removed."


class VoiceFileError(ValueError):
    """A voice directory that cannot be loaded (the message says why)."""


@dataclass(frozen=True)
class VoiceFiles:
    """What :func:`read_voice` found: the document, the latents (unchecked shapes) and the adapter dir."""

    doc: dict[str, Any]
    prompt_latents: Tensor | None
    ref_latents: Tensor | None
    lora_dir: Path | None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes) -> str:
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return hashlib.sha256(data).hexdigest()


def _read_file(path: Path, files: dict[str, Any], key: str) -> bytes:
    """A regular file (never through a symlink), checked against its recorded sha256."""
    if not stat.S_ISREG(os.lstat(path).st_mode):
        raise VoiceFileError(f"{key} is not a regular file")
    data = path.read_bytes()
    if files.get(key) != hashlib.sha256(data).hexdigest():
        raise VoiceFileError(f"{key} does not match its sha256 in {VOICE_FILE} (truncated or modified)")
    return data


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directory entries atomically (Linux ``renameat2``); False where unsupported."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(-100, os.fsencode(a), -100, os.fsencode(b), 2) == 0:  # AT_FDCWD, RENAME_EXCHANGE
        return True
    err = ctypes.get_errno()
    if err in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: this filesystem cannot; fall back
        return False
    raise OSError(err, os.strerror(err), str(a))


def stage(
    root: Path, name: str, doc: dict[str, Any], latents: dict[str, Tensor], lora: tuple[bytes, bytes] | None
) -> Path:
    """Write a complete voice into a new staging directory under ``root``; returns it.

    Args:
        root: The voices directory.
        name: The voice's name (only used to name the staging directory).
        doc: ``voice.json`` without ``files`` (added here: the sha256 of each file written).
        latents: ``"prompt"`` and/or ``"reference"`` → float32 tensor.
        lora: ``(lora_weights.safetensors bytes, lora_config.json bytes)`` or None.
    """
    tmp = Path(tempfile.mkdtemp(prefix=f"{_STAGING}{name}.", dir=root))
    try:
        files: dict[str, str] = {}
        for kind, tensor in latents.items():
            fname = PROMPT_FILE if kind == "prompt" else REF_FILE
            files[fname] = _write_file(tmp / fname, save_safetensors({"latents": tensor.contiguous()}))
        if lora is not None:
            (tmp / LORA_DIR).mkdir()
            for fname, data in zip((LORA_WEIGHTS, LORA_CONFIG), lora, strict=True):
                files[f"{LORA_DIR}/{fname}"] = _write_file(tmp / LORA_DIR / fname, data)
            _fsync_dir(tmp / LORA_DIR)
        _write_file(tmp / VOICE_FILE, json.dumps({**doc, "files": files}, indent=2).encode())
        _fsync_dir(tmp)
        return tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # the error itself propagates
        raise


def commit(root: Path, staging: Path, final: Path) -> None:
    """Put ``staging`` at ``final``; a voice that was there ends up at ``staging`` (exchange) or deleted."""
    if not os.path.lexists(final):
        os.rename(staging, final)
    elif not _exchange(staging, final):
        trash = root / f"{_REPLACED}{final.name}.{uuid.uuid4().hex[:8]}"
        os.rename(final, trash)
        try:
            os.rename(staging, final)
        except BaseException:
            os.rename(trash, final)
            raise
        _fsync_dir(root)
        remove_tree(trash)
    _fsync_dir(root)


def discard(root: Path, path: Path) -> None:
    """Remove a voice directory: gone in one rename, deleted after."""
    trash = root / f"{_REMOVED}{path.name}.{uuid.uuid4().hex[:8]}"
    os.rename(path, trash)
    _fsync_dir(root)
    remove_tree(trash)


def remove_tree(path: Path) -> None:
    """Delete a leftover directory. Failing to is logged, not raised: the change it belonged to is
    complete, and :func:`recover` deletes leftovers at the next start."""
    try:
        if path.is_symlink() or path.is_file():  # e.g. a removed voice that was a symlink: drop the link only
            path.unlink()
        elif path.exists():
            shutil.rmtree(path)
    except OSError:
        log.warning("could not delete %s; it is removed at the next start", path, exc_info=True)


def recover(root: Path) -> list[str]:
    """Finish or roll back interrupted changes (only at start); returns the voice names found, sorted."""
    names = []
    for entry in sorted(os.listdir(root)):
        path = root / entry
        if entry.startswith((_STAGING, _REMOVED)):
            log.info("voices: deleting %s left by an interrupted change", entry)
            remove_tree(path)
        elif entry.startswith(_REPLACED):
            name = entry[len(_REPLACED) :].rpartition(".")[0]
            if NAME_PATTERN.fullmatch(name) and not os.path.lexists(root / name):
                log.warning("voices: restoring %r from %s (a replace was interrupted)", name, entry)
                os.rename(path, root / name)
                names.append(name)
            else:
                remove_tree(path)
        elif NAME_PATTERN.fullmatch(entry) and ".." not in entry and not path.is_file():
            names.append(entry)  # a symlink is listed too: it fails to load, with the reason logged
        elif not entry.startswith("."):
            log.warning("voices: ignoring %s (not a valid voice name)", path)
    return sorted(set(names))


def read_voice(path: Path, model: dict[str, int]) -> VoiceFiles:
    """Read and check one voice directory (documents, hashes, kinds, the model it was made for).

    Raises:
        VoiceFileError, OSError, ValueError: The directory is not a complete, intact voice of this
            format for ``model`` (safetensors' own errors are ``Exception`` subclasses too).
    """
    if not stat.S_ISDIR(os.lstat(path).st_mode):
        raise VoiceFileError("not a directory (symbolic links are not followed)")
    st = os.lstat(path / VOICE_FILE)
    if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_JSON_BYTES:
        raise VoiceFileError(f"{VOICE_FILE} is not a regular file of at most {MAX_JSON_BYTES} bytes")
    doc = json.loads((path / VOICE_FILE).read_bytes())
    if not isinstance(doc, dict) or doc.get("format") != FORMAT_VERSION:
        raise VoiceFileError(f"{VOICE_FILE}: not a format {FORMAT_VERSION} voice document")
    if doc.get("model") != model:
        raise VoiceFileError(f"made for model {doc.get('model')}, this server runs {model}")
    files, kinds = doc.get("files"), doc.get("kinds")
    if not isinstance(files, dict) or not isinstance(kinds, dict) or not any(kinds.values()):
        raise VoiceFileError(f"{VOICE_FILE}: missing files/kinds")
    latents: dict[str, Tensor | None] = {"prompt": None, "reference": None}
    for kind, fname in (("prompt", PROMPT_FILE), ("reference", REF_FILE)):
        if kinds.get(kind):
            tensors = load_safetensors(_read_file(path / fname, files, fname))
            if set(tensors) != {"latents"}:
                raise VoiceFileError(f"{fname}: expected one tensor 'latents', got {sorted(tensors)}")
            latents[kind] = tensors["latents"]
    text = doc.get("prompt_text")
    if latents["prompt"] is not None and (not isinstance(text, str) or not text.strip()):
        raise VoiceFileError(f"{VOICE_FILE}: a prompt needs its prompt_text")
    lora_dir = None
    if kinds.get("lora"):
        lora_dir = path / LORA_DIR
        expected = sorted((LORA_CONFIG, LORA_WEIGHTS))  # never a .ckpt: the engine would unpickle it
        if lora_dir.is_symlink() or not lora_dir.is_dir() or sorted(os.listdir(lora_dir)) != expected:
            raise VoiceFileError(f"{LORA_DIR}/ must hold exactly {LORA_WEIGHTS} and {LORA_CONFIG}")
        for fname in (LORA_WEIGHTS, LORA_CONFIG):
            _read_file(lora_dir / fname, files, f"{LORA_DIR}/{fname}")
    return VoiceFiles(doc, latents["prompt"], latents["reference"], lora_dir)

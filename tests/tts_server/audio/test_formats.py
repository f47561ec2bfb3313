"""The response-format table (the encoders themselves are tested in ``test_audio_formats.py``)."""

from __future__ import annotations

import pytest

from tts_server.audio.formats import FORMATS, FormatInfo


def test_formats_table() -> None:
    assert set(FORMATS) == {"pcm", "wav", "mp3", "flac", "opus", "aac"}
    for name, info in FORMATS.items():
        assert isinstance(info, FormatInfo) and info.name == name and info.media_type.startswith("audio/")
    assert FORMATS["mp3"].media_type == "audio/mpeg"
    with pytest.raises(AttributeError):
        FORMATS["wav"].name = "x"  # type: ignore[misc]

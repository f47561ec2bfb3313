"""The /v1/tts/stream messages: parsing with errors that name the field, events, and the published schema."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from tts_server.errors import ApiError
from tts_server.http.stream_messages import (
    StartMessage,
    TextMessage,
    event_message,
    parse_client_message,
    protocol_schema,
)
from tts_server.jobs.session_events import (
    Cleared,
    Flushed,
    SegmentAudio,
    SegmentDone,
    SegmentStarted,
    SegmentTiming,
    SessionEnded,
    SessionFailed,
    SessionInputError,
    SessionProblem,
    SessionWarning,
)

SCHEMA_FILE = Path(__file__).resolve().parents[3] / "docs" / "stream_protocol.schema.json"


def test_messages_parse():
    start = parse_client_message('{"type": "start", "voice": "amy", "format": "opus", "seed": 3}')
    assert isinstance(start, StartMessage) and (start.voice, start.format, start.seed) == ("amy", "opus", 3)
    assert parse_client_message('{"type": "text", "text": " tok"}') == TextMessage(type="text", text=" tok")
    assert parse_client_message('{"type": "flush"}').type == "flush"


@pytest.mark.parametrize(
    ("raw", "field", "says"),
    [
        ("{", None, "not JSON"),
        ("[1]", "type", "JSON object with a type"),
        ('{"text": "x"}', "type", "JSON object with a type"),
        ('{"type": "shout"}', "type", ""),
        ('{"type": "text"}', "text", "Field required"),
        ('{"type": "text", "text": 3}', "text", ""),
        ('{"type": "flush", "now": true}', "now", "Extra inputs"),
        ('{"type": "start", "format": "flac"}', "format", ""),
        ('{"type": "start", "temperature": -1}', "temperature", ""),
        ('{"type": "start", "request_id": "a b"}', "request_id", ""),
    ],
)
def test_bad_messages_name_the_field(raw, field, says):
    with pytest.raises(SessionInputError) as caught:
        parse_client_message(raw)
    assert caught.value.problem is SessionProblem.BAD_MESSAGE
    assert caught.value.field == field and says in caught.value.message
    if field is not None:
        assert caught.value.message.startswith(f"{field}: ")


EVENTS = [
    SegmentStarted(0, "Hello.", continued=False),
    SegmentTiming(0, 12.5, 0.1, 3.0),
    SegmentDone(0, 1.25),
    Flushed(),
    Cleared(14),
    SessionWarning(SessionProblem.SEGMENT_FAILED, "text: too long", "text"),
    SessionFailed(SessionProblem.OVERLOADED, ApiError(503, "queue timeout", type="overloaded")),
    SessionEnded(3, 4.5),
]


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_every_event_is_valid_against_the_published_schema(event):
    schema = protocol_schema()["server_event"]
    message = event_message(event)
    jsonschema.validate(json.loads(json.dumps(message)), schema)


def test_audio_is_not_a_json_event():
    assert event_message(SegmentAudio(0, np.zeros(4, np.float32))) is None


def test_errors_say_whether_the_session_ends():
    warning, failed = event_message(EVENTS[5]), event_message(EVENTS[6])
    assert (warning["fatal"], warning["code"], warning["field"]) == (False, "segment_failed", "text")
    assert (failed["fatal"], failed["code"]) == (True, "overloaded")


def test_the_schema_file_is_current():
    assert json.loads(SCHEMA_FILE.read_text()) == json.loads(json.dumps(protocol_schema())), (
        "docs/stream_protocol.schema.json is stale: python -m tts_server.http.stream_messages > it"
    )

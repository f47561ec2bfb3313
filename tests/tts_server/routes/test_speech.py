"""tts_server.routes.speech: request/client ids, segment planning and voice resolution on a served tiny app.

The functions run with the services of an app served on the shared tiny VoxCPM2 engine (inline
audio is encoded by that engine), on the loop the engine lives on.
"""

from __future__ import annotations

import base64

import pytest
import torch
from starlette.requests import Request

from tests.tts_server.harness import ENGINE_MODEL_LEN, serve, server_config
from tests.tts_server.serving import sine_wav
from tts_server.errors import ApiError
from tts_server.jobs.timeline import TIMELINE_KEY, Timeline
from tts_server.routes.speech import InlineVoice, client_id, prepare_segments, request_id, resolve_voice, timeline
from tts_server.text.segments import SegmentBudget, plan_segments
from tts_server.voices.inputs import check_pairing
from tts_server.voices.latents import latents_to_json
from voxcpm_engine.types import Voice

MAX_TEXT = 600
LONG_TEXT = " ".join(f"Sentence number {i} is here to make the text long enough." for i in range(10))


@pytest.fixture(scope="module")
def srv(loop_runner, shared_engine, tiny_v2):
    with serve(loop_runner, shared_engine, server_config(tiny_v2, max_text_chars=MAX_TEXT)) as served:
        yield served


@pytest.fixture(scope="module")
def svc(srv):
    return srv.services


def raises(srv, coro) -> ApiError:
    with pytest.raises(ApiError) as info:
        srv.run(coro)
    return info.value


def latents(svc, patches: int, value: float = 0.5) -> torch.Tensor:
    return torch.full((patches, svc.model.patch_size, svc.model.latent_dim), value)


def http_request(headers: dict[str, str] | None = None, state: dict | None = None) -> Request:
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/generate",
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
    }
    if state is not None:
        scope["state"] = state
    return Request(scope)


# --- ids and timeline ----------------------------------------------------------------------------


def test_request_id_prefers_the_body_then_the_header_then_a_new_one() -> None:
    with_header = http_request({"X-Request-Id": "from-header"})
    assert request_id("body:1/a+b=c@d", with_header) == "body:1/a+b=c@d"
    assert request_id(None, with_header) == "from-header"
    fresh = {request_id(None, http_request()) for _ in range(3)}
    assert len(fresh) == 3 and all(len(r) == 32 and int(r, 16) >= 0 for r in fresh)


@pytest.mark.parametrize("bad", ["", "-starts-with-dash", "has space", "x" * 129, "semi;colon", "ünïcode"])
def test_request_id_outside_the_pattern_is_a_400_naming_its_source(bad: str) -> None:
    with pytest.raises(ApiError) as body_error:
        request_id(bad, http_request())
    assert (body_error.value.status, body_error.value.field) == (400, "request_id")
    if bad.isascii():  # header values are latin-1 bytes
        with pytest.raises(ApiError) as header_error:
            request_id(None, http_request({"X-Request-Id": bad}))
        assert (header_error.value.status, header_error.value.field) == (400, "X-Request-Id")
    assert request_id("x" * 128, http_request()) == "x" * 128


def test_client_id_is_the_header_else_a_key_digest() -> None:
    assert client_id(http_request({"X-Client-Id": " team-a "})) == "team-a"
    one = client_id(http_request({"Authorization": "Bearer secret-1"}))
    assert one.startswith("key:") and "secret" not in one and len(one) == 20
    assert one == client_id(http_request({"Authorization": "Bearer secret-1"}))
    assert one != client_id(http_request({"Authorization": "Bearer secret-2"}))
    assert client_id(http_request()) == ""


def test_timeline_is_the_middlewares_else_a_new_one() -> None:
    begun = Timeline(received=12.5)
    assert timeline(http_request(state={TIMELINE_KEY: begun})) is begun
    fresh = timeline(http_request())
    assert fresh is not begun and fresh.received > 0


# --- prepare_segments ----------------------------------------------------------------------------


def test_short_text_is_cleaned_into_one_segment(srv, svc) -> None:
    text = "  Hello,\n\tworld!\u200b  How are   you? "
    segments = srv.run(prepare_segments(svc, text, field="input", normalize=False, voice=None, max_steps=None))
    assert segments == ("Hello, world! How are you?",)
    prefixed = srv.run(
        prepare_segments(svc, text, field="input", normalize=False, voice=None, max_steps=2, prefix="(calm)")
    )
    assert prefixed == ("(calm)Hello, world! How are you?",)


def test_long_text_is_planned_with_the_served_budget(srv, svc) -> None:
    segments = srv.run(prepare_segments(svc, LONG_TEXT, field="input", normalize=False, voice=None, max_steps=1))
    budget = SegmentBudget(max_model_len=ENGINE_MODEL_LEN, max_steps=1, text_field="input")
    assert segments == tuple(plan_segments(LONG_TEXT, svc.tokenizer, budget))
    assert len(segments) >= 2
    assert " ".join(segments) == LONG_TEXT  # split at sentence boundaries, nothing lost


def test_a_voice_takes_room_from_the_segments(srv, svc) -> None:
    def plan(voice):
        return srv.run(prepare_segments(svc, LONG_TEXT, field="input", normalize=False, voice=voice, max_steps=1))

    bare = plan(None)
    voice = Voice(prompt_text="A prompt.", prompt_latents=latents(svc, 120))  # ~half the model context
    voiced = plan(voice)
    assert len(voiced) > len(bare) and max(map(len, voiced)) < max(map(len, bare))
    budget = SegmentBudget(max_model_len=ENGINE_MODEL_LEN, voice=voice, max_steps=1)
    assert voiced == tuple(plan_segments(LONG_TEXT, svc.tokenizer, budget))


def test_text_over_the_limit_is_a_400_naming_the_field(srv, svc) -> None:
    ok = "a" * MAX_TEXT
    assert srv.run(prepare_segments(svc, ok, field="input", normalize=False, voice=None, max_steps=1))
    err = raises(srv, prepare_segments(svc, ok + "a", field="input", normalize=False, voice=None, max_steps=1))
    assert (err.status, err.field) == (400, "input") and str(MAX_TEXT + 1) in err.message


@pytest.mark.parametrize("text", ["", "   ", "?!... --", "\U0001f600\u200d\U0001f600", "\u200b\u200b"])
def test_nothing_speakable_is_a_400_naming_the_field(srv, svc, text: str) -> None:
    for normalize in (False, True):
        err = raises(
            srv, prepare_segments(svc, text, field="target_text", normalize=normalize, voice=None, max_steps=None)
        )
        assert (err.status, err.field) == (400, "target_text") and "nothing to speak" in err.message


@pytest.mark.parametrize(("max_steps", "field"), [(200, "max_generate_length"), (None, "voice")])
def test_a_voice_and_step_limit_that_leave_no_room_name_the_field_to_change(srv, svc, max_steps, field) -> None:
    huge = Voice(prompt_text="A prompt.", prompt_latents=latents(svc, ENGINE_MODEL_LEN))
    err = raises(srv, prepare_segments(svc, "Hello.", field="input", normalize=False, voice=huge, max_steps=max_steps))
    assert (err.status, err.field) == (400, field) and str(ENGINE_MODEL_LEN) in err.message


# --- resolve_voice -------------------------------------------------------------------------------


def test_no_voice_is_zero_shot_and_an_unknown_one_is_a_404(srv, svc) -> None:
    resolved = srv.run(resolve_voice(svc, None))
    assert resolved.voice == Voice() and resolved.lora is None
    assert srv.run(resolve_voice(svc, None, InlineVoice())).voice == Voice()
    err = raises(srv, resolve_voice(svc, "no-such-voice", InlineVoice(ref_latents=latents_to_json(latents(svc, 2)))))
    assert (err.status, err.field, err.type) == (404, "voice", "not_found")


def test_inline_latents_become_the_voice(srv, svc) -> None:
    prompt, ref = latents(svc, 3, 0.25), latents(svc, 2, -0.75)
    inline = InlineVoice(prompt_text="A prompt.", prompt_latents=latents_to_json(prompt))
    voice = srv.run(resolve_voice(svc, None, inline)).voice
    assert voice.prompt_text == "A prompt." and torch.equal(voice.prompt_latents, prompt) and voice.ref_latents is None
    voice = srv.run(resolve_voice(svc, None, InlineVoice(ref_latents=latents_to_json(ref)))).voice
    assert voice.prompt_text is None and voice.prompt_latents is None and torch.equal(voice.ref_latents, ref)


def test_inline_audio_is_encoded_by_the_engine(srv, svc) -> None:
    wav = sine_wav(0.5)
    data = base64.b64encode(wav).decode()
    inline = InlineVoice(prompt_audio=data, prompt_text="A prompt.", ref_audio="data:audio/wav;base64," + data)
    voice = srv.run(resolve_voice(svc, None, inline)).voice
    expected_prompt, _ = srv.run(svc.voices.encode(wav))
    expected_ref, _ = srv.run(svc.voices.encode(wav, reference=True))
    shape = (svc.model.patch_size, svc.model.latent_dim)
    assert voice.prompt_text == "A prompt."
    assert voice.prompt_latents.shape[1:] == shape and voice.ref_latents.shape[1:] == shape
    assert voice.prompt_latents.shape[0] >= 1 and voice.prompt_latents.abs().max() > 0
    torch.testing.assert_close(voice.prompt_latents, expected_prompt)
    torch.testing.assert_close(voice.ref_latents, expected_ref)


def test_inline_parts_override_only_their_part_of_a_named_voice(srv, svc) -> None:
    stored_prompt, stored_ref = latents(svc, 3, 0.1), latents(svc, 2, 0.2)
    srv.run(
        svc.voices.add(
            "speech-test", prompt_latents=stored_prompt, prompt_text="Stored.", ref_latents=stored_ref, replace=True
        )
    )
    named = srv.run(resolve_voice(svc, "speech-test")).voice
    assert named.prompt_text == "Stored." and torch.equal(named.prompt_latents, stored_prompt)

    new_ref = latents(svc, 4, -0.3)
    voice = srv.run(resolve_voice(svc, "speech-test", InlineVoice(ref_latents=latents_to_json(new_ref)))).voice
    assert voice.prompt_text == "Stored." and torch.equal(voice.prompt_latents, stored_prompt)
    assert torch.equal(voice.ref_latents, new_ref)

    new_prompt = latents(svc, 5, 0.4)
    inline = InlineVoice(prompt_text="Inline.", prompt_latents=latents_to_json(new_prompt))
    resolved = srv.run(resolve_voice(svc, "speech-test", inline))
    assert resolved.voice.prompt_text == "Inline." and torch.equal(resolved.voice.prompt_latents, new_prompt)
    assert torch.equal(resolved.voice.ref_latents, stored_ref) and resolved.lora is None
    srv.run(svc.voices.remove("speech-test"))


def _b64_latents(svc, patches: int = 2) -> dict:
    return latents_to_json(latents(svc, patches))


@pytest.mark.parametrize(
    ("parts", "field", "words"),
    [
        ({"prompt_audio": "AAAA", "prompt_latents": "L", "prompt_text": "t"}, "prompt_latents", "alternatives"),
        ({"prompt_latents": "L"}, "prompt_text", "required"),
        ({"prompt_audio": "AAAA"}, "prompt_text", "required"),
        ({"prompt_text": "A prompt."}, "prompt_text", "without"),
        ({"prompt_latents": "L", "prompt_text": "   "}, "prompt_text", "non-empty"),
        ({"ref_audio": "AAAA", "ref_latents": "L"}, "ref_latents", "alternatives"),
        ({"prompt_audio": "not base64!", "prompt_text": "t"}, "prompt_audio", "base64"),
        ({"ref_audio": base64.b64encode(b"not audio at all").decode()}, "ref_audio", ""),
        ({"prompt_latents": {"dtype": "float32", "shape": [1, 1, 1], "data": ""}, "prompt_text": "t"},
         "prompt_latents.shape", "must be"),
        ({"ref_latents": [1, 2]}, "ref_latents", "object"),
    ],
)  # fmt: skip
def test_bad_inline_voices_are_400s_naming_the_field(srv, svc, parts: dict, field: str, words: str) -> None:
    parts = {k: _b64_latents(svc) if v == "L" else v for k, v in parts.items()}
    err = raises(srv, resolve_voice(svc, None, InlineVoice(**parts)))
    assert (err.status, err.field) == (400, field) and err.message.startswith(field + ":")
    assert words in err.message


def test_too_many_inline_patches_is_a_413(srv, svc) -> None:
    too_long = _b64_latents(svc, svc.voices.max_patches + 1)
    err = raises(srv, resolve_voice(svc, None, InlineVoice(ref_latents=too_long)))
    assert (err.status, err.field, err.type) == (413, "ref_latents.shape", "too_large")


def test_a_reference_needs_a_voxcpm2_model() -> None:
    """The served tiny model is VoxCPM2; the VoxCPM1 refusal is check_pairing's, as resolve_voice calls it."""
    for part in ("ref_audio", "ref_latents"):
        flags = {"prompt_audio": False, "prompt_latents": False, "ref_audio": False, "ref_latents": False}
        with pytest.raises(ApiError) as info:
            check_pairing(**{**flags, part: True}, prompt_text=None, model_version=1)
        assert (info.value.status, info.value.field) == (400, part) and "VoxCPM2" in info.value.message
        check_pairing(**{**flags, part: True}, prompt_text=None, model_version=2)

"""``POST /v1/audio/speech`` with the official ``openai`` client, against a real hypercorn and the tiny engine.

The server requires an API key here, as OpenAI does; requests without a length are capped by the
test settings' ``default_max_generate_length`` (3 patches).
"""

import base64
import types

import openai
import orjson
import pytest

from tests.tts_server.harness import decode_audio, serve, server_config
from tests.tts_server.serving import sine_wav
from tts_server.errors import ApiError
from tts_server.routes.openai import _design_prefix

KEY = "sk-test"
STEPS = 3  # server_config's default_max_generate_length


@pytest.fixture(scope="module")
def srv(loop_runner, shared_engine, tiny_v2):
    with serve(loop_runner, shared_engine, server_config(tiny_v2, max_num_seqs=2, api_key=KEY)) as served:
        yield served


def client(served, key=KEY):
    return openai.AsyncOpenAI(base_url=served.url + "/v1", api_key=key, max_retries=0, timeout=30)


def seconds(served, steps=STEPS):
    svc = served.services
    return steps * int(svc.model_info["samples_per_patch"]) / svc.sample_rate


def test_create_returns_mp3_of_the_expected_length(srv):
    async def go():
        async with client(srv) as oa:
            response = await oa.audio.speech.create(model="tts-1", voice="alloy", input="Hello 23 times, world.")
            return response.content, response.response.headers

    data, headers = srv.run(go())
    samples, rate = decode_audio(data, "mp3")
    assert rate == 48000 and abs(len(samples) / rate - seconds(srv)) < 0.06
    assert headers["content-type"] == "audio/mpeg" and headers["x-model"] == "tts-1"


@pytest.mark.parametrize("fmt", ["wav", "opus", "aac", "flac", "pcm"])
def test_streaming_response_in_each_format(srv, fmt):
    async def go():
        async with client(srv) as oa:
            chunks = []
            async with oa.audio.speech.with_streaming_response.create(
                model="gpt-4o-mini-tts", voice="nova", input="Streaming, please.", response_format=fmt
            ) as response:
                async for chunk in response.iter_bytes():
                    chunks.append(chunk)
                return b"".join(chunks), response.headers

    data, headers = srv.run(go())
    samples, rate = decode_audio(data, fmt, pcm_rate=int(headers["x-sample-rate"]))
    assert rate == 48000
    tolerance = 0.001 if fmt in ("wav", "pcm", "flac") else 0.06
    assert abs(len(samples) / rate - seconds(srv)) < tolerance


def test_sse_stream_format_sends_deltas_then_done_with_usage(srv):
    async def go():
        async with srv.client(headers={"authorization": f"Bearer {KEY}"}) as http:
            payload = {"input": "Events, please.", "voice": "echo", "response_format": "pcm", "stream_format": "sse"}
            return await http.post("/v1/audio/speech", json=payload)

    response = srv.run(go())
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = [orjson.loads(line[6:]) for line in response.text.split("\n\n") if line.startswith("data: ")]
    deltas = [e for e in events if e["type"] == "speech.audio.delta"]
    assert events[-1]["type"] == "speech.audio.done" and len(deltas) == len(events) - 1 >= 1
    pcm = b"".join(base64.b64decode(e["audio"]) for e in deltas)
    assert len(pcm) == 2 * STEPS * int(srv.services.model_info["samples_per_patch"])
    usage = events[-1]["usage"]
    assert usage["output_tokens"] == STEPS and usage["input_tokens"] > 0
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


def test_instructions_voice_design_and_registered_openai_voice_names(srv):
    wav = base64.b64encode(sine_wav(0.5)).decode()

    async def go():
        async with client(srv) as oa, srv.client(headers={"authorization": f"Bearer {KEY}"}) as http:
            designed = await oa.audio.speech.create(
                model="tts-1", voice="sage", input="Hi.", instructions="(A calm, low voice)", response_format="pcm",
                extra_body={"seed": 1},
            )  # fmt: skip
            plain = await oa.audio.speech.create(
                model="tts-1", voice="sage", input="Hi.", response_format="pcm", extra_body={"seed": 1}
            )
            await http.post("/voices", json={"name": "sage", "ref_audio": wav})
            registered = await oa.audio.speech.create(
                model="tts-1", voice="sage", input="Hi.", response_format="pcm", extra_body={"seed": 1}
            )
            await http.delete("/voices/sage")
            return designed.content, plain.content, registered.content

    designed, plain, registered = srv.run(go())
    assert len(designed) == len(plain) == len(registered)
    assert designed != plain and registered != plain  # the prefix and the voice change what is generated


def test_voice_design_on_a_voxcpm1_model_names_instructions():
    v1 = types.SimpleNamespace(model_version=1)
    assert _design_prefix(v1, None) == "" and _design_prefix(v1, " () ") == ""
    with pytest.raises(ApiError) as info:
        _design_prefix(v1, "warm voice")
    assert info.value.field == "instructions" and info.value.status == 400
    v2 = types.SimpleNamespace(model_version=2)
    assert _design_prefix(v2, "（A warm)  voice ") == "(A warm voice)"


ERRORS = [
    ({"speed": 1.5}, openai.BadRequestError, "speed"),
    ({"speed": 9.0}, openai.BadRequestError, "speed"),
    ({"input": "x" * 4097}, openai.BadRequestError, "input"),
    ({"input": ""}, openai.BadRequestError, "input"),
    ({"voice": "nobody-here"}, openai.NotFoundError, "voice"),
    ({"response_format": "ogg"}, openai.BadRequestError, "response_format"),
    ({"extra_body": {"stream_format": "ws"}}, openai.BadRequestError, "stream_format"),
    ({"extra_body": {"surprise": 1}}, openai.BadRequestError, "surprise"),
    ({"model": "has space"}, openai.BadRequestError, "model"),
    ({"input": "\U0001f600\U0001f389"}, openai.BadRequestError, "input"),  # emoji only: nothing to speak
    ({"input": "\u200d\u200c"}, openai.BadRequestError, "input"),  # joiners only
    ({"input": "?! ..."}, openai.BadRequestError, "input"),
    ({"voice": "v" * 65}, openai.BadRequestError, "voice"),
]


def test_errors_come_back_in_openais_shape_naming_the_field(srv):
    async def go():
        out = []
        async with client(srv) as oa:
            for overrides, _, _ in ERRORS:
                kwargs = {"model": "tts-1", "voice": "alloy", "input": "Hi.", **overrides}
                try:
                    await oa.audio.speech.create(**kwargs)
                except openai.APIStatusError as exc:
                    out.append(exc)
                else:
                    out.append(None)
        async with client(srv, key="wrong") as oa:
            try:
                await oa.audio.speech.create(model="tts-1", voice="alloy", input="Hi.")
            except openai.APIStatusError as exc:
                out.append(exc)
        return out

    *errors, unauthorized = srv.run(go())
    for (overrides, kind, field), exc in zip(ERRORS, errors, strict=True):
        assert isinstance(exc, kind), (overrides, exc)
        body = exc.response.json()["error"]
        assert body["param"] == body["field"] == field, body
        assert body["type"] == "invalid_request_error" and field in body["message"]
    assert isinstance(unauthorized, openai.AuthenticationError)
    assert unauthorized.response.json()["error"]["code"] == "unauthorized"
    srv.settled()


def test_a_4096_character_input_is_spoken_as_consecutive_segments(srv):
    from tts_server.text.clean import clean_text
    from tts_server.text.segments import SegmentBudget, plan_segments

    sentence = "The quick brown fox jumps over the lazy dog while the band plays on. "
    text = (sentence * (4096 // len(sentence) + 1))[:4096]
    svc = srv.services
    expected = plan_segments(
        clean_text(text), svc.tokenizer, SegmentBudget(max_model_len=svc.config.max_model_len, max_steps=STEPS)
    )
    assert len(expected) > 1  # longer than the test engine's context: it must be split

    async def go():
        async with client(srv) as oa:
            response = await oa.audio.speech.create(
                model="tts-1", voice="alloy", input=text, response_format="pcm", extra_body={"normalize": False}
            )
            return response.content

    data = srv.run(go())
    spp = int(svc.model_info["samples_per_patch"])
    assert len(data) == 2 * len(expected) * STEPS * spp  # s16le: every segment spoken, back to back

"""``POST /generate`` against a real hypercorn and the shared tiny VoxCPM2 engine: audio, voices, validation.

Random-weight models never stop on their own, so every request's length is its
``max_generate_length``: N steps give exactly ``N * samples_per_patch`` samples.
"""

import base64
import struct

import numpy as np
import pytest

from tests.tts_server.harness import ENGINE_MODEL_LEN, decode_audio, serve, server_config
from tests.tts_server.routes.generate_helpers import body, spp
from tests.tts_server.serving import sine_wav
from tts_server.text.segments import SegmentBudget, plan_segments


@pytest.fixture(scope="module")
def srv(loop_runner, shared_engine, tiny_v2):
    """Two slots, cap four, 64 KiB bodies (small enough that a refused upload is still fully sent)."""
    with serve(loop_runner, shared_engine, server_config(tiny_v2, max_num_seqs=2, max_body_bytes=65536)) as served:
        yield served


# --- audio ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["pcm", "wav", "mp3", "flac", "opus", "aac"])
def test_every_format_decodes_to_the_expected_duration_and_rate(srv, fmt):
    async def go():
        async with srv.client() as client:
            return await client.post("/generate", json=body(response_format=fmt, max_generate_length=3))

    response = srv.run(go())
    assert response.status_code == 200, response.text
    rate = int(response.headers["x-sample-rate"])
    samples, decoded_rate = decode_audio(response.content, fmt, pcm_rate=rate)
    assert decoded_rate == rate == (48000 if fmt != "opus" else 48000)  # tiny-v2 runs at 48 kHz
    expected = 3 * spp(srv) / srv.services.sample_rate
    # Codec framing: mp3/aac/opus add up to a frame of priming/padding (a few tens of ms).
    assert abs(len(samples) / rate - expected) < (0.001 if fmt in ("pcm", "wav", "flac") else 0.06)
    assert response.headers["content-type"].startswith(
        {
            "pcm": "audio/pcm",
            "wav": "audio/wav",
            "mp3": "audio/mpeg",
            "flac": "audio/flac",
            "opus": "audio/ogg",
            "aac": "audio/aac",
        }[fmt]
    )
    assert response.headers["x-queue-status"] == "0" and response.headers["x-request-id"]
    assert np.abs(samples).max() > 0


def test_streamed_chunks_arrive_as_made_and_whole_file_has_exact_sizes(srv):
    async def go():
        async with srv.client() as client:
            chunks = []
            async with client.stream("POST", "/generate", json=body(max_generate_length=3, seed=5)) as r:
                async for chunk in r.aiter_raw():
                    chunks.append(chunk)
            whole = await client.post(
                "/generate", json=body(max_generate_length=3, seed=5, response_format="wav", stream=False)
            )
            return r, chunks, whole

    streamed, chunks, whole = srv.run(go())
    assert streamed.headers.get("transfer-encoding") == "chunked" and len(chunks) >= 2
    pcm = b"".join(chunks)
    assert len(pcm) == 3 * spp(srv) * 2
    data = whole.content
    assert int(whole.headers["content-length"]) == len(data)
    assert data[:4] == b"RIFF" and struct.unpack("<I", data[4:8])[0] == len(data) - 8
    assert struct.unpack("<I", data[40:44])[0] == len(data) - 44 == len(pcm)
    assert data[44:] == pcm  # same seed, same audio, streamed or not


def test_seed_reproduces_and_segments_of_long_text_play_back_to_back(srv):
    text = " ".join(f"Sentence number {i} is here to make the text long enough." for i in range(40))
    svc = srv.services
    segments = plan_segments(text, svc.tokenizer, SegmentBudget(max_model_len=ENGINE_MODEL_LEN, max_steps=1))
    assert len(segments) >= 2

    async def go():
        async with srv.client() as client:
            return [
                await client.post("/generate", json=body(target_text=text, max_generate_length=1, seed=3))
                for _ in range(3)
            ]

    one, two, three = srv.run(go())
    assert one.status_code == 200, one.text
    assert len(one.content) == len(segments) * spp(srv) * 2 == len(two.content)  # one patch per segment
    # The first request fills the prefix cache; the repeats reuse its blocks and compute only the
    # rest of each prompt, which on some CPUs rounds differently from the whole prompt (GEMM results
    # depend on the row count there, and bf16 random weights amplify that). Identical repeats agree.
    assert two.content == three.content


def test_inline_prompt_reference_and_latents(srv):
    wav = base64.b64encode(sine_wav(0.5)).decode()

    async def go():
        async with srv.client() as client:
            prompt = await client.post("/generate", json=body(prompt_audio=wav, prompt_text="A prompt."))
            ref = await client.post("/generate", json=body(ref_audio=wav))
            latents = (await client.post("/encode_latents", json={"audio": wav})).json()
            from_latents = await client.post(
                "/generate", json=body(prompt_latents={k: latents[k] for k in ("dtype", "shape", "data")},
                                       prompt_text="A prompt.")
            )  # fmt: skip
            return prompt, ref, from_latents

    for response in srv.run(go()):
        assert response.status_code == 200, response.text
        assert len(response.content) == 2 * spp(srv) * 2


def test_named_voice_added_at_run_time_is_used(srv):
    wav = base64.b64encode(sine_wav(0.5)).decode()

    async def go():
        async with srv.client() as client:
            missing = await client.post("/generate", json=body(voice="gen-voice"))
            added = await client.post("/voices", json={"name": "gen-voice", "ref_audio": wav})
            used = await client.post("/generate", json=body(voice="gen-voice"))
            await client.delete("/voices/gen-voice")
            return missing, added, used

    missing, added, used = srv.run(go())
    assert missing.status_code == 404 and missing.json()["error"]["field"] == "voice"
    assert added.status_code == 201, added.text
    assert used.status_code == 200 and len(used.content) == 2 * spp(srv) * 2


# --- validation ----------------------------------------------------------------------------------

INVALID = [
    ({"target_text": None}, "target_text"),
    ({"target_text": ""}, "target_text"),
    ({"target_text": "   \n "}, "target_text"),
    ({"target_text": "x" * 5000}, "target_text"),
    ({"target_text": 5}, "target_text"),
    ({"voice": 3}, "voice"),
    ({"temperature": "hot"}, "temperature"),
    ({"temperature": -1}, "temperature"),
    ({"cfg_value": 100}, "cfg_value"),
    ({"max_generate_length": 0}, "max_generate_length"),
    ({"max_generate_length": ENGINE_MODEL_LEN}, "max_generate_length"),
    ({"min_generate_length": 5}, "min_generate_length"),
    # Over the server's default maximum (3 steps): a 400, not quietly generating 3.
    ({"max_generate_length": None, "min_generate_length": 4}, "min_generate_length"),
    ({"voice": "v" * 65}, "voice"),
    ({"target_text": "\U0001f600\U0001f389"}, "target_text"),  # emoji only (spoken before, 400 on /v1)
    ({"target_text": "\u200d\u200c\u200d"}, "target_text"),  # zero-width joiners only (spoken before)
    ({"target_text": "\x01\x02"}, "target_text"),  # control characters only
    ({"target_text": "?! ... --"}, "target_text"),
    ({"min_generate_length": -1}, "min_generate_length"),
    ({"request_id": "has space"}, "request_id"),
    ({"request_id": "x" * 200}, "request_id"),
    ({"prompt_audio": "%%%", "prompt_text": "t"}, "prompt_audio"),
    ({"prompt_audio": base64.b64encode(b"not audio").decode(), "prompt_text": "t"}, "prompt_audio"),
    ({"prompt_audio": base64.b64encode(sine_wav(0.2)).decode()}, "prompt_text"),
    ({"prompt_text": "no audio"}, "prompt_text"),
    ({"prompt_latents": {"dtype": "float32"}, "prompt_text": "t"}, "prompt_latents.shape"),
    ({"prompt_latents": [1, 2], "prompt_text": "t"}, "prompt_latents"),
    ({"ref_audio": ""}, "ref_audio"),
    ({"ref_latents": {"dtype": "float16", "shape": [1, 4, 64], "data": ""}}, "ref_latents.dtype"),
    ({"seed": -1}, "seed"),
    ({"seed": 2**64}, "seed"),
    ({"inference_timesteps": 0}, "inference_timesteps"),
    ({"response_format": "ogg"}, "response_format"),
    ({"stream": "yes"}, "stream"),
    ({"normalize": 1}, "normalize"),
    ({"language": "fr"}, "language"),
    ({"surprise": True}, "surprise"),
]


def test_invalid_input_in_every_field_names_the_field(srv):
    async def go():
        async with srv.client() as client:
            out = []
            for fields, _ in INVALID:
                payload = {k: v for k, v in body(**fields).items() if v is not None}
                out.append(await client.post("/generate", json=payload))
            bad_type = await client.post("/generate", content=b"{}", headers={"content-type": "text/plain"})
            bad_json = await client.post("/generate", content=b"{nope", headers={"content-type": "application/json"})
            too_big = await client.post("/generate", json=body(target_text="x" * 100_000))
            bad_header = await client.post("/generate", json=body(), headers={"x-request-id": "bad id!"})
            return out, bad_type, bad_json, too_big, bad_header

    out, bad_type, bad_json, too_big, bad_header = srv.run(go())
    for (fields, field), response in zip(INVALID, out, strict=True):
        assert 400 <= response.status_code < 500, (fields, response.status_code)
        error = response.json()["error"]
        assert error["field"] == field, (fields, error)
        assert field.split(".")[0] in error["message"], error
    assert bad_type.status_code == 415 and bad_json.status_code == 400 and too_big.status_code == 413
    assert bad_header.status_code == 400 and bad_header.json()["error"]["field"] == "X-Request-Id"
    srv.settled()


def test_min_generate_length_up_to_the_step_limit_is_honoured(srv):
    async def go():
        async with srv.client() as client:
            default_max = await client.post("/generate", json=body(max_generate_length=None, min_generate_length=3))
            explicit = await client.post("/generate", json=body(max_generate_length=4, min_generate_length=4))
            return default_max, explicit

    default_max, explicit = srv.run(go())
    assert default_max.status_code == explicit.status_code == 200, (default_max.text, explicit.text)
    assert len(default_max.content) == 3 * spp(srv) * 2 and len(explicit.content) == 4 * spp(srv) * 2


def test_without_a_default_the_limit_is_the_texts_own(loop_runner, shared_engine, tiny_v2):
    config = server_config(tiny_v2, default_max_generate_length=None)
    with serve(loop_runner, shared_engine, config) as served:

        async def go():
            async with served.client() as client:
                payload = body(target_text="Hi.", max_generate_length=None, min_generate_length=2000)
                return await client.post("/generate", json=payload)

        response = served.run(go())
    error = response.json()["error"]
    assert response.status_code == 400 and error["field"] == "min_generate_length"
    assert "6 x its tokens + 10" in error["message"] and "max_generate_length" in error["message"]


def test_a_huge_voice_name_is_refused_without_being_echoed(srv):
    async def go():
        async with srv.client() as client:
            return await client.post("/generate", json=body(voice="v" * 60_000))  # under the 64 KiB body limit

    response = srv.run(go())
    assert response.status_code == 400 and response.json()["error"]["field"] == "voice"
    assert len(response.content) < 500, response.text[:200]


def test_api_key_guards_generation(loop_runner, shared_engine, tiny_v2):
    with serve(loop_runner, shared_engine, server_config(tiny_v2, api_key="s3cret")) as served:

        async def go(served=served):
            async with served.client() as client:
                anonymous = await client.post("/generate", json=body())
                wrong = await client.post("/generate", json=body(), headers={"authorization": "Bearer nope"})
                right = await client.post("/generate", json=body(), headers={"authorization": "Bearer s3cret"})
                health = await client.get("/health")
                return anonymous, wrong, right, health

        anonymous, wrong, right, health = served.run(go())
        assert anonymous.status_code == wrong.status_code == 401
        assert anonymous.headers["www-authenticate"] == "Bearer"
        assert right.status_code == 200 and health.status_code == 200


def test_http_errors_are_json(srv):
    async def go():
        async with srv.client() as client:
            return await client.get("/nowhere"), await client.get("/generate")

    missing, wrong_method = srv.run(go())
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found"
    assert wrong_method.status_code == 405 and wrong_method.json()["error"]["type"] == "method_not_allowed"


# --- where the time goes -----------------------------------------------------------------------

_TO_FIRST_AUDIO = ["admission", "parse", "text", "queue", "submit", "prepare", "wait", "prefill", "vae", "return"]


def _server_timing(header: str) -> dict[str, float]:
    return {
        name: float(dur.split("=", 1)[1]) for name, dur in (part.strip().split(";", 1) for part in header.split(","))
    }


@pytest.mark.parametrize("stream", [True, False])
def test_every_response_says_where_its_time_to_first_audio_went(srv, stream):
    async def go():
        async with srv.client() as client:
            response = await client.post("/generate", json=body(stream=stream, max_generate_length=2))
            metrics = (await client.get("/metrics")).text
            return response, metrics

    response, metrics = srv.run(go())
    assert response.status_code == 200, response.text
    timing = _server_timing(response.headers["server-timing"])
    stages = [name for name in timing if name != "total"]
    # Every stage up to the first audio, in order (a whole file adds the rest of it).
    assert stages == _TO_FIRST_AUDIO + ([] if stream else ["complete"]), timing
    assert all(ms >= 0 for ms in timing.values())
    assert timing["total"] == pytest.approx(sum(timing[s] for s in stages), abs=0.05)
    assert timing["prefill"] > 0 and timing["total"] < 60_000
    for stage in [*_TO_FIRST_AUDIO, "send"] if stream else _TO_FIRST_AUDIO:
        assert f'tts_request_stage_seconds_count{{stage="{stage}"}}' in metrics, stage

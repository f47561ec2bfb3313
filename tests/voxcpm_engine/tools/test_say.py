import pytest
import soundfile as sf

from voxcpm_engine.tools.say import main


def test_writes_a_playable_wav(tiny_v2, tmp_path, capsys):
    out = tmp_path / "a.wav"
    assert (
        main(["--model", str(tiny_v2), "--text", "Hello.", "--out", str(out), "--seed", "3", "--max-steps", "5"]) == 0
    )
    info = sf.info(str(out))
    assert (info.samplerate, info.channels, info.frames, info.subtype) == (48000, 1, 5 * 7680, "PCM_16")
    assert "wrote" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir()] == ["a.wav"]


def test_bad_checkpoint_exits_nonzero_with_the_loader_message(tiny_v1, tmp_path, capsys):
    assert main(["--model", str(tmp_path), "--text", "Hi", "--out", str(tmp_path / "x.wav")]) == 1
    assert "config.json: file not found" in capsys.readouterr().err
    assert not (tmp_path / "x.wav").exists()


def test_reference_audio_on_v1_is_an_error(tiny_v1, tmp_path, capsys):
    wav = tmp_path / "r.wav"
    sf.write(wav, [0.1, -0.1] * 8000, 16000)
    assert main(["--model", str(tiny_v1), "--text", "Hi", "--out", str(tmp_path / "x.wav"), "--ref-wav", str(wav)]) == 1
    assert "VoxCPM2" in capsys.readouterr().err


def test_batch_writes_one_wav_per_line(tiny_v1, tmp_path, capsys):
    import json

    from voxcpm_engine.tools.synthetic_lora import write_lora

    lora = write_lora(tiny_v1, tmp_path / "voice", rank=4)
    lines = [
        {"id": "a", "text": "First one.", "seed": 1, "min_steps": 3, "max_steps": 3},
        {"id": "b.2", "text": "Second, a little longer.", "seed": 2, "min_steps": 5, "max_steps": 5, "lora": "v"},
    ]
    batch = tmp_path / "reqs.jsonl"
    batch.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    out = tmp_path / "out"
    args = ["--model", str(tiny_v1), "--batch", str(batch), "--out-dir", str(out), "--lora", f"v={lora}"]
    assert main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.wav", "b.2.wav"]
    assert sf.info(str(out / "a.wav")).frames == 3 * 7056 and sf.info(str(out / "b.2.wav")).frames == 5 * 7056
    assert "wrote 2 files" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ('{"text": "x"}', ":1: id must be"),
        ('{"id": "../evil", "text": "x"}', ":1: id must be"),
        ('{"id": "a"}', ":1: text is required"),
        ('{"id": "a", "text": "x", "seed": "1"}', ":1: seed must be an integer"),
        ("not json", ":1: invalid JSON"),
    ],
)
def test_batch_file_errors_name_line_and_field(tiny_v1, tmp_path, capsys, line, needle):
    batch = tmp_path / "reqs.jsonl"
    batch.write_text(line + "\n")
    assert main(["--model", str(tiny_v1), "--batch", str(batch), "--out-dir", str(tmp_path / "o")]) == 1
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "o").exists()

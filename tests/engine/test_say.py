import soundfile as sf

from engine.say import main


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

"""voxcpm_engine.tools.synthetic_tokenizer: deterministic files in the release layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from voxcpm_engine.io.tokenizer import TextTokenizer
from voxcpm_engine.tools.synthetic_tokenizer import min_vocab_size, write_tokenizer_files

FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
AUDIO_SPECIALS = [
    "<|audio_start|>",
    "<|audio_end|>",
    "<|audio_prompt_start|>",
    "<|audio_prompt_end|>",
    "<|background|>",
    "<|/background|>",
    "<|characters|>",
    "<|/characters|>",
    "<|speaker_id|>",
    "<|/speaker_id|>",
    "<|span|>",
    "<|/span|>",
]
IM_TOKENS = [
    "<|im_end|>",
    "<|im_start|>",
    "<|tool_call|>",
    "<|execute_start|>",
    "<|execute_end|>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
]


@pytest.mark.parametrize("vocab_size", [73448, 2048])
def test_byte_identical_twice(tmp_path: Path, vocab_size: int) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    write_tokenizer_files(a, vocab_size)
    write_tokenizer_files(b, vocab_size)
    for name in FILES:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_different_sizes_differ_only_in_padding(tmp_path: Path) -> None:
    write_tokenizer_files(tmp_path / "a", 2048)
    write_tokenizer_files(tmp_path / "b", 4096)
    va = json.loads((tmp_path / "a" / "tokenizer.json").read_text(encoding="utf-8"))["model"]
    vb = json.loads((tmp_path / "b" / "tokenizer.json").read_text(encoding="utf-8"))["model"]
    assert va["merges"] == vb["merges"]
    assert all(vb["vocab"][tok] == idx for tok, idx in va["vocab"].items())


@pytest.mark.parametrize("vocab_size", [73448, 2048, None])
def test_layout(tmp_path: Path, vocab_size: int | None) -> None:
    size = vocab_size or min_vocab_size()
    write_tokenizer_files(tmp_path, size)
    data = json.loads((tmp_path / "tokenizer.json").read_text(encoding="utf-8"))
    model = data["model"]
    assert model["type"] == "BPE" and model["byte_fallback"] and model["fuse_unk"]
    assert model["unk_token"] == "<unk>"
    assert data["pre_tokenizer"] is None
    assert [n["type"] for n in data["normalizer"]["normalizers"]] == ["Prepend", "Replace"]
    assert data["post_processor"]["special_tokens"]["<s>"]["ids"] == [1]
    assert all(isinstance(m, str) and m.count(" ") == 1 for m in model["merges"])  # release format

    vocab = model["vocab"]
    assert len(vocab) == size - 8
    assert sorted(vocab.values()) == list(range(size - 8))
    inv = {i: t for t, i in vocab.items()}
    assert [inv[i] for i in (0, 1, 2)] == ["<unk>", "<s>", "</s>"]
    assert [inv[i] for i in range(101, 113)] == AUDIO_SPECIALS
    assert all(f"<0x{b:02X}>" in vocab for b in range(256))
    assert {"你好", "世界", "中国", "▁Hello", "Hello", "▁"} <= vocab.keys()
    if size > min_vocab_size():
        assert inv[size - 9] == f"<reserved_{size - 9}>"
    added = {t["id"]: t["content"] for t in data["added_tokens"]}
    assert added == {0: "<unk>", 1: "<s>", 2: "</s>", **{size - 8 + i: t for i, t in enumerate(IM_TOKENS)}}

    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert cfg["legacy"] is True and cfg["add_bos_token"] is True and cfg["tokenizer_class"] == "LlamaTokenizer"
    decoder = {int(k): v["content"] for k, v in cfg["added_tokens_decoder"].items()}
    expected = {0: "<unk>", 1: "<s>", 2: "</s>", **{101 + i: t for i, t in enumerate(AUDIO_SPECIALS)}}
    expected.update({size - 8 + i: t for i, t in enumerate(IM_TOKENS)})
    assert decoder == expected
    smap = json.loads((tmp_path / "special_tokens_map.json").read_text(encoding="utf-8"))
    assert [t["content"] for t in smap["additional_special_tokens"]] == IM_TOKENS

    tok = TextTokenizer.from_dir(tmp_path)
    assert tok.vocab_size == size
    assert tok.token_to_id("<|audio_start|>") == 101 and tok.token_to_id("<|im_end|>") == size - 8


def test_rejects_too_small(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="vocab_size"):
        write_tokenizer_files(tmp_path, min_vocab_size() - 1)
    with pytest.raises(ValueError, match="vocab_size"):
        write_tokenizer_files(tmp_path, 4096.0)  # type: ignore[arg-type]
    assert 1000 < min_vocab_size() <= 2048


def test_overwrites_existing_files(tmp_path: Path) -> None:
    (tmp_path / "tokenizer.json").write_text("stale")
    paths = write_tokenizer_files(tmp_path, 2048)
    assert [p.name for p in paths] == list(FILES)
    assert TextTokenizer.from_dir(tmp_path).vocab_size == 2048

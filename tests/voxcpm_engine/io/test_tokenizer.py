"""voxcpm_engine.io.tokenizer: exact ids on the released vocabulary (spec §5.2), splitting, errors, prepare_text."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from voxcpm_engine.io.tokenizer import (
    AUDIO_END,
    AUDIO_START,
    REF_AUDIO_END,
    REF_AUDIO_START,
    TextTokenizer,
    prepare_text,
)
from voxcpm_engine.tools.synthetic_tokenizer import write_tokenizer_files

RELEASE_15 = Path(__file__).resolve().parents[3] / ".." / "shared" / "models" / "voxcpm1.5"


@pytest.fixture(scope="module")
def release() -> TextTokenizer:
    if not (RELEASE_15 / "tokenizer.json").is_file():
        pytest.skip("released tokenizer files not available")
    return TextTokenizer.from_dir(RELEASE_15)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> TextTokenizer:
    out = tmp_path_factory.mktemp("syntok")
    write_tokenizer_files(out, 73448)
    return TextTokenizer.from_dir(out)


# Every id below was measured with the reference wrapper under transformers 5.x (spec §5.2).
@pytest.mark.parametrize(
    ("text", "ids"),
    [
        ("你好世界，欢迎使用。", [59320, 59496, 59495, 59792, 59868, 65, 60036, 60505, 59688, 59415, 66]),
        ("Hello, this is the first test sentence.", [21045, 59342, 1536, 1410, 1358, 1933, 2076, 16694, 72]),
        ("我们是 中国人", [59320, 59422, 59509, 59390, 59402, 59417, 59385]),
        ("Hello 世界 test", [21045, 59320, 59792, 59868, 2076]),
        ("Hi" + "Hello", [12870, 15934]),
        ("Hello", [21045]),
        ("Hi", [12870]),
        ("", []),
    ],
)
def test_release_ids(release: TextTokenizer, text: str, ids: list[int]) -> None:
    assert release.encode(text) == ids


def test_release_tokens(release: TextTokenizer) -> None:
    assert release.tokenize("你好世界，欢迎使用。") == ["▁", "你", "好", "世", "界", "，", "欢", "迎", "使", "用", "。"]
    # The "▁" of a multi-char CJK token is dropped, a single-char token keeps it.
    assert release.tokenize("我们是 中国人") == ["▁", "我", "们", "是", "中", "国", "人"]


def test_release_leading_space_is_transformers5(release: TextTokenizer) -> None:
    # transformers 5.x: " x" → "▁x" (the stored tokenizer.json pipeline would give "▁▁ x").
    assert release.tokenize(" x") == ["▁x"]
    assert release.encode(" x") == release.encode("x")
    assert release.tokenize("  x") == ["▁▁", "x"]


def test_release_vocab_and_specials(release: TextTokenizer) -> None:
    assert release.vocab_size == 73448
    assert len(release.multichar_tokens) == 19400
    assert (AUDIO_START, AUDIO_END, REF_AUDIO_START, REF_AUDIO_END) == (101, 102, 103, 104)
    for name, idx in [
        ("<unk>", 0),
        ("<s>", 1),
        ("</s>", 2),
        ("<|audio_start|>", AUDIO_START),
        ("<|audio_end|>", AUDIO_END),
        ("<|audio_prompt_start|>", REF_AUDIO_START),
        ("<|audio_prompt_end|>", REF_AUDIO_END),
        ("<|im_end|>", 73440),
        ("<|fim_suffix|>", 73447),
    ]:
        assert release.token_to_id(name) == idx
    # No BOS, and literal special-token text maps to its id like in the reference.
    assert release.encode("<|audio_start|>hi") == [101, 26748]


def test_synthetic_splits_multichar_cjk(synthetic: TextTokenizer) -> None:
    assert {"你好", "世界", "中国", "中国人", "我们是"} <= synthetic.multichar_tokens
    assert all(len(t) >= 2 for t in synthetic.multichar_tokens)
    assert synthetic.tokenize("你好世界，欢迎使用。") == list("▁你好世界，欢迎使用。")
    assert synthetic.tokenize("我们是 中国人") == ["▁", "我", "们", "是", "中", "国", "人"]
    ids = synthetic.encode("你好")
    assert ids == [synthetic.token_to_id("▁"), synthetic.token_to_id("你"), synthetic.token_to_id("好")]


def test_synthetic_english_and_byte_fallback(synthetic: TextTokenizer) -> None:
    assert synthetic.tokenize("Hello, this is the first test sentence.") == [
        "▁Hello", ",", "▁this", "▁is", "▁the", "▁first", "▁test", "▁sentence", "."
    ]  # fmt: skip
    assert synthetic.tokenize("😀") == ["▁", "<0xF0>", "<0x9F>", "<0x98>", "<0x80>"]
    assert synthetic.encode("") == []
    assert synthetic.vocab_size == 73448


def test_tokenize_rejects_non_str(synthetic: TextTokenizer) -> None:
    with pytest.raises(TypeError):
        synthetic.encode(b"bytes")  # type: ignore[arg-type]


def test_missing_dir_or_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        TextTokenizer.from_dir(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        TextTokenizer.from_dir(tmp_path)


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("tokenizer.json", "{not json", "tokenizer.json: not valid JSON"),
        ("tokenizer.json", "[1, 2]", "expected a JSON object"),
        ("tokenizer.json", '{"model": {"type": "Unigram", "vocab": []}}', "expected a BPE model"),
        ("tokenizer.json", '{"model": {"type": "BPE", "vocab": {}, "merges": []}}', "non-empty"),
        ("tokenizer.json", b"\xff\xfe\x00garbage", "not valid JSON"),
        ("tokenizer.json", '{"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": ["a b"]}}', "merge #0"),
        ("tokenizer.json", '{"model": {"type": "BPE", "vocab": {"a": "x"}, "merges": []}}', "cannot build"),
        ("tokenizer_config.json", '{"added_tokens_decoder": {"0": 5}}', "malformed added-token"),
        ("tokenizer_config.json", '{"added_tokens_decoder": {"x": "<s>"}}', "integer ids"),
        ("tokenizer_config.json", "{broken", "tokenizer_config.json: not valid JSON"),
    ],
)
def test_corrupt_files(tmp_path: Path, name: str, content: str | bytes, match: str) -> None:
    write_tokenizer_files(tmp_path, 2048)
    data = content.encode() if isinstance(content, str) else content
    (tmp_path / name).write_bytes(data)
    with pytest.raises(ValueError, match=match):
        TextTokenizer.from_dir(tmp_path)


def test_git_symlink_placeholder_is_named(tmp_path: Path) -> None:
    # The shared voxcpm2 / voxcpm-0.5b folders hold such placeholders ("../voxcpm1.5/tokenizer.json").
    (tmp_path / "tokenizer.json").write_text("../voxcpm1.5/tokenizer.json")
    with pytest.raises(ValueError, match="symlink placeholder pointing to '../voxcpm1.5/tokenizer.json'"):
        TextTokenizer.from_dir(tmp_path)


def test_config_is_optional(tmp_path: Path) -> None:
    write_tokenizer_files(tmp_path, 2048)
    ref = TextTokenizer.from_dir(tmp_path)
    cfg = tmp_path / "tokenizer_config.json"
    shutil.move(cfg, tmp_path / "moved.json")
    tok = TextTokenizer.from_dir(tmp_path)
    for text in ["Hello 世界 test", "我们是 中国人", " x"]:
        assert tok.encode(text) == ref.encode(text)


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("a\nb", "a b"),
        ("a \n\n b", "a b"),
        ("  lead and trail \t", " lead and trail "),
        ("tab\tsep\r\nline", "tab sep line"),
        ("全角\u3000空格", "全角 空格"),  # \s matches the ideographic space too (Python re, like the reference)
        ("", ""),
        ("no change", "no change"),
    ],
)
def test_prepare_text(raw: str, clean: str) -> None:
    assert prepare_text(raw) == clean

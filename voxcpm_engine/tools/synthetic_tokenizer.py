"""Tokenizer files for synthetic (random-weight) checkpoints, in the release layout (spec §5.1).

The release tokenizer is a ``LlamaTokenizerFast`` over a 73,440-entry BPE vocabulary plus 8 added
``<|im_*|>``-style tokens at the end. Synthetic checkpoints need the same structure and special ids but
not the real vocabulary, so we build a small one with the ``tokenizers`` library: byte-fallback tokens,
ASCII, a few hundred English words/subwords, a few hundred CJK characters and some multi-character CJK
words (so the multi-character Chinese splitting is exercised), then ``<reserved_N>`` fillers up to the
requested size. The output is a pure function of ``vocab_size``: checkpoints are compared byte for byte.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors
from tokenizers.models import BPE

__all__ = ["min_vocab_size", "write_tokenizer_files"]

_MARK = "\u2581"  # "▁"
_BASE_SPECIALS = ("<unk>", "<s>", "</s>")  # ids 0, 1, 2
# ids 101-112; 101-104 are the ones inference uses (voxcpm_engine.io.tokenizer.AUDIO_START ...).
_AUDIO_SPECIALS = (
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
)
_FIRST_AUDIO_SPECIAL = 101
# Added after the BPE vocabulary, i.e. the last 8 ids, as in the release.
_IM_TOKENS = (
    "<|im_end|>",
    "<|im_start|>",
    "<|tool_call|>",
    "<|execute_start|>",
    "<|execute_end|>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
)
# Ids 3-100 hold markup/punctuation entries in the release; a similar handful here, then fillers.
_HEAD = ("<SEP>", "<CLS>", "\n", "\t", "，", "。", "！", "？", "、", "：", "；", "《", "》", "（", "）", "...")
_ENGLISH = """
the be to of and a in that have it for not on with he as you do at this but his by from they we say her she
or an will my one all would there their what so up out if about who get which go me when make can like time no
just him know take people into year your good some could them see other than then now look only come its over
think also back after use two how our work first well way even new want because any these give day most us is
are was were has had been said did made test sentence hello world speech voice model text audio sound read
please thank morning today weather nice great number example quick brown fox jumps lazy dog
""".split()
_ENGLISH_BARE = ("Hello", "Hi", "The", "This", "It", "We", "ing", "ed", "er", "ly", "tion", "es", "'s", "n't", "00")
_ENGLISH_CAPITALIZED = ("Hello", "Hi", "The", "This", "It", "We", "I", "A", "Good", "Thank")
_CJK_CHARS = (
    "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去之过家学对可她里后小么心多"
    "天而能好都然没日于起还发成事只作当想看文无开手十用主行方又如前所本见经头面公同三已老从动两长知民样现分将外但身"
    "些与高意进把法此实回二理美点月明其种声全工己话儿者向情部正名定女问力机给等几很业最间新什打便位因重被走电四第门"
    "相次东政海口使教西再平真听世气信北少关并内加化由却代军产入先山五太水万市眼体别处总才场师书比住员九笑性通目华报"
    "立马命张活难神数件安表原车白应路期叫死常提感金何更反合放做系计或司利受光王果亲界及今京务制解各任至清物台象记边"
    "欢迎谢朋友语音模型测试句汉字"
)
_CJK_WORDS = (
    "你好", "世界", "中国", "我们", "欢迎", "使用", "谢谢", "再见", "朋友", "今天", "天气", "不错", "北京", "上海",
    "时间", "问题", "学生", "老师", "工作", "生活", "可以", "什么", "没有", "知道", "自己", "一个", "这个", "因为",
    "所以", "但是", "如果", "现在", "已经", "还是", "语音", "声音", "模型", "测试", "句子", "中文", "汉字",
    # "▁中国" ranks before "中国人" so that " 中国人" → "▁中国 人" and the space vanishes on splitting (spec §5.2).
    _MARK + "中国", "中国人", "我们是", "你好吗", "谢谢你", "世界上",
)  # fmt: skip
_RESERVED = "<reserved_{}>"


def _bpe_pieces(vocab: dict[str, int], merges: list[tuple[str, str]], word: str) -> list[str]:
    model = BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True)
    return [tok.value for tok in model.tokenize(word)]


def _add_word(vocab: dict[str, int], merges: list[tuple[str, str]], word: str) -> None:
    """Append merges (and intermediate tokens) until BPE turns ``word`` into one token.

    Each round merges the first two pieces of the word's current segmentation. New merges get the
    lowest priority, so words added earlier keep segmenting to themselves.
    """
    while True:
        pieces = _bpe_pieces(vocab, merges, word)
        if len(pieces) == 1:
            return
        left, right = pieces[0], pieces[1]
        merges.append((left, right))
        vocab.setdefault(left + right, len(vocab))


@functools.lru_cache(maxsize=1)
def _content() -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """The fixed vocabulary head (ids 0 .. n-1, in order) and the merges; independent of ``vocab_size``."""
    vocab: dict[str, int] = {}

    def add(token: str) -> None:
        vocab.setdefault(token, len(vocab))

    for tok in _BASE_SPECIALS + _HEAD:
        add(tok)
    while len(vocab) < _FIRST_AUDIO_SPECIAL:
        add(_RESERVED.format(len(vocab)))
    for tok in _AUDIO_SPECIALS:
        add(tok)
    for byte in range(256):
        add(f"<0x{byte:02X}>")
    add(_MARK)
    for code in range(0x21, 0x7F):
        add(chr(code))
    for ch in _CJK_CHARS + "".join(_CJK_WORDS) + "".join(_ENGLISH) + "".join(_ENGLISH_BARE):
        if ch != _MARK:
            add(ch)

    words = [_MARK * 2, _MARK * 4]
    words += [_MARK + w for w in _ENGLISH] + [_MARK + w for w in _ENGLISH_CAPITALIZED] + list(_ENGLISH_BARE)
    words += list(_CJK_WORDS)
    merges: list[tuple[str, str]] = []
    # Shorter words first so longer ones build on them; the stable sort keeps the listed order otherwise.
    for word in sorted(dict.fromkeys(words), key=len):
        _add_word(vocab, merges, word)
    return tuple(vocab), tuple(merges)


def min_vocab_size() -> int:
    """Smallest ``vocab_size`` :func:`write_tokenizer_files` accepts (content + the 8 added tokens)."""
    return len(_content()[0]) + len(_IM_TOKENS)


def _added(content: str) -> dict[str, Any]:
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}


def _build_tokenizer_json(vocab_size: int) -> str:
    head, merges = _content()
    n_bpe = vocab_size - len(_IM_TOKENS)
    tokens = list(head) + [_RESERVED.format(i) for i in range(len(head), n_bpe)]
    vocab = {tok: i for i, tok in enumerate(tokens)}

    tok = Tokenizer(BPE(vocab=vocab, merges=list(merges), unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend(_MARK), normalizers.Replace(" ", _MARK)])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s>:1 $B:1", special_tokens=[("<s>", vocab["<s>"])]
    )
    tok.decoder = decoders.Sequence(
        [decoders.Replace(_MARK, " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    # As in the release tokenizer.json: only <unk>/<s>/</s> and the im_* tokens are listed as added tokens
    # (the audio specials 101-112 are listed in tokenizer_config.json only).
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in _BASE_SPECIALS + _IM_TOKENS])
    if tok.get_vocab_size(with_added_tokens=True) != vocab_size or tok.token_to_id(_IM_TOKENS[0]) != n_bpe:
        raise AssertionError("synthetic tokenizer: unexpected id layout")  # guards the layout invariant

    data = json.loads(tok.to_str())
    # The release stores merges as "left right" strings (older tokenizers format), which every tokenizers
    # version reads; no token here contains a space, so the form is unambiguous.
    data["model"]["merges"] = [f"{a} {b}" for a, b in data["model"]["merges"]]
    return json.dumps(data, indent=2, ensure_ascii=False)


def _tokenizer_config(vocab_size: int) -> dict[str, Any]:
    n_bpe = vocab_size - len(_IM_TOKENS)
    ids = [0, 1, 2] + list(range(_FIRST_AUDIO_SPECIAL, _FIRST_AUDIO_SPECIAL + len(_AUDIO_SPECIALS)))
    names = list(_BASE_SPECIALS) + list(_AUDIO_SPECIALS)
    ids += list(range(n_bpe, vocab_size))
    names += list(_IM_TOKENS)
    return {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": {str(i): {**_added(name), "special": True} for i, name in zip(ids, names, strict=True)},
        "additional_special_tokens": list(_IM_TOKENS),
        "bos_token": "<s>",
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "legacy": True,
        "model_max_length": 1000000000000000019884624838656,
        "pad_token": None,
        "sp_model_kwargs": {},
        "spaces_between_special_tokens": False,
        "tokenizer_class": "LlamaTokenizer",
        "unk_token": "<unk>",
        "use_default_system_prompt": False,
        "chat_template": (
            "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
            "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
            "{% endif %}"
        ),
    }


def _special_tokens_map() -> dict[str, Any]:
    return {
        "additional_special_tokens": [_added(t) for t in _IM_TOKENS],
        "bos_token": _added("<s>"),
        "eos_token": _added("</s>"),
        "unk_token": _added("<unk>"),
    }


def write_tokenizer_files(out_dir: str | os.PathLike[str], vocab_size: int) -> list[Path]:
    """Write ``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json``.

    Same layout as the release: ids 0-2 ``<unk> <s> </s>``, 101-112 the audio/markup specials, the 8
    ``<|im_*|>`` tokens as the last ids, ``<reserved_N>`` (N = id) fillers; loadable by
    ``transformers.LlamaTokenizerFast`` and :class:`voxcpm_engine.io.tokenizer.TextTokenizer`. Byte-identical output
    for the same ``vocab_size``.

    Args:
        out_dir: Directory to write into (created if missing; existing files are overwritten).
        vocab_size: Total number of ids (``lm_config.vocab_size``; 73,448 for the release).

    Returns:
        The written paths.

    Raises:
        ValueError: ``vocab_size`` is below :func:`min_vocab_size`.
    """
    if not isinstance(vocab_size, int) or vocab_size < min_vocab_size():
        raise ValueError(f"vocab_size must be an int >= {min_vocab_size()}, got {vocab_size!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "tokenizer.json": _build_tokenizer_json(vocab_size),
        "tokenizer_config.json": json.dumps(_tokenizer_config(vocab_size), indent=2, ensure_ascii=False) + "\n",
        "special_tokens_map.json": json.dumps(_special_tokens_map(), indent=2, ensure_ascii=False) + "\n",
    }
    paths = []
    for name, text in files.items():
        path = out / name
        path.write_bytes(text.encode("utf-8"))  # bytes: no platform newline translation
        paths.append(path)
    return paths

"""Text tokenizer: the MiniCPM4 BPE vocabulary plus VoxCPM's multi-character Chinese splitting (spec §5).

The reference tokenizes with ``mask_multichar_chinese_tokens(LlamaTokenizerFast.from_pretrained(dir))``
under transformers 5.x. That class does not use the pipeline stored in ``tokenizer.json``: it keeps only
the BPE vocabulary and merges and rebuilds the rest (no normalizer, a ``Metaspace`` pre-tokenizer, no
``unk_token`` on the model), and it registers the added tokens listed in ``tokenizer_config.json``. We
rebuild the same backend here with the ``tokenizers`` library so ids match exactly, including the cases
where the stored pipeline would differ (a leading space: ``" x"`` is ``▁x``, not ``▁▁ x``; literal
special-token text such as ``"<|audio_start|>"``, which maps to its id as in the reference).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Tokenizer, pre_tokenizers
from tokenizers.models import BPE

__all__ = [
    "AUDIO_END",
    "AUDIO_START",
    "REF_AUDIO_END",
    "REF_AUDIO_START",
    "TextTokenizer",
    "prepare_text",
]

AUDIO_START = 101  # <|audio_start|>: appended after the text; generation starts after it
AUDIO_END = 102  # <|audio_end|>: training only, never fed at inference
REF_AUDIO_START = 103  # <|audio_prompt_start|>: opens a v2 reference-audio segment
REF_AUDIO_END = 104  # <|audio_prompt_end|>: closes it

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"

_SPACE_MARK = "\u2581"  # "▁", SentencePiece's word-boundary mark
_CJK_FIRST, _CJK_LAST = "\u4e00", "\u9fff"  # the range the reference tests (CJK Unified Ideographs only)
_CJK_CHAR = re.compile(f"[{_CJK_FIRST}-{_CJK_LAST}]")
_WHITESPACE_RUN = re.compile(r"\s+")
# Named special tokens the transformers class registers when the config does not already list them.
_NAMED_SPECIAL_KEYS = ("unk_token", "bos_token", "eos_token", "pad_token")
_LLAMA_DEFAULTS = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"}


def prepare_text(text: str) -> str:
    r"""Whitespace cleanup always applied to the target text (spec §5.3 step 1).

    ``\n`` becomes a space, then every whitespace run becomes one space. Leading and trailing
    whitespace is kept (collapsed), exactly like the reference; the prompt text is not passed here.

    Args:
        text: Raw target text.

    Returns:
        The cleaned text.
    """
    return _WHITESPACE_RUN.sub(" ", text.replace("\n", " "))


def _is_multichar_cjk(token: str) -> bool:
    return len(token) >= 2 and all(_CJK_FIRST <= ch <= _CJK_LAST for ch in token)


def _placeholder_hint(raw: bytes) -> str:
    # A checkout made with git symlinks disabled leaves a short text file holding the link target.
    text = raw.decode("utf-8", errors="replace").strip()
    if text and len(text) < 512 and "\n" not in text and not text.startswith(("{", "[")):
        return f"; it looks like a git symlink placeholder pointing to {text!r} (copy the real file there)"
    return ""


def _read_json(path: Path) -> dict[str, Any]:
    raw = path.read_bytes()
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}){_placeholder_hint(raw)}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _added_token(spec: Any, where: Path) -> AddedToken:
    """An ``AddedToken`` from a config entry: a dict of its fields or a plain string (special)."""
    if isinstance(spec, str):
        return AddedToken(spec, special=True)
    if isinstance(spec, dict) and isinstance(spec.get("content"), str):
        fields = {k: spec[k] for k in ("single_word", "lstrip", "rstrip", "normalized", "special") if k in spec}
        return AddedToken(spec["content"], **fields)
    raise ValueError(f"{where}: malformed added-token entry {spec!r}")


def _merge_pairs(merges: list[Any], vocab: dict[str, Any], where: Path) -> list[tuple[str, str]]:
    """Merges as pairs, checked up front: a merge whose result is not in the vocab makes tokenizers panic."""
    pairs: list[tuple[str, str]] = []
    for i, merge in enumerate(merges):
        pair = tuple(merge.split(" ")) if isinstance(merge, str) else tuple(merge) if isinstance(merge, list) else ()
        if len(pair) != 2 or not all(isinstance(p, str) and p in vocab for p in pair) or pair[0] + pair[1] not in vocab:
            raise ValueError(f"{where}: merge #{i} {merge!r} is not a pair of vocab tokens with a vocab result")
        pairs.append(pair)
    return pairs


def _token_content(spec: Any) -> str | None:
    if isinstance(spec, str):
        return spec
    if isinstance(spec, dict) and isinstance(spec.get("content"), str):
        return spec["content"]
    return None


class TextTokenizer:
    """VoxCPM text tokenizer: BPE ids with multi-character Chinese tokens split into characters.

    Use :meth:`from_dir`. :meth:`encode` never adds BOS/EOS; the audio special ids
    (:data:`AUDIO_START` …) are inserted by the caller by id.
    """

    def __init__(self, backend: Tokenizer, unk_token: str | None = "<unk>") -> None:
        """Wrap an already configured ``tokenizers.Tokenizer``.

        Args:
            backend: The BPE backend, configured like the transformers 5.x ``LlamaTokenizerFast``.
            unk_token: Token whose id replaces a split character missing from the vocabulary.
        """
        self._backend = backend
        self._vocab: dict[str, int] = backend.get_vocab(with_added_tokens=True)
        self._unk_id = self._vocab.get(unk_token) if unk_token is not None else None
        # Computed from the vocabulary (19,400 entries for the release), like the reference.
        self._multichar = frozenset(tok for tok in self._vocab if _is_multichar_cjk(tok))

    @classmethod
    def from_dir(cls, path: str | os.PathLike[str]) -> TextTokenizer:
        """Load from a checkpoint directory's ``tokenizer.json`` (+ ``tokenizer_config.json`` if present).

        Only the BPE vocabulary and merges of ``tokenizer.json`` are used; ``tokenizer_config.json``
        supplies the added tokens, ``legacy`` and the named special tokens, as transformers does.

        Args:
            path: Checkpoint directory.

        Returns:
            The tokenizer.

        Raises:
            FileNotFoundError: ``tokenizer.json`` is missing.
            ValueError: A tokenizer file is not valid JSON, not a BPE tokenizer, or malformed (bad merges,
                bad added-token entries).
        """
        root = Path(path)
        tok_path = root / TOKENIZER_FILE
        if not tok_path.is_file():
            raise FileNotFoundError(f"{tok_path}: tokenizer file not found")
        data = _read_json(tok_path)
        cfg_path = root / TOKENIZER_CONFIG_FILE
        config = _read_json(cfg_path) if cfg_path.is_file() else {}

        model = data.get("model")
        if not isinstance(model, dict) or model.get("type") != "BPE":
            kind = model.get("type") if isinstance(model, dict) else model
            raise ValueError(f"{tok_path}: expected a BPE model, got {kind!r}")
        vocab, merges = model.get("vocab"), model.get("merges")
        if not isinstance(vocab, dict) or not vocab or not isinstance(merges, list):
            raise ValueError(f"{tok_path}: model.vocab must be a non-empty object and model.merges a list")
        pairs = _merge_pairs(merges, vocab, tok_path)
        try:
            # transformers' LlamaTokenizer passes no unk_token to the model: with byte_fallback an unknown
            # character becomes <0xXX> tokens, and is dropped only if those are missing too.
            backend = Tokenizer(BPE(vocab=vocab, merges=pairs, fuse_unk=True, byte_fallback=True, dropout=None))
        except Exception as exc:  # the Rust side raises plain Exception subclasses for a bad vocab
            raise ValueError(f"{tok_path}: cannot build the BPE model ({exc})") from exc

        # legacy=True (the release) → "always": every text segment, including one after an added token,
        # gets a leading "▁" unless it already starts with one (so " x" → "▁x").
        scheme = "always" if config.get("legacy", False) else "first"
        if config.get("add_prefix_space") is not None and not config["add_prefix_space"]:
            scheme = "never"
        backend.normalizer = None
        backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement=_SPACE_MARK, prepend_scheme=scheme, split=False)
        backend.add_tokens(cls._added_tokens(data, config, tok_path, cfg_path))
        backend.encode_special_tokens = bool(config.get("split_special_tokens", False))
        unk = config.get("unk_token", _LLAMA_DEFAULTS["unk_token"])
        return cls(backend, unk_token=_token_content(unk))

    @staticmethod
    def _added_tokens(data: dict[str, Any], config: dict[str, Any], tok_path: Path, cfg_path: Path) -> list[AddedToken]:
        """The added tokens in the order transformers 5.x registers them (ids of new ones depend on it)."""
        if "added_tokens_decoder" in config:
            table = config["added_tokens_decoder"]
            if not isinstance(table, dict):
                raise ValueError(f"{cfg_path}: added_tokens_decoder must be an object")
            try:
                entries = sorted(((int(k), v) for k, v in table.items()), key=lambda kv: kv[0])
            except ValueError as exc:
                raise ValueError(f"{cfg_path}: added_tokens_decoder keys must be integer ids") from exc
            tokens = [_added_token(v, cfg_path) for _, v in entries]
        else:
            listed = data.get("added_tokens") or []
            if not isinstance(listed, list):
                raise ValueError(f"{tok_path}: added_tokens must be a list")
            by_id = sorted(listed, key=lambda v: v.get("id", 0) if isinstance(v, dict) else 0)
            tokens = [_added_token(v, tok_path) for v in by_id]

        named: list[Any] = [config.get(k, _LLAMA_DEFAULTS.get(k)) for k in _NAMED_SPECIAL_KEYS]
        for key in ("additional_special_tokens", "extra_special_tokens"):
            extra = config.get(key) or []
            named.extend(extra if isinstance(extra, list) else [])
        present = {t.content for t in tokens}
        for spec in named:
            content = _token_content(spec)
            if content is not None and content not in present:
                tokens.append(AddedToken(content, special=True))
                present.add(content)
        return tokens

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included (73,448 for the release)."""
        return len(self._vocab)

    @property
    def multichar_tokens(self) -> frozenset[str]:
        """Vocabulary entries of ≥ 2 CJK Unified Ideographs, which :meth:`tokenize` splits."""
        return self._multichar

    def token_to_id(self, token: str) -> int | None:
        """Id of a vocabulary entry (added tokens included), or ``None``."""
        return self._vocab.get(token)

    def tokenize(self, text: str) -> list[str]:
        """Token strings of ``text`` after multi-character Chinese splitting (no BOS).

        A token whose text without "▁" is a multi-character CJK entry is replaced by its characters
        and loses its "▁" (so "我们是 中国人" loses the space); every other token is kept as is.

        Args:
            text: Text to tokenize.

        Returns:
            Token strings.

        Raises:
            TypeError: ``text`` is not a ``str``.
        """
        if not isinstance(text, str):
            raise TypeError(f"expected str, got {type(text).__name__}")
        tokens = self._backend.encode(text, add_special_tokens=False).tokens
        if _CJK_CHAR.search(text) is None:
            return tokens  # a token is made of the text's characters: none can be a CJK entry
        out: list[str] = []
        for token in tokens:
            bare = token.replace(_SPACE_MARK, "")
            if bare in self._multichar:
                out.extend(bare)
            else:
                out.append(token)
        return out

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` exactly as the reference wrapper produces them (no BOS).

        Args:
            text: Text to encode (already prepared; see :func:`prepare_text`).

        Returns:
            Token ids.

        Raises:
            TypeError: ``text`` is not a ``str``.
            ValueError: A split character is missing from the vocabulary and there is no unk token.
        """
        tokens = self.tokenize(text)
        get, unk = self._vocab.get, self._unk_id
        ids = [get(token, unk) for token in tokens]
        if unk is None and None in ids:
            token = tokens[ids.index(None)]
            raise ValueError(f"token {token!r} is not in the vocabulary and the tokenizer has no unk token")
        return ids  # type: ignore[return-value]  # no None is left

"""WordPiece tokenisation with the fast ``tokenizers`` library.

Three sources of a vocabulary:

- a BERT vocabulary file (one token per line, the line number is the id);
- a Hugging Face tokenizer folder (``tokenizer.json`` with a WordPiece model, or
  ``vocab.txt`` with ``tokenizer_config.json``);
- a vocabulary trained on the corpus (``train_wordpiece``).

Lower-casing and accent stripping follow the vocabulary's convention: a vocabulary
with no upper-case ASCII letters is uncased, and an uncased vocabulary strips accents
unless a noticeable share of its entries carries them, as the BERT tokenizers do.
Either setting can be forced. The chosen settings are stored with the prepared data.
"""

from __future__ import annotations

import json
import logging
import os
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

logger = logging.getLogger(__name__)

PAD_TOKEN = "[PAD]"
UNK_TOKEN = "[UNK]"
CLS_TOKEN = "[CLS]"
SEP_TOKEN = "[SEP]"
MASK_TOKEN = "[MASK]"
SPECIAL_TOKENS = (PAD_TOKEN, UNK_TOKEN, CLS_TOKEN, SEP_TOKEN, MASK_TOKEN)
SUBWORD_PREFIX = "##"
# BERT's limit: longer words become a single [UNK].
MAX_INPUT_CHARS_PER_WORD = 100

_ENCODE_BATCH = 8192
# Shares of vocabulary entries above which a vocabulary counts as cased / accented.
_CASED_SHARE = 0.005
_ACCENTED_SHARE = 0.01


@dataclass(frozen=True)
class SpecialTokenIds:
    """Ids of the five BERT special tokens in one vocabulary."""

    pad: int
    unk: int
    cls: int
    sep: int
    mask: int

    def as_dict(self) -> dict[str, int]:
        return {"pad": self.pad, "unk": self.unk, "cls": self.cls, "sep": self.sep, "mask": self.mask}


class WordPieceTokenizer:
    """A BERT WordPiece tokenizer: vocabulary, normalisation settings and special ids."""

    def __init__(self, vocab: Sequence[str], *, lowercase: bool, strip_accents: bool, source: str):
        self.vocab = list(vocab)
        self.lowercase = lowercase
        self.strip_accents = strip_accents
        self.source = source

        token_to_id = {}
        for index, token in enumerate(self.vocab):
            if token in token_to_id:
                raise ValueError(
                    f"vocabulary from {source} lists {token!r} twice (entries {token_to_id[token]} and {index}); "
                    "every token must appear once"
                )
            token_to_id[token] = index
        missing = [token for token in SPECIAL_TOKENS if token not in token_to_id]
        if missing:
            raise ValueError(
                f"vocabulary from {source} lacks the special token(s) {', '.join(missing)}; "
                f"a BERT WordPiece vocabulary needs all of {', '.join(SPECIAL_TOKENS)}"
            )
        self.special_ids = SpecialTokenIds(*(token_to_id[token] for token in SPECIAL_TOKENS))

        self._tokenizer = Tokenizer(
            models.WordPiece(
                token_to_id, unk_token=UNK_TOKEN, continuing_subword_prefix=SUBWORD_PREFIX,
                max_input_chars_per_word=MAX_INPUT_CHARS_PER_WORD,
            )
        )
        self._tokenizer.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=strip_accents, lowercase=lowercase
        )
        self._tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        # "[UNK]" written in the text (WikiText's "<unk>" is read as "[UNK]") becomes the
        # unknown-token id instead of the pieces "[", "un", "##k", "]". Other special tokens
        # in the text stay plain text, so a corpus cannot inject [SEP] or [MASK].
        self._tokenizer.add_special_tokens([UNK_TOKEN])

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Tokenise texts without special tokens; each result is an int32 array of ids."""
        results: list[np.ndarray] = []
        # Batches bound the memory held by the library's Encoding objects.
        for start in range(0, len(texts), _ENCODE_BATCH):
            encodings = self._tokenizer.encode_batch_fast(list(texts[start:start + _ENCODE_BATCH]), add_special_tokens=False)
            results.extend(np.asarray(encoding.ids, dtype=np.int32) for encoding in encodings)
        return results

    def decode(self, ids: Iterable[int]) -> str:
        """Join WordPiece tokens back into text (special tokens kept, "##" pieces merged)."""
        words: list[str] = []
        for token_id in ids:
            token = self.vocab[int(token_id)]
            if token.startswith(SUBWORD_PREFIX) and words:
                words[-1] += token[len(SUBWORD_PREFIX):]
            else:
                words.append(token)
        return " ".join(words)

    def normalize(self, text: str) -> str:
        """Apply the tokenizer's normalisation (lower-casing, accent stripping) to text."""
        return self._tokenizer.normalizer.normalize_str(text)

    def save_vocab(self, path: Path) -> None:
        with open(path, "w", encoding="utf-8") as handle:
            for token in self.vocab:
                handle.write(token + "\n")


def read_vocab_file(path: str | os.PathLike) -> list[str]:
    """Read a WordPiece vocabulary file: one token per line, the line number is its id."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"vocabulary file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"vocabulary file {path} is not UTF-8 text ({error})") from error
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    vocab = [line.rstrip("\r") for line in lines]
    for number, token in enumerate(vocab, start=1):
        if not token.strip():
            raise ValueError(f"vocabulary file {path}, line {number}: empty token; remove the blank line")
    if not vocab:
        raise ValueError(f"vocabulary file {path} is empty")
    return vocab


def _is_bracketed(token: str) -> bool:
    return token.startswith("[") and token.endswith("]")


def detect_casing(vocab: Sequence[str]) -> tuple[bool, bool]:
    """Return (lowercase, strip_accents) as the vocabulary's entries imply."""
    words = [token for token in vocab if not _is_bracketed(token)]
    if not words:
        return True, True
    cased = sum(1 for token in words if any("A" <= char <= "Z" for char in token))
    if cased > _CASED_SHARE * len(words):
        return False, False
    accented = sum(
        1 for token in words
        if any(unicodedata.category(char) == "Mn" for char in unicodedata.normalize("NFD", token))
    )
    return True, accented <= _ACCENTED_SHARE * len(words)


def _resolve_casing(
    vocab: Sequence[str], lowercase: bool | None, strip_accents: bool | None
) -> tuple[bool, bool]:
    detected_lowercase, detected_strip = detect_casing(vocab)
    lowercase = detected_lowercase if lowercase is None else lowercase
    if strip_accents is None:
        strip_accents = detected_strip if lowercase == detected_lowercase else lowercase
    return lowercase, strip_accents


def load_vocab_file(
    path: str | os.PathLike, *, lowercase: bool | None = None, strip_accents: bool | None = None
) -> WordPieceTokenizer:
    """Build a tokenizer from a vocabulary file; casing follows the vocabulary unless forced."""
    vocab = read_vocab_file(path)
    lowercase, strip_accents = _resolve_casing(vocab, lowercase, strip_accents)
    return WordPieceTokenizer(vocab, lowercase=lowercase, strip_accents=strip_accents, source=f"vocabulary file {path}")


def load_tokenizer_dir(
    path: str | os.PathLike, *, lowercase: bool | None = None, strip_accents: bool | None = None
) -> WordPieceTokenizer:
    """Build a tokenizer from a Hugging Face tokenizer folder (``tokenizer.json`` or ``vocab.txt``)."""
    path = Path(path)
    tokenizer_json = path / "tokenizer.json"
    if tokenizer_json.is_file():
        spec = json.loads(tokenizer_json.read_text(encoding="utf-8"))
        model = spec.get("model") or {}
        if model.get("type") != "WordPiece":
            raise ValueError(
                f"{tokenizer_json} contains a {model.get('type')} model; the pre-training pipeline needs a "
                "WordPiece (BERT) tokenizer"
            )
        token_to_id: dict[str, int] = dict(model["vocab"])
        for added in spec.get("added_tokens") or []:
            token_to_id.setdefault(added["content"], added["id"])
        ids = sorted(token_to_id.values())
        if ids != list(range(len(ids))):
            raise ValueError(f"{tokenizer_json}: vocabulary ids are not contiguous from 0; it cannot be saved as vocab.txt")
        vocab = [""] * len(ids)
        for token, index in token_to_id.items():
            vocab[index] = token
        normalizer = spec.get("normalizer") or {}
        if normalizer.get("type") == "BertNormalizer":
            if lowercase is None:
                lowercase = bool(normalizer.get("lowercase", True))
            if strip_accents is None and normalizer.get("strip_accents") is not None:
                strip_accents = bool(normalizer["strip_accents"])
        lowercase, strip_accents = _resolve_casing(vocab, lowercase, strip_accents)
        return WordPieceTokenizer(vocab, lowercase=lowercase, strip_accents=strip_accents, source=f"tokenizer {path}")

    vocab_file = path / "vocab.txt"
    if not vocab_file.is_file():
        raise FileNotFoundError(f"tokenizer folder {path} has neither tokenizer.json nor vocab.txt")
    config_file = path / "tokenizer_config.json"
    if config_file.is_file():
        config = json.loads(config_file.read_text(encoding="utf-8"))
        if lowercase is None and "do_lower_case" in config:
            lowercase = bool(config["do_lower_case"])
        if strip_accents is None and config.get("strip_accents") is not None:
            strip_accents = bool(config["strip_accents"])
    vocab = read_vocab_file(vocab_file)
    lowercase, strip_accents = _resolve_casing(vocab, lowercase, strip_accents)
    return WordPieceTokenizer(vocab, lowercase=lowercase, strip_accents=strip_accents, source=f"tokenizer {path}")


def load_tokenizer(
    path: str | os.PathLike, *, lowercase: bool | None = None, strip_accents: bool | None = None
) -> WordPieceTokenizer:
    """Load a tokenizer from a vocabulary file or a Hugging Face tokenizer folder."""
    path = Path(path)
    if path.is_dir():
        return load_tokenizer_dir(path, lowercase=lowercase, strip_accents=strip_accents)
    if path.is_file():
        return load_vocab_file(path, lowercase=lowercase, strip_accents=strip_accents)
    raise FileNotFoundError(
        f"vocabulary not found: {path} is neither a vocabulary file nor a tokenizer folder"
    )


def train_wordpiece(
    texts: Iterable[str],
    vocab_size: int,
    *,
    lowercase: bool = True,
    strip_accents: bool | None = None,
    min_frequency: int = 2,
) -> WordPieceTokenizer:
    """Train a WordPiece vocabulary of at most ``vocab_size`` entries on ``texts``.

    The five BERT special tokens take ids 0 to 4. A corpus with few distinct words
    gives a smaller vocabulary than requested.
    """
    if vocab_size < len(SPECIAL_TOKENS) + 1:
        raise ValueError(f"vocab_size {vocab_size} is too small: it must leave room beyond the {len(SPECIAL_TOKENS)} special tokens")
    strip_accents = lowercase if strip_accents is None else strip_accents
    tokenizer = Tokenizer(models.WordPiece(unk_token=UNK_TOKEN, max_input_chars_per_word=MAX_INPUT_CHARS_PER_WORD))
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=strip_accents, lowercase=lowercase
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        continuing_subword_prefix=SUBWORD_PREFIX,
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    token_to_id = tokenizer.get_vocab()
    vocab = [""] * len(token_to_id)
    for token, index in token_to_id.items():
        vocab[index] = token
    if len(vocab) <= len(SPECIAL_TOKENS):
        raise ValueError("the corpus gave an empty vocabulary: it contains no text to train on")
    return WordPieceTokenizer(vocab, lowercase=lowercase, strip_accents=strip_accents, source="a vocabulary trained on the corpus")

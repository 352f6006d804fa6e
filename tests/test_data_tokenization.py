"""WordPiece tokenizers from a vocabulary file, a Hugging Face folder, or trained on text."""

from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer, models

from pipelines.sentences import split_sentences
from pipelines.tokenization import (
    SPECIAL_TOKENS,
    detect_casing,
    load_tokenizer,
    load_vocab_file,
    read_vocab_file,
    train_wordpiece,
)
from test_data_common import WIKITEXT_DIR


def write_vocab(path, tokens):
    path.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return path


def test_bert_vocabulary_is_uncased(bert_vocab_file):
    tokenizer = load_vocab_file(bert_vocab_file)
    assert tokenizer.vocab_size == 30522
    assert tokenizer.lowercase
    assert tokenizer.strip_accents
    assert tokenizer.special_ids.as_dict() == {"pad": 0, "unk": 100, "cls": 101, "sep": 102, "mask": 103}
    (ids,) = tokenizer.encode_batch(["Héllo Wörld, playing"])
    assert [tokenizer.vocab[i] for i in ids] == ["hello", "world", ",", "playing"]


def test_unk_text_becomes_unk_id(bert_vocab_file):
    tokenizer = load_vocab_file(bert_vocab_file)
    (ids,) = tokenizer.encode_batch(["a [UNK] word"])
    assert ids.tolist() == [1037, 100, 2773]


def test_mask_text_stays_plain_text(bert_vocab_file):
    tokenizer = load_vocab_file(bert_vocab_file)
    (ids,) = tokenizer.encode_batch(["a [MASK] word"])
    assert 103 not in ids.tolist()
    assert [tokenizer.vocab[i] for i in ids] == ["a", "[", "mask", "]", "word"]


def test_cased_vocabulary_keeps_case(tmp_path):
    words = ["The", "the", "Paris", "river", "Town", "town", "##s", "a", "A", "."]
    vocab = write_vocab(tmp_path / "vocab.txt", list(SPECIAL_TOKENS) + words)
    tokenizer = load_vocab_file(vocab)
    assert not tokenizer.lowercase
    assert not tokenizer.strip_accents
    (ids,) = tokenizer.encode_batch(["The Towns"])
    assert [tokenizer.vocab[i] for i in ids] == ["The", "Town", "##s"]


def test_casing_can_be_forced(bert_vocab_file):
    tokenizer = load_vocab_file(bert_vocab_file, lowercase=False)
    assert not tokenizer.lowercase
    assert not tokenizer.strip_accents
    (ids,) = tokenizer.encode_batch(["Hello"])
    assert ids.tolist() == [100]


def test_casing_detection_on_accents():
    words = [f"caf{chr(0xE9)}{i}" for i in range(50)] + [f"word{i}" for i in range(50)]
    assert detect_casing(list(SPECIAL_TOKENS) + words) == (True, False)
    assert detect_casing(list(SPECIAL_TOKENS) + [f"word{i}" for i in range(100)]) == (True, True)


def test_hugging_face_folder_matches_vocabulary_file(minilm_dir, bert_vocab_file):
    from_folder = load_tokenizer(minilm_dir)
    from_file = load_tokenizer(bert_vocab_file)
    assert from_folder.vocab == from_file.vocab
    assert from_folder.lowercase
    text = ["The Alabama River flows through Montgomery, Alabama's capital."]
    assert from_folder.encode_batch(text)[0].tolist() == from_file.encode_batch(text)[0].tolist()


def test_folder_with_vocab_and_config(tmp_path, bert_vocab_file):
    folder = tmp_path / "tokenizer"
    folder.mkdir()
    (folder / "vocab.txt").write_text(bert_vocab_file.read_text(encoding="utf-8"), encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}), encoding="utf-8")
    tokenizer = load_tokenizer(folder)
    assert not tokenizer.lowercase


def test_non_wordpiece_tokenizer_rejected(tmp_path):
    folder = tmp_path / "bpe"
    folder.mkdir()
    Tokenizer(models.BPE()).save(str(folder / "tokenizer.json"))
    with pytest.raises(ValueError, match="contains a BPE model"):
        load_tokenizer(folder)


def test_vocabulary_without_special_tokens_rejected(tmp_path):
    vocab = write_vocab(tmp_path / "vocab.txt", ["[PAD]", "[UNK]", "the", "a"])
    with pytest.raises(ValueError, match=r"lacks the special token\(s\) \[CLS\], \[SEP\], \[MASK\]"):
        load_vocab_file(vocab)


def test_duplicate_token_rejected(tmp_path):
    vocab = write_vocab(tmp_path / "vocab.txt", list(SPECIAL_TOKENS) + ["the", "a", "the"])
    with pytest.raises(ValueError, match="lists 'the' twice"):
        load_vocab_file(vocab)


def test_blank_line_in_vocabulary_rejected(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("[PAD]\n\nthe\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 2: empty token"):
        read_vocab_file(vocab)


def test_missing_vocabulary_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="vocabulary not found"):
        load_tokenizer(tmp_path / "absent.txt")


def test_trained_vocabulary_on_wikitext(shared_data):
    lines = (shared_data / WIKITEXT_DIR / "valid.txt").read_text(encoding="utf-8").split("\n")
    tokenizer = train_wordpiece(lines, 5000)
    assert 4000 < tokenizer.vocab_size <= 5000
    assert tokenizer.vocab[:5] == list(SPECIAL_TOKENS)
    assert any(token.startswith("##") for token in tokenizer.vocab)
    (ids,) = tokenizer.encode_batch(["The lobster is blue"])
    assert tokenizer.decode(ids) == "the lobster is blue"


def test_trained_vocabulary_needs_room():
    with pytest.raises(ValueError, match="too small"):
        train_wordpiece(["some text"], 5)


@pytest.mark.parametrize(
    ("paragraph", "sentences"),
    [
        ("One. Two! Three? Four", ["One.", "Two!", "Three?", "Four"]),
        ("Dr. Smith met Mr. Jones in the U.S. Army. Then they left.", ["Dr. Smith met Mr. Jones in the U.S. Army.", "Then they left."]),
        ("J. R. R. Tolkien wrote it. It sold.", ["J. R. R. Tolkien wrote it.", "It sold."]),
        ("Track No. 5 is long. The answer is no. Okay.", ["Track No. 5 is long.", "The answer is no.", "Okay."]),
        ('He said "Stop." Then he went.', ['He said "Stop."', "Then he went."]),
        ("Prices rose (by 5 %). In 1999 they fell.", ["Prices rose (by 5 %).", "In 1999 they fell."]),
        ("e.g. apples and pears. Both grow.", ["e.g. apples and pears.", "Both grow."]),
        ("version 2.5 was fast. 3.0 was faster.", ["version 2.5 was fast.", "3.0 was faster."]),
        ("   ", []),
    ],
)
def test_sentence_splitting(paragraph, sentences):
    assert split_sentences(paragraph) == sentences

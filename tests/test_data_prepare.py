"""Shard builder: prepared folders, reuse, errors, and the round trip through shards."""

from __future__ import annotations

import json
import logging
import os
import re
import socket

import numpy as np
import pytest

from pipelines.pretraining_data import main, prepare_pretraining_data
from pipelines.shards import METADATA_FILE, ShardedSequences, is_prepared_data, read_metadata
from pipelines.tokenization import load_vocab_file
from test_data_common import ENWIKI_DUMP, WIKITEXT_DIR, enwiki_128, read_documents, wikitext_valid_128


@pytest.fixture(scope="module")
def wikitext_dir(tmp_path_factory, shared_data, bert_vocab_file):
    return wikitext_valid_128(tmp_path_factory, shared_data, bert_vocab_file)


@pytest.fixture(scope="module")
def enwiki_dir(tmp_path_factory, shared_data, bert_vocab_file):
    return enwiki_128(tmp_path_factory, shared_data, bert_vocab_file)


def small_text_corpus(path, documents=6, sentences=8):
    """A text file of documents whose sentences name their document and position."""
    lines = []
    for doc in range(documents):
        lines.extend(
            f"Document {doc} sentence {sentence} talks about topic {doc * 31 + sentence} in some detail."
            for sentence in range(sentences)
        )
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def prepare(inputs, output, **overrides):
    settings = dict(
        vocab_file=None, vocab_size=200, sequence_length=32, validation_fraction=0.2, seed=1, workers=1,
    )
    settings.update(overrides)
    return prepare_pretraining_data(inputs, output, **settings)


def normalised_words(text, tokenizer):
    """Text after the tokenizer's normalisation, without whitespace.

    Truncation may cut a word, leaving a leading "##" piece, which is dropped here.
    """
    return re.sub(r"\s+", "", tokenizer.normalize(text)).replace("##", "")


def test_metadata_describes_data(wikitext_dir, bert_vocab_file):
    assert is_prepared_data(wikitext_dir)
    info = read_metadata(wikitext_dir)
    assert info.sequence_length == 128
    assert info.vocab_size == 30522
    assert info.lowercase
    assert info.strip_accents
    assert info.vocab_file.read_text(encoding="utf-8") == bert_vocab_file.read_text(encoding="utf-8")
    assert info.special_token_ids == {"pad": 0, "unk": 100, "cls": 101, "sep": 102, "mask": 103}
    counts = info.counts
    assert counts["train"]["documents"] + counts["validation"]["documents"] == 60
    assert counts["validation"]["documents"] == 3  # round(0.05 x 60)
    assert counts["train"]["sequences"] == len(ShardedSequences(wikitext_dir, "train"))


def test_validation_documents_never_in_train(wikitext_dir):
    train = ShardedSequences(wikitext_dir, "train")
    validation = ShardedSequences(wikitext_dir, "validation")
    train_documents = set(train.array("document_ids")) | set(train.array("next_document_ids"))
    validation_documents = set(validation.array("document_ids")) | set(validation.array("next_document_ids"))
    assert validation_documents
    assert train_documents.isdisjoint(validation_documents)


def test_wikitext_round_trip_through_shards(wikitext_dir, shared_data, bert_vocab_file):
    tokenizer = load_vocab_file(bert_vocab_file)
    documents = read_documents(shared_data / WIKITEXT_DIR / "valid.txt")
    texts = [normalised_words(" ".join(document.paragraphs), tokenizer) for document in documents]
    sequences = ShardedSequences(wikitext_dir, "train")
    document_ids = sequences.array("document_ids")
    labels = sequences.array("next_sentence_labels")
    checked = 0
    for index in range(0, len(sequences), 7):
        ids, b_start, label = sequences.get(index)
        assert label == labels[index]
        assert ids[0] == 101
        assert ids[b_start - 1] == 102
        assert ids[-1] == 102
        segment_a = normalised_words(tokenizer.decode(ids[1:b_start - 1]), tokenizer)
        assert segment_a in texts[document_ids[index]]
        checked += 1
    assert checked > 50


def token_string(ids) -> str:
    return "," + ",".join(str(int(token)) for token in ids) + ","


def test_enwiki_round_trip_through_shards(enwiki_dir, shared_data, bert_vocab_file):
    tokenizer = load_vocab_file(bert_vocab_file)
    documents = read_documents(shared_data / ENWIKI_DUMP)
    assert len(documents) == 96
    info = read_metadata(enwiki_dir)
    assert info.counts["train"]["documents"] + info.counts["validation"]["documents"] == 96
    assert info.metadata["input_counts"]["wikipedia"]["articles"] == 96
    # Tokenising whole documents gives the same ids as tokenising their sentences one by one.
    document_tokens = [
        token_string(ids) for ids in tokenizer.encode_batch([" ".join(doc.paragraphs) for doc in documents])
    ]
    sequences = ShardedSequences(enwiki_dir, "train")
    document_ids = sequences.array("document_ids")
    next_document_ids = sequences.array("next_document_ids")
    checked = 0
    for index in range(0, len(sequences), 25):
        ids, b_start, _ = sequences.get(index)
        assert token_string(ids[1:b_start - 1]) in document_tokens[document_ids[index]]
        assert token_string(ids[b_start:-1]) in document_tokens[next_document_ids[index]]
        checked += 1
    assert checked > 150


def test_second_call_reuses_data(wikitext_dir, shared_data, bert_vocab_file, caplog):
    before = os.stat(wikitext_dir / METADATA_FILE).st_mtime_ns
    with caplog.at_level(logging.INFO, logger="pipelines.pretraining_data"):
        again = prepare_pretraining_data(
            [shared_data / WIKITEXT_DIR / "valid.txt"], wikitext_dir, vocab_file=bert_vocab_file,
            vocab_size=30522, sequence_length=128, validation_fraction=0.05, seed=7, workers=2,
        )
    assert again == wikitext_dir
    assert os.stat(wikitext_dir / METADATA_FILE).st_mtime_ns == before
    assert "reusing the prepared data" in caplog.text


def test_different_settings_rejected(wikitext_dir, shared_data, bert_vocab_file):
    with pytest.raises(ValueError, match=r"sequence_length: stored 128 vs requested 256.*another output folder"):
        prepare_pretraining_data(
            [shared_data / WIKITEXT_DIR / "valid.txt"], wikitext_dir, vocab_file=bert_vocab_file,
            vocab_size=30522, sequence_length=256, validation_fraction=0.05, seed=7, workers=2,
        )


def test_overwrite_rebuilds_with_new_settings(tmp_path):
    corpus = small_text_corpus(tmp_path / "corpus.txt")
    output = tmp_path / "out"
    prepare([corpus], output)
    assert read_metadata(output).sequence_length == 32
    prepare([corpus], output, sequence_length=48, overwrite=True)
    assert read_metadata(output).sequence_length == 48
    assert sorted(path.name for path in tmp_path.iterdir()) == ["corpus.txt", "out"]


def test_trained_vocabulary_saved_and_bounded(tmp_path):
    corpus = small_text_corpus(tmp_path / "corpus.txt")
    output = prepare([corpus], tmp_path / "out", vocab_size=120)
    info = read_metadata(output)
    vocab = info.vocab_file.read_text(encoding="utf-8").split("\n")[:-1]
    assert info.vocab_size == len(vocab) <= 120
    assert vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert info.lowercase


def test_failed_build_leaves_nothing(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"A fine first line.\nA second line with \xff\xfe bytes.\n")
    with pytest.raises(ValueError, match=r"bad.txt, line 2: not valid UTF-8"):
        prepare([bad], tmp_path / "out")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["bad.txt"]


def test_non_empty_unprepared_folder_rejected(tmp_path):
    corpus = small_text_corpus(tmp_path / "corpus.txt")
    output = tmp_path / "out"
    output.mkdir()
    (output / "notes.txt").write_text("keep me", encoding="utf-8")
    with pytest.raises(FileExistsError, match="not empty and contains no prepared data"):
        prepare([corpus], output)
    assert (output / "notes.txt").read_text(encoding="utf-8") == "keep me"


def test_empty_existing_folder_is_filled(tmp_path):
    corpus = small_text_corpus(tmp_path / "corpus.txt")
    output = tmp_path / "out"
    output.mkdir()
    prepare([corpus], output)
    assert is_prepared_data(output)


def test_prepared_folder_as_input_is_used_as_is(wikitext_dir, tmp_path):
    returned = prepare_pretraining_data(
        [wikitext_dir], tmp_path / "unused", vocab_file=None, vocab_size=100, sequence_length=128,
        validation_fraction=0.05, seed=1,
    )
    assert returned == wikitext_dir
    assert not (tmp_path / "unused").exists()
    with pytest.raises(ValueError, match="sequence length 128, but sequence_length 64"):
        prepare_pretraining_data(
            [wikitext_dir], tmp_path / "unused", vocab_file=None, vocab_size=100, sequence_length=64,
            validation_fraction=0.05, seed=1,
        )


def test_hugging_face_saved_dataset_input(tmp_path, shared_data, bert_vocab_file):
    datasets = pytest.importorskip("datasets")
    lines = (shared_data / WIKITEXT_DIR / "valid.txt").read_text(encoding="utf-8").split("\n")
    # WikiText on the hub stores one line per row, as here.
    datasets.Dataset.from_dict({"text": [line + "\n" for line in lines]}).save_to_disk(str(tmp_path / "hf"))
    output = prepare_pretraining_data(
        [tmp_path / "hf"], tmp_path / "out", vocab_file=bert_vocab_file, vocab_size=30522,
        sequence_length=128, validation_fraction=0.05, seed=7, workers=1,
    )
    info = read_metadata(output)
    assert info.counts["train"]["documents"] + info.counts["validation"]["documents"] == 60


def test_hugging_face_rows_as_documents(tmp_path):
    datasets = pytest.importorskip("datasets")
    articles = [
        "\n".join(f"Article {doc} has paragraph {p} with words like river and town number {p}." for p in range(6))
        for doc in range(5)
    ]
    dataset = datasets.Dataset.from_dict({"content": articles, "id": list(range(5))})
    dataset.save_to_disk(str(tmp_path / "hf"))
    with pytest.raises(ValueError, match="no column 'text'; its columns are content, id"):
        prepare([tmp_path / "hf"], tmp_path / "out")
    output = prepare([tmp_path / "hf"], tmp_path / "out", hf_text_column="content")
    info = read_metadata(output)
    assert info.counts["train"]["documents"] + info.counts["validation"]["documents"] == 5


def test_built_in_sample_is_default(tmp_path):
    output = prepare_pretraining_data(
        [], tmp_path / "sample", vocab_file=None, vocab_size=8000, sequence_length=128,
        validation_fraction=0.05, seed=3, workers=2,
    )
    info = read_metadata(output)
    assert "built-in Wikipedia sample" in info.metadata["inputs"][0]
    assert info.counts["train"]["documents"] + info.counts["validation"]["documents"] == 96
    assert info.vocab_size <= 8000
    assert info.counts["train"]["sequences"] > 4000


def test_command_line_prepares(tmp_path, capsys):
    corpus = small_text_corpus(tmp_path / "corpus.txt")
    code = main([
        str(corpus), "--output-dir", str(tmp_path / "out"), "--vocab-size", "150", "--sequence-length", "32",
        "--validation-fraction", "0.2", "--workers", "1",
    ])
    assert code == 0
    output = capsys.readouterr().out
    assert "prepared data:" in output
    # 6 documents: round(0.2 x 6) = 1, raised to the minimum of 2 held out with next-sentence pairs.
    assert "train: 4 documents" in output
    assert "validation: 2 documents" in output
    metadata = json.loads((tmp_path / "out" / METADATA_FILE).read_text(encoding="utf-8"))
    assert metadata["build_settings"]["sequence_length"] == 32


def test_command_line_reports_bad_input(tmp_path, capsys):
    code = main([str(tmp_path / "missing.txt"), "--output-dir", str(tmp_path / "out")])
    assert code == 2
    assert "input not found" in capsys.readouterr().err


def test_shard_token_dtype_is_compact(wikitext_dir):
    tokens = np.load(wikitext_dir / "train" / "shard_00000" / "input_ids.npy", mmap_mode="r")
    assert tokens.dtype == np.uint16


def test_interrupted_build_leftovers_removed(tmp_path):
    corpus = small_text_corpus(tmp_path / "corpus.txt")
    # A staging folder named after a process that no longer exists, as a killed build leaves it.
    leftover = tmp_path / f".out.partial-{socket.gethostname()}-{2**22 + 12345}-deadbeef"
    (leftover / "train").mkdir(parents=True)
    prepare([corpus], tmp_path / "out")
    assert not leftover.exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["corpus.txt", "out"]

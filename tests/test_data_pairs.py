"""Next-sentence pairs: label balance, random segments from other documents, bad corpora."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.instances import NO_NEXT_SENTENCE_LABEL, PairBuilder, PairStatistics
from pipelines.pretraining_data import prepare_pretraining_data
from pipelines.shards import ShardedSequences, read_metadata
from test_data_common import wikitext_valid_128

CLS, SEP = 101, 102


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, shared_data, bert_vocab_file):
    return wikitext_valid_128(tmp_path_factory, shared_data, bert_vocab_file)


def prepare_text(tmp_path, text, **overrides):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(text, encoding="utf-8")
    settings = dict(
        vocab_file=None, vocab_size=300, sequence_length=64, validation_fraction=0.0, seed=1, workers=1,
    )
    settings.update(overrides)
    return prepare_pretraining_data([corpus], tmp_path / "out", **settings)


def sentence(doc, number):
    return f"Document {doc} says fact {number} about rivers, hills and towns of the region."


def test_random_next_share_is_about_half(data_dir):
    sequences = ShardedSequences(data_dir, "train")
    labels = sequences.array("next_sentence_labels")
    share = float(np.mean(labels == 1))
    assert 0.4 <= share <= 0.6
    assert set(np.unique(labels)) == {0, 1}


def test_random_next_never_from_own_document(data_dir):
    sequences = ShardedSequences(data_dir, "train")
    labels = sequences.array("next_sentence_labels")
    own = sequences.array("document_ids")
    source = sequences.array("next_document_ids")
    assert np.all(source[labels == 1] != own[labels == 1])
    assert np.all(source[labels == 0] == own[labels == 0])


def test_single_document_corpus_rejected(tmp_path):
    text = " ".join(sentence(0, number) for number in range(40))
    with pytest.raises(ValueError, match="single document"):
        prepare_text(tmp_path, text)


def test_single_document_without_nsp_accepted(tmp_path):
    text = "\n".join(sentence(0, number) for number in range(40))
    output = prepare_text(tmp_path, text, next_sentence_prediction=False)
    sequences = ShardedSequences(output, "train")
    assert np.all(sequences.array("next_sentence_labels") == NO_NEXT_SENTENCE_LABEL)
    ids, b_start, _ = sequences.get(0)
    assert b_start == len(ids)


def test_one_sentence_documents_rejected(tmp_path):
    # A blank line after every sentence turns each sentence into a document.
    text = "\n\n".join(sentence(doc, 0) for doc in range(60))
    with pytest.raises(ValueError, match=r"60 of 60 train documents hold a single sentence"):
        prepare_text(tmp_path, text)


def test_mostly_single_sentence_documents_warn(tmp_path):
    single = [sentence(doc, 0) for doc in range(160)]
    multi = [" ".join(sentence(doc, number) for number in range(6)) for doc in range(160, 200)]
    with pytest.warns(RuntimeWarning, match="random next segment"):
        prepare_text(tmp_path, "\n\n".join(single + multi), sequence_length=32)


def test_validation_holds_out_two_documents_minimum(tmp_path):
    text = "\n\n".join(" ".join(sentence(doc, number) for number in range(5)) for doc in range(4))
    output = prepare_text(tmp_path, text, validation_fraction=0.3)
    # Two documents are held out, the minimum that lets a random segment come from another document.
    assert read_metadata(output).counts["validation"]["documents"] == 2


def tokenised_documents(count, segments, rng):
    return [
        [rng.integers(1000, 2000, size=int(rng.integers(5, 15))) for _ in range(segments)]
        for _ in range(count)
    ]


def test_pair_builder_layout_and_lengths():
    rng = np.random.default_rng(0)
    documents = tokenised_documents(20, 12, rng)
    builder = PairBuilder(sequence_length=48, short_seq_prob=0.1, next_sentence_prediction=True, cls_id=CLS, sep_id=SEP)
    statistics = PairStatistics()
    arrays = builder.build(documents, list(range(20)), np.random.default_rng(1), statistics=statistics)
    lengths = np.diff(arrays.offsets)
    assert lengths.max() <= 48
    assert len(arrays) == statistics.sequences
    for index in range(len(arrays)):
        ids = arrays.input_ids[arrays.offsets[index]:arrays.offsets[index + 1]]
        b_start = arrays.segment_b_starts[index]
        assert ids[0] == CLS
        assert ids[b_start - 1] == SEP
        assert ids[-1] == SEP
        assert np.count_nonzero(ids == SEP) == 2
        assert 2 <= b_start < len(ids) - 1


def test_short_sequence_probability_shortens_targets():
    documents = tokenised_documents(30, 40, np.random.default_rng(2))
    ids = list(range(30))

    def mean_length(probability):
        builder = PairBuilder(
            sequence_length=128, short_seq_prob=probability, next_sentence_prediction=True, cls_id=CLS, sep_id=SEP,
        )
        arrays = builder.build(documents, ids, np.random.default_rng(3))
        return float(np.mean(np.diff(arrays.offsets)))

    assert mean_length(1.0) < 0.7 * mean_length(0.0)


def test_truncation_is_counted():
    rng = np.random.default_rng(4)
    # Sentences of 40 tokens cannot fit two to a sequence of 32.
    documents = [[rng.integers(1000, 2000, size=40) for _ in range(4)] for _ in range(5)]
    builder = PairBuilder(sequence_length=32, short_seq_prob=0.0, next_sentence_prediction=True, cls_id=CLS, sep_id=SEP)
    statistics = PairStatistics()
    arrays = builder.build(documents, list(range(5)), np.random.default_rng(5), statistics=statistics)
    assert np.all(np.diff(arrays.offsets) == 32)
    assert statistics.truncated_tokens > 0
    assert statistics.forced_random_next > 0


def test_pair_builder_rejects_tiny_sequence_length():
    with pytest.raises(ValueError, match="at least 5 tokens"):
        PairBuilder(sequence_length=4, short_seq_prob=0.1, next_sentence_prediction=True, cls_id=CLS, sep_id=SEP)

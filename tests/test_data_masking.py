"""Dynamic masking rules, on the BERT vocabulary and on batches of real prepared data."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from pipelines.dataloader import create_pretraining_dataloader
from pipelines.masking import (
    IGNORE_INDEX,
    MaskingSettings,
    mask_sequence,
    masked_token_count,
    packed_mask_slots,
)
from pipelines.shards import ShardedSequences
from pipelines.tokenization import read_vocab_file
from test_data_common import wikitext_valid_128

CLS, SEP, PAD, MASK = 101, 102, 0, 103


@pytest.fixture(scope="module")
def vocab(bert_vocab_file):
    return read_vocab_file(bert_vocab_file)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, shared_data, bert_vocab_file):
    return wikitext_valid_128(tmp_path_factory, shared_data, bert_vocab_file)


def settings_for(vocab, mask_tokens=20, whole_word_masking=False, mlm_probability=0.15):
    return MaskingSettings.from_vocab(
        vocab, mask_tokens=mask_tokens, mlm_probability=mlm_probability,
        special_ids=[PAD, 100, CLS, SEP, MASK], mask_id=MASK, whole_word_masking=whole_word_masking,
    )


def word_ids(vocab, words):
    lookup = {token: index for index, token in enumerate(vocab)}
    return [lookup[word] for word in words]


def sequence_of(vocab, words):
    return np.asarray([CLS, *word_ids(vocab, words), SEP], dtype=np.int64)


def test_count_rule():
    assert masked_token_count(4, 20, 0.15) == 1
    assert masked_token_count(10, 20, 0.15) == 2  # 1.5 rounds up
    assert masked_token_count(128, 20, 0.15) == 19
    assert masked_token_count(512, 20, 0.15) == 20
    assert masked_token_count(512, 80, 0.15) == 77


def test_four_token_sequence_always_masked(vocab):
    settings = settings_for(vocab)
    ids = sequence_of(vocab, ["the", "river"])
    for seed in range(300):
        masked = mask_sequence(ids, settings, np.random.default_rng(seed))
        assert len(masked.positions) == 1
        assert masked.positions[0] in (1, 2)
        assert masked.labels[0] == ids[masked.positions[0]]


def test_four_token_sequence_masked_with_whole_words(vocab):
    settings = settings_for(vocab, whole_word_masking=True)
    # "playing" split into two pieces: no whole word fits a count of one.
    ids = sequence_of(vocab, ["play", "##ing"])
    for seed in range(50):
        masked = mask_sequence(ids, settings, np.random.default_rng(seed))
        assert len(masked.positions) == 1


@pytest.mark.parametrize(("mask_tokens", "expected"), [(20, 20), (80, 77)])
def test_count_at_sequence_512(vocab, mask_tokens, expected):
    settings = settings_for(vocab, mask_tokens=mask_tokens)
    rng = np.random.default_rng(0)
    ids = np.concatenate([[CLS], rng.choice(settings.replacement_ids, size=510), [SEP]]).astype(np.int64)
    assert len(ids) == 512
    masked = mask_sequence(ids, settings, rng)
    assert len(masked.positions) == expected
    assert len(np.unique(masked.positions)) == expected


def test_special_tokens_never_masked(vocab):
    settings = settings_for(vocab)
    words = ["the", "[UNK]", "river", "flows", "[MASK]", "north"]
    ids = np.asarray([CLS, *word_ids(vocab, words), SEP, *word_ids(vocab, ["a", "town"]), SEP], dtype=np.int64)
    never = {0, 2, 5, 7, 10}
    for seed in range(200):
        masked = mask_sequence(ids, settings, np.random.default_rng(seed))
        assert never.isdisjoint(masked.positions.tolist())


def test_replacement_proportions(vocab):
    settings = settings_for(vocab, mask_tokens=80)
    rng = np.random.default_rng(1)
    ids = np.concatenate([[CLS], rng.choice(settings.replacement_ids, size=510), [SEP]]).astype(np.int64)
    outcomes = {"mask": 0, "random": 0, "same": 0}
    for seed in range(200):
        masked = mask_sequence(ids, settings, np.random.default_rng(seed))
        new = masked.input_ids[masked.positions]
        outcomes["mask"] += int(np.sum(new == MASK))
        outcomes["same"] += int(np.sum(new == masked.labels))
        outcomes["random"] += int(np.sum((new != MASK) & (new != masked.labels)))
        untouched = np.setdiff1d(np.arange(len(ids)), masked.positions)
        assert np.array_equal(masked.input_ids[untouched], ids[untouched])
    total = sum(outcomes.values())
    assert total == 200 * 77
    assert abs(outcomes["mask"] / total - 0.8) < 0.02
    # A random replacement equal to the original counts as "same": 1 chance in ~30,000.
    assert abs(outcomes["random"] / total - 0.1) < 0.015
    assert abs(outcomes["same"] / total - 0.1) < 0.015


def test_whole_word_masking_masks_whole_words(vocab):
    settings = settings_for(vocab, mask_tokens=20, whole_word_masking=True)
    words = "the em ##bed ##ding of play ##ing cards is un ##us ##ual and fun ##ny to watch".split()
    ids = sequence_of(vocab, words * 3)
    starts_word = settings.starts_word
    for seed in range(100):
        masked = mask_sequence(ids, settings, np.random.default_rng(seed))
        chosen = set(masked.positions.tolist())
        assert 1 <= len(chosen) <= masked_token_count(len(ids), 20, 0.15)
        for position in chosen:
            start = position
            while not starts_word[ids[start]]:
                start -= 1
            end = position + 1
            while end < len(ids) - 1 and not starts_word[ids[end]]:
                end += 1
            assert set(range(start, end)) <= chosen


def test_packed_slot_bound_never_overflows():
    rng = np.random.default_rng(0)
    for sequence_length, per_pack, mask_tokens in [(128, 3, 20), (512, 3, 76), (384, 4, 56), (64, 6, 10)]:
        slots = packed_mask_slots(sequence_length, per_pack, mask_tokens, 0.15)
        assert slots <= per_pack * mask_tokens
        for _ in range(3000):
            count = int(rng.integers(1, per_pack + 1))
            cuts = np.sort(rng.integers(0, sequence_length - 5 * count + 1, size=count))
            lengths = np.diff(np.concatenate([[0], cuts])) + 5
            total = sum(masked_token_count(int(n), mask_tokens, 0.15) for n in lengths)
            assert total <= slots
        # The worst case: every sequence at the length where rounding and the minimum add the most.
        tiny = [masked_token_count(sequence_length // per_pack, mask_tokens, 0.15)] * per_pack
        assert sum(tiny) <= slots


def test_packed_slot_values():
    assert packed_mask_slots(128, 3, 20, 0.15) == 23
    assert packed_mask_slots(512, 3, 76, 0.15) == 80
    assert packed_mask_slots(128, 3, 5, 0.15) == 15


def make_loader(data_dir, **overrides):
    settings = dict(micro_batch_size=16, sequence_length=128, mask_tokens=20, num_workers=0, seed=11)
    settings.update(overrides)
    return create_pretraining_dataloader(data_dir, **settings)


def original_rows(loader, batch_index):
    rows = loader.planner.batch_rows(0, batch_index)
    source = loader.assembler.source
    return [[source.get(int(index))[0] for index in row if index >= 0] for row in rows]


@pytest.mark.parametrize("packed", [False, True])
def test_batch_masks_follow_rules(data_dir, packed):
    loader = make_loader(data_dir, packed_data=packed, whole_word_masking=False)
    for batch_index, batch in enumerate(itertools.islice(iter(loader), 5)):
        for row, sequences in enumerate(original_rows(loader, batch_index)):
            original = np.concatenate(sequences)
            length = len(original)
            assert int(batch["attention_mask"][row].sum()) == length
            labels = batch["masked_lm_labels"][row].numpy()
            positions = batch["masked_lm_positions"][row].numpy()
            labelled = labels != IGNORE_INDEX
            count = int(labelled.sum())
            expected = sum(masked_token_count(len(sequence), 20, 0.15) for sequence in sequences)
            assert count == expected
            # Labelled slots come first, padded slots carry position 0 and no label.
            assert labelled[:count].all()
            assert np.all(positions[count:] == 0)
            real_positions = positions[:count]
            assert np.all(np.diff(real_positions) > 0)
            assert np.all(real_positions < length)
            assert np.array_equal(labels[:count], original[real_positions])
            # Padding is never masked: everything past the real tokens stays [PAD].
            assert torch.all(batch["input_ids"][row, length:] == PAD)
            unmasked = np.setdiff1d(np.arange(length), real_positions)
            assert np.array_equal(batch["input_ids"][row].numpy()[unmasked], original[unmasked])


def test_whole_word_masking_in_loader(data_dir, vocab):
    loader = make_loader(data_dir, whole_word_masking=True)
    batch = next(iter(loader))
    continuation = np.asarray([token.startswith("##") for token in vocab])
    originals = original_rows(loader, 0)
    for row, sequences in enumerate(originals):
        original = sequences[0]
        labels = batch["masked_lm_labels"][row].numpy()
        positions = set(batch["masked_lm_positions"][row].numpy()[labels != IGNORE_INDEX].tolist())
        assert positions
        for position in positions:
            if position + 1 < len(original) and continuation[original[position + 1]]:
                assert position + 1 in positions


def test_too_few_packed_slots_rejected(data_dir):
    loader = make_loader(data_dir, packed_data=True, packed_mask_tokens=5)
    with pytest.raises(ValueError, match="needs more than 5 mask slots"):
        next(iter(loader))


def test_mask_settings_validated(vocab):
    with pytest.raises(ValueError, match="mask_tokens must be a positive integer"):
        settings_for(vocab, mask_tokens=0)
    with pytest.raises(ValueError, match=r"mlm_probability must lie in \(0, 1\]"):
        settings_for(vocab, mlm_probability=0.0)


def test_masks_differ_between_sequences_and_epochs(data_dir):
    loader = make_loader(data_dir, shuffle=False)
    first = next(iter(loader))
    loader.set_epoch(3)
    later = next(iter(loader))
    assert not torch.equal(first["masked_lm_positions"], later["masked_lm_positions"])
    assert len(ShardedSequences(data_dir, "train")) > 16

"""Pre-training data loader: batch contract, order, data-parallel split, resume."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from pipelines.dataloader import create_pretraining_dataloader
from pipelines.generated import create_generated_dataloader
from pipelines.masking import IGNORE_INDEX
from pipelines.shards import ShardedSequences, read_metadata
from test_data_common import wikitext_valid_128

CONTRACT_KEYS = {
    "input_ids", "token_type_ids", "attention_mask", "position_ids", "masked_lm_positions",
    "masked_lm_labels", "next_sentence_positions", "next_sentence_labels",
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, shared_data, bert_vocab_file):
    return wikitext_valid_128(tmp_path_factory, shared_data, bert_vocab_file)


def make_loader(data_dir, **overrides):
    settings = dict(
        micro_batch_size=8, sequence_length=128, mask_tokens=20, mlm_probability=0.15,
        next_sentence_prediction=True, packed_data=False, max_sequences_per_pack=3,
        whole_word_masking=False, num_workers=0, seed=3, drop_last=True,
    )
    settings.update(overrides)
    return create_pretraining_dataloader(data_dir, **settings)


def take(loader, count):
    return list(itertools.islice(iter(loader), count))


def assert_same_batches(first, second):
    assert len(first) == len(second)
    for batch_a, batch_b in zip(first, second):
        assert batch_a.keys() == batch_b.keys()
        for key in batch_a:
            assert torch.equal(batch_a[key], batch_b[key]), key


def test_unpacked_batch_contract(data_dir):
    batch = take(make_loader(data_dir), 1)[0]
    assert set(batch) == CONTRACT_KEYS
    for key in ("input_ids", "token_type_ids", "attention_mask", "position_ids"):
        assert batch[key].shape == (8, 128)
    assert batch["masked_lm_positions"].shape == (8, 20)
    assert batch["masked_lm_labels"].shape == (8, 20)
    assert batch["next_sentence_positions"].shape == (8, 1)
    assert batch["next_sentence_labels"].shape == (8, 1)
    assert all(value.dtype == torch.int64 for value in batch.values())


def test_unpacked_rows_follow_layout(data_dir):
    info = read_metadata(data_dir)
    ids = info.special_token_ids
    batch = take(make_loader(data_dir), 1)[0]
    for row in range(8):
        length = int(batch["attention_mask"][row].sum())
        assert batch["input_ids"][row, 0] == ids["cls"]
        assert batch["input_ids"][row, length - 1] == ids["sep"]
        assert torch.all(batch["input_ids"][row, length:] == ids["pad"])
        assert torch.equal(batch["position_ids"][row, :length], torch.arange(length))
        assert torch.all(batch["position_ids"][row, length:] == 0)
        assert batch["next_sentence_positions"][row, 0] == 0
        assert batch["next_sentence_labels"][row, 0] in (0, 1)
        token_types = batch["token_type_ids"][row, :length]
        # Token type 0 up to the first [SEP] and 1 after it.
        b_start = int(torch.argmax(token_types)) if token_types.any() else length
        assert torch.all(token_types[:b_start] == 0)
        assert torch.all(token_types[b_start:] == 1)


def test_len_is_batches_per_epoch(data_dir):
    loader = make_loader(data_dir)
    sequences = len(ShardedSequences(data_dir, "train"))
    assert len(loader) == sequences // 8
    assert len(list(loader)) == len(loader)


def test_drop_last_false_keeps_partial_batch(data_dir):
    loader = make_loader(data_dir, drop_last=False)
    sequences = len(ShardedSequences(data_dir, "train"))
    batches = list(loader)
    assert len(batches) == -(-sequences // 8)
    assert sum(len(batch["input_ids"]) for batch in batches) == sequences


def test_same_batches_with_0_1_2_workers(data_dir):
    reference = take(make_loader(data_dir, num_workers=0), 12)
    for workers in (1, 2):
        assert_same_batches(reference, take(make_loader(data_dir, num_workers=workers), 12))


def test_packed_batches_match_across_workers(data_dir):
    reference = take(make_loader(data_dir, packed_data=True, num_workers=0), 4)
    assert_same_batches(reference, take(make_loader(data_dir, packed_data=True, num_workers=2), 4))


def first_token_keys(loader):
    """Identify each row by its unmasked tokens' content and position signature."""
    rows = set()
    for batch in loader:
        for row in range(len(batch["input_ids"])):
            length = int(batch["attention_mask"][row].sum())
            labels = batch["masked_lm_labels"][row]
            ids = batch["input_ids"][row, :length].clone()
            real = labels != IGNORE_INDEX
            ids[batch["masked_lm_positions"][row][real]] = labels[real]
            rows.add(tuple(ids.tolist()))
    return rows


def test_two_ranks_see_disjoint_data(data_dir):
    rank_rows = [first_token_keys(make_loader(data_dir, rank=rank, world_size=2)) for rank in (0, 1)]
    assert rank_rows[0]
    assert rank_rows[1]
    assert rank_rows[0].isdisjoint(rank_rows[1])
    single = make_loader(data_dir, world_size=1)
    assert len(make_loader(data_dir, rank=0, world_size=2)) == len(make_loader(data_dir, rank=1, world_size=2))
    assert len(rank_rows[0]) + len(rank_rows[1]) <= len(single) * 8 + 8


def test_two_ranks_cover_epoch_rows(data_dir):
    loaders = [make_loader(data_dir, rank=rank, world_size=2, drop_last=False) for rank in (0, 1)]
    rows = [loader.planner.rows(0) for loader in loaders]
    indices = np.concatenate([r[:, 0] for r in rows])
    total = len(ShardedSequences(data_dir, "train"))
    assert len(np.unique(indices)) == len(indices)
    assert len(indices) == total - total % 2


def test_resume_mid_epoch_matches_uninterrupted_run(data_dir):
    uninterrupted = take(make_loader(data_dir), 10)
    first = make_loader(data_dir)
    take(first, 4)
    state = json.loads(json.dumps(first.state_dict()))
    assert state["epoch"] == 0
    assert state["batches_consumed"] == 4
    resumed = make_loader(data_dir)
    resumed.load_state_dict(state)
    assert_same_batches(uninterrupted[4:], take(resumed, 6))


def test_resume_across_epochs_with_repeat(data_dir):
    per_epoch = len(make_loader(data_dir))
    total = per_epoch + 5
    uninterrupted = take(make_loader(data_dir, repeat=True, num_workers=1), total)
    first = make_loader(data_dir, repeat=True)
    take(first, per_epoch - 2)
    resumed = make_loader(data_dir, repeat=True, num_workers=1)
    resumed.load_state_dict(first.state_dict())
    assert_same_batches(uninterrupted[per_epoch - 2:], take(resumed, 7))
    assert resumed.state_dict()["epoch"] == 1
    assert resumed.state_dict()["batches_consumed"] == 5


def test_epochs_differ_in_order_and_masking(data_dir):
    loader = make_loader(data_dir, shuffle=False)
    epoch0 = take(loader, 1)[0]
    loader.set_epoch(1)
    epoch1 = take(loader, 1)[0]
    # Without shuffling the same sequences come first, but masked differently.
    assert torch.equal(epoch0["attention_mask"], epoch1["attention_mask"])
    assert not torch.equal(epoch0["masked_lm_positions"], epoch1["masked_lm_positions"])
    shuffled = make_loader(data_dir)
    first = take(shuffled, 1)[0]
    shuffled.set_epoch(1)
    second = take(shuffled, 1)[0]
    assert not torch.equal(first["input_ids"], second["input_ids"])


def test_iteration_moves_to_next_epoch(data_dir):
    loader = make_loader(data_dir)
    first_epoch = list(loader)
    assert loader.state_dict()["epoch"] == 1
    second_epoch = list(loader)
    assert len(first_epoch) == len(second_epoch) == len(loader)
    assert loader.state_dict()["epoch"] == 2


def test_seed_changes_batches(data_dir):
    first = take(make_loader(data_dir, seed=3), 1)[0]
    second = take(make_loader(data_dir, seed=4), 1)[0]
    assert not torch.equal(first["input_ids"], second["input_ids"])


def test_state_from_other_batch_size_rejected(data_dir):
    state = make_loader(data_dir, micro_batch_size=4).state_dict()
    with pytest.raises(ValueError, match="micro_batch_size=4"):
        make_loader(data_dir).load_state_dict(state)


def test_sequence_length_mismatch_names_both(data_dir):
    with pytest.raises(ValueError, match=r"sequence_length 256 .* sequence length 128"):
        make_loader(data_dir, sequence_length=256)


def test_split_folder_path_accepted(data_dir):
    loader = make_loader(data_dir / "validation", drop_last=False)
    validation = len(ShardedSequences(data_dir, "validation"))
    assert sum(len(batch["input_ids"]) for batch in loader) == validation
    with pytest.raises(ValueError, match="split='train'"):
        create_pretraining_dataloader(
            data_dir / "validation", split="train", micro_batch_size=8, sequence_length=128, mask_tokens=20,
        )


def test_validation_masks_repeat_for_set_epoch(data_dir):
    loader = make_loader(data_dir, split="validation", drop_last=False)
    first = list(loader)
    loader.set_epoch(0)
    assert_same_batches(first, list(loader))


def test_not_prepared_folder_rejected(tmp_path):
    with pytest.raises(FileNotFoundError, match="not prepared pre-training data"):
        create_pretraining_dataloader(tmp_path, micro_batch_size=8, sequence_length=128, mask_tokens=20)


def test_too_few_rows_for_batch_rejected(data_dir):
    validation = len(ShardedSequences(data_dir, "validation"))
    with pytest.raises(ValueError, match="fewer than one micro-batch"):
        make_loader(data_dir, split="validation", micro_batch_size=validation + 1)


def test_nsp_disabled_labels_ignored(data_dir):
    batch = take(make_loader(data_dir, next_sentence_prediction=False), 1)[0]
    assert torch.all(batch["next_sentence_labels"] == IGNORE_INDEX)


def test_generated_batch_contract():
    loader = create_generated_dataloader(
        micro_batch_size=4, sequence_length=64, mask_tokens=10, vocab_size=1000,
        packed_data=False, max_sequences_per_pack=3, seed=1, batches_per_epoch=3,
    )
    batch = take(loader, 1)[0]
    assert set(batch) == CONTRACT_KEYS
    assert batch["input_ids"].shape == (4, 64)
    assert torch.all(batch["attention_mask"] == 1)
    assert batch["masked_lm_positions"].shape == (4, 10)
    assert torch.all(batch["input_ids"] < 1000)
    assert len(loader) == 3


def test_generated_packed_contract():
    loader = create_generated_dataloader(
        micro_batch_size=4, sequence_length=128, mask_tokens=20, vocab_size=30522,
        packed_data=True, max_sequences_per_pack=3, seed=1, batches_per_epoch=2,
    )
    batch = take(loader, 1)[0]
    assert set(batch) == CONTRACT_KEYS | {"sequence_ids"}
    assert batch["next_sentence_positions"].shape == (4, 3)
    assert torch.all(batch["sequence_ids"].amax(dim=1) == 3)
    cls_tokens = batch["input_ids"].gather(1, batch["next_sentence_positions"])
    assert torch.all(cls_tokens == 101)


def test_generated_resume_matches():
    def loader():
        return create_generated_dataloader(
            micro_batch_size=2, sequence_length=32, mask_tokens=5, vocab_size=500,
            packed_data=False, max_sequences_per_pack=3, seed=5, batches_per_epoch=4, repeat=True,
        )
    uninterrupted = take(loader(), 7)
    first = loader()
    take(first, 3)
    resumed = loader()
    resumed.load_state_dict(first.state_dict())
    assert_same_batches(uninterrupted[3:], take(resumed, 4))


def test_empty_validation_split_gives_no_batches(tmp_path, shared_data, bert_vocab_file):
    from pipelines.pretraining_data import prepare_pretraining_data

    output = prepare_pretraining_data(
        [shared_data / "pretraining" / "wikitext-2" / "valid.txt"], tmp_path / "data", vocab_file=bert_vocab_file,
        vocab_size=30522, sequence_length=128, validation_fraction=0.0, seed=1, workers=1,
    )
    loader = make_loader(output, split="validation", drop_last=False)
    assert len(loader) == 0
    assert list(loader) == []

"""Histogram packing: efficiency on real lengths, plan validity, and lossless packed rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipelines.dataloader import create_pretraining_dataloader
from pipelines.masking import IGNORE_INDEX
from pipelines.packing import assign_rows, main, padding_efficiency, plan_packing
from pipelines.shards import ShardedSequences
from test_data_common import wikitext_512


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, shared_data, bert_vocab_file):
    return wikitext_512(tmp_path_factory, shared_data, bert_vocab_file)


def check_plan_valid(plan, lengths):
    rows = assign_rows(plan, lengths, np.arange(len(lengths)))
    used = rows[rows >= 0]
    assert len(used) == len(lengths)
    assert len(np.unique(used)) == len(lengths)
    row_tokens = np.where(rows >= 0, np.asarray(lengths)[np.maximum(rows, 0)], 0).sum(axis=1)
    assert row_tokens.max() <= plan.sequence_length
    assert rows.shape[1] == plan.max_sequences_per_pack
    return rows


def test_wikitext_512_efficiency(data_dir, capsys):
    lengths = ShardedSequences(data_dir, "train").lengths
    unpacked = padding_efficiency(lengths, 512)
    plan = plan_packing(lengths, 512, 3)
    check_plan_valid(plan, lengths)
    with capsys.disabled():
        print(
            f"\nWikiText-2 at sequence 512: {len(lengths)} sequences, unpacked efficiency {unpacked:.2%}, "
            f"packed (up to 3 per row) {plan.efficiency:.2%} in {plan.rows} rows"
        )
    assert plan.efficiency >= 0.95
    assert plan.efficiency > unpacked


def test_short_sequences_pack_densely():
    lengths = np.random.default_rng(0).integers(20, 201, size=5000)
    plan = plan_packing(lengths, 512, 8)
    check_plan_valid(plan, lengths)
    assert plan.efficiency > 0.94
    assert padding_efficiency(lengths, 512) < 0.25


def test_plan_respects_sequences_per_pack():
    lengths = np.random.default_rng(1).integers(5, 40, size=2000)
    for limit in (1, 2, 3):
        plan = plan_packing(lengths, 128, limit)
        rows = check_plan_valid(plan, lengths)
        assert max(len(strategy) for strategy in plan.strategies) <= limit
        if limit == 1:
            assert plan.rows == len(lengths)
        assert (rows >= 0).sum(axis=1).max() <= limit


def test_plan_rejects_lengths_out_of_range():
    with pytest.raises(ValueError, match=r"sequence lengths must lie in \[1, 128\]"):
        plan_packing(np.asarray([10, 129]), 128, 3)


def test_epoch_rows_change_with_shuffle():
    lengths = np.random.default_rng(2).integers(10, 60, size=500)
    plan = plan_packing(lengths, 128, 3)
    first = assign_rows(plan, lengths, np.random.default_rng(0).permutation(500))
    second = assign_rows(plan, lengths, np.random.default_rng(1).permutation(500))
    assert not np.array_equal(first, second)
    check_plan_valid(plan, lengths)


def test_every_packed_row_decodes_to_its_sequences(data_dir):
    loader = create_pretraining_dataloader(
        data_dir, micro_batch_size=32, sequence_length=512, mask_tokens=76, packed_data=True,
        max_sequences_per_pack=3, seed=5, drop_last=False,
    )
    source = loader.assembler.source
    rows_seen = 0
    sequences_seen = set()
    for batch_index, batch in enumerate(loader):
        rows = loader.planner.batch_rows(0, batch_index)
        for row_number, row in enumerate(rows):
            input_ids = batch["input_ids"][row_number].clone()
            labels = batch["masked_lm_labels"][row_number]
            labelled = labels != IGNORE_INDEX
            input_ids[batch["masked_lm_positions"][row_number][labelled]] = labels[labelled]
            sequence_ids = batch["sequence_ids"][row_number]
            starts = batch["next_sentence_positions"][row_number]
            for slot, index in enumerate(row):
                if index < 0:
                    assert not torch.any(sequence_ids == slot + 1)
                    assert batch["next_sentence_labels"][row_number, slot] == IGNORE_INDEX
                    continue
                ids, b_start, label = source.get(int(index))
                span = torch.nonzero(sequence_ids == slot + 1).flatten()
                assert span[0] == starts[slot]
                assert len(span) == len(ids)
                assert torch.equal(span, torch.arange(int(span[0]), int(span[0]) + len(ids)))
                assert torch.equal(input_ids[span], torch.from_numpy(ids))
                assert torch.equal(batch["position_ids"][row_number, span], torch.arange(len(ids)))
                token_types = batch["token_type_ids"][row_number, span]
                assert torch.all(token_types[:b_start] == 0)
                assert torch.all(token_types[b_start:] == 1)
                assert batch["next_sentence_labels"][row_number, slot] == label
                sequences_seen.add(int(index))
            real = int((sequence_ids > 0).sum())
            assert torch.all(sequence_ids[real:] == 0)
            assert torch.all(batch["attention_mask"][row_number] == (sequence_ids > 0).long())
            rows_seen += 1
    assert rows_seen == loader.planner.total_rows
    assert len(sequences_seen) == len(source)


def test_packing_report_command(data_dir, capsys):
    assert main([str(data_dir), "--max-sequences-per-pack", "2", "3"]) == 0
    output = capsys.readouterr().out
    assert "efficiency" in output
    assert len([line for line in output.splitlines() if line.strip().startswith(("1 ", "2 ", "3 "))]) == 3


def test_packing_report_rejects_plain_folder(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    assert "metadata.json is missing" in capsys.readouterr().err

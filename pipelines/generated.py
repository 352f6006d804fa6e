"""Generated (random-token) pre-training data for throughput runs and compile checks.

Sequences hold uniformly random ordinary token ids in the layout of real data
(``[CLS] A [SEP] B [SEP]``), go through the same masking and batch assembly as real
data, and so produce batches of exactly the real contract and shapes. Unpacked rows
hold one sequence of the full ``sequence_length``; packed rows hold
``max_sequences_per_pack`` sequences of random lengths that fill the row.

Special token ids follow the BERT uncased vocabulary ([PAD] 0, [UNK] 100, [CLS] 101,
[SEP] 102, [MASK] 103) when ``vocab_size`` exceeds 103, and take ids 0 to 4 otherwise.

Run ``python -m pipelines.generated --help`` to print one batch's shapes.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from pipelines.dataloader import BatchAssembler, EpochPlanner, PretrainingDataLoader, _check_loader_arguments, _mask_slots
from pipelines.masking import MaskingSettings

# Minimum tokens of a generated sequence: [CLS] a [SEP] b [SEP], or [CLS] a [SEP] without pairs.
_MIN_PAIR_LENGTH = 5
_MIN_SINGLE_LENGTH = 3


def generated_special_ids(vocab_size: int) -> dict[str, int]:
    """Special token ids of generated data for a vocabulary of ``vocab_size`` entries."""
    if vocab_size > 103:
        return {"pad": 0, "unk": 100, "cls": 101, "sep": 102, "mask": 103}
    if vocab_size < 6:
        raise ValueError(f"vocab_size must be at least 6 for generated data, got {vocab_size}")
    return {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}


class GeneratedSequences:
    """Random sequences whose content is a pure function of (seed, index)."""

    def __init__(
        self,
        *,
        rows: int,
        sequence_length: int,
        vocab_size: int,
        sequences_per_row: int,
        next_sentence_prediction: bool,
        seed: int,
    ):
        self.sequence_length = sequence_length
        self.next_sentence_prediction = next_sentence_prediction
        self.seed = seed
        self.special_ids = generated_special_ids(vocab_size)
        special = np.zeros(vocab_size, dtype=bool)
        special[list(self.special_ids.values())] = True
        self.ordinary_ids = np.flatnonzero(~special)
        minimum = _MIN_PAIR_LENGTH if next_sentence_prediction else _MIN_SINGLE_LENGTH
        if sequence_length < minimum * sequences_per_row:
            raise ValueError(
                f"sequence_length {sequence_length} cannot hold {sequences_per_row} generated sequences of at "
                f"least {minimum} tokens"
            )
        rng = np.random.default_rng([seed, 0])
        if sequences_per_row == 1:
            self.lengths = np.full(rows, sequence_length, dtype=np.int32)
        else:
            # Split each row's length at random cut points, keeping every part at least `minimum` long.
            spare = sequence_length - minimum * sequences_per_row
            cuts = np.sort(rng.integers(0, spare + 1, size=(rows, sequences_per_row - 1)), axis=1)
            edges = np.concatenate([np.zeros((rows, 1), int), cuts, np.full((rows, 1), spare)], axis=1)
            self.lengths = (np.diff(edges, axis=1) + minimum).astype(np.int32).reshape(-1)
        self.rows = np.arange(len(self.lengths), dtype=np.int64).reshape(rows, sequences_per_row)

    def __len__(self) -> int:
        return len(self.lengths)

    def get(self, index: int) -> tuple[np.ndarray, int, int]:
        rng = np.random.default_rng([self.seed, 1, index])
        length = int(self.lengths[index])
        ids = self.ordinary_ids[rng.integers(len(self.ordinary_ids), size=length)].astype(np.int64)
        ids[0] = self.special_ids["cls"]
        ids[-1] = self.special_ids["sep"]
        if not self.next_sentence_prediction:
            return ids, length, -1
        # Segment A takes 1 to length - 4 tokens, then [SEP] and B.
        a_length = int(rng.integers(1, length - 3))
        ids[a_length + 1] = self.special_ids["sep"]
        return ids, a_length + 2, int(rng.integers(2))


def create_generated_dataloader(
    *,
    micro_batch_size: int,
    sequence_length: int,
    mask_tokens: int,
    vocab_size: int,
    packed_data: bool = False,
    max_sequences_per_pack: int = 3,
    seed: int = 0,
    mlm_probability: float = 0.15,
    next_sentence_prediction: bool = True,
    batches_per_epoch: int = 1000,
    num_workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
    repeat: bool = False,
    packed_mask_tokens: int | None = None,
    prefetch_factor: int | None = None,
) -> PretrainingDataLoader:
    """Create a loader of random-token batches with the pre-training batch contract.

    An epoch has ``batches_per_epoch`` batches per rank; the data is the same every
    epoch and the masking differs. State, resume and ``len()`` work as for real data.
    """
    _check_loader_arguments(micro_batch_size, rank, world_size, max_sequences_per_pack, packed_data)
    if not isinstance(batches_per_epoch, int) or batches_per_epoch < 1:
        raise ValueError(f"batches_per_epoch must be a positive integer, got {batches_per_epoch!r}")
    sequences_per_row = max_sequences_per_pack if packed_data else 1
    rows = batches_per_epoch * micro_batch_size * world_size
    source = GeneratedSequences(
        rows=rows,
        sequence_length=sequence_length,
        vocab_size=vocab_size,
        sequences_per_row=sequences_per_row,
        next_sentence_prediction=next_sentence_prediction,
        seed=seed,
    )
    ids = source.special_ids
    masking = MaskingSettings.for_generated_vocab(
        vocab_size, mask_tokens=mask_tokens, mlm_probability=mlm_probability,
        special_ids=list(ids.values()), mask_id=ids["mask"],
    )
    planner = EpochPlanner(
        source.lengths,
        seed=seed,
        shuffle=False,
        packed=packed_data,
        sequence_length=sequence_length,
        max_sequences_per_pack=max_sequences_per_pack,
        micro_batch_size=micro_batch_size,
        rank=rank,
        world_size=world_size,
        drop_last=True,
        fixed_rows=source.rows,
    )
    assembler = BatchAssembler(
        source,
        masking,
        sequence_length=sequence_length,
        packed=packed_data,
        sequences_per_row=sequences_per_row,
        mask_slots=_mask_slots(packed_data, sequence_length, max_sequences_per_pack, mask_tokens, mlm_probability, packed_mask_tokens),
        next_sentence_prediction=next_sentence_prediction,
        pad_id=ids["pad"],
        seed=seed,
    )
    return PretrainingDataLoader(
        assembler, planner, num_workers=num_workers, repeat=repeat, prefetch_factor=prefetch_factor,
        description="generated data",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.generated",
        description="Print the shapes and first row of one batch of generated (random-token) pre-training data.",
    )
    parser.add_argument("--micro-batch-size", type=int, default=8, help="rows per batch (default: 8)")
    parser.add_argument("--sequence-length", type=int, default=128, help="tokens per row (default: 128)")
    parser.add_argument("--mask-tokens", type=int, default=20, help="mask slots per sequence (default: 20)")
    parser.add_argument("--vocab-size", type=int, default=30522, help="vocabulary size (default: 30522)")
    parser.add_argument("--packed", action="store_true", help="pack several sequences per row")
    parser.add_argument("--max-sequences-per-pack", type=int, default=3, help="sequences per packed row (default: 3)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    args = parser.parse_args(argv)
    try:
        loader = create_generated_dataloader(
            micro_batch_size=args.micro_batch_size, sequence_length=args.sequence_length,
            mask_tokens=args.mask_tokens, vocab_size=args.vocab_size, packed_data=args.packed,
            max_sequences_per_pack=args.max_sequences_per_pack, seed=args.seed, batches_per_epoch=1,
        )
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    batch = next(iter(loader))
    for key, value in batch.items():
        print(f"{key:>24} {tuple(value.shape)} {value.dtype}  first row: {value[0, :12].tolist()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Pre-training data loader: prepared shards to batches of the model's input contract.

Batch contract (a dict of int64 tensors; B micro-batch, S sequence length, M mask slots
per row, P sequences per row: 1 unpacked, ``max_sequences_per_pack`` packed):

- ``input_ids``, ``token_type_ids``, ``attention_mask`` (1 real, 0 padding) [B, S];
- ``position_ids`` [B, S]: 0..n-1 for each sequence, restarting in a packed row, 0 on padding;
- ``sequence_ids`` [B, S], packed rows only: 0 padding, 1..P the sequence's slot in its row;
- ``masked_lm_positions`` [B, M] (padded slots 0), ``masked_lm_labels`` [B, M] (padded slots -100);
- ``next_sentence_positions`` [B, P]: index of each sequence's [CLS] (unused slots 0);
- ``next_sentence_labels`` [B, P]: 0 B follows A, 1 random B, -100 unused slot or NSP off.

Order and randomness. The rows of an epoch (sequences, or packs of sequences) come
from a permutation drawn from (seed, epoch) in the main process, so the batches do not
depend on the number of workers. Packing plans once with the histogram packer and
refills the plan from the shuffled order every epoch. Row i of an epoch goes to rank
i mod world_size. The last ``rows mod world_size`` rows of the epoch are left out, so
every rank gets the same number of rows and no row is seen by two ranks. Masking of a sequence is drawn from
(seed, epoch, sequence index), so it changes every epoch and is reproducible.

The loader's position (epoch, batches consumed) is a small JSON-serialisable state:
``state_dict()`` after some batches and ``load_state_dict()`` in a new loader continue
with exactly the batches an uninterrupted run would have produced.
"""

from __future__ import annotations

import collections
import logging
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from pipelines.masking import IGNORE_INDEX, MaskingSettings, mask_sequence, packed_mask_slots
from pipelines.packing import assign_rows, padding_efficiency, plan_packing
from pipelines.shards import SPLITS, ShardedSequences, is_prepared_data, read_metadata
from pipelines.tokenization import read_vocab_file

logger = logging.getLogger(__name__)

# Domain tags that keep the random streams of shuffling and masking apart.
_ORDER_STREAM = 0
_MASKING_STREAM = 1


class SequenceSource(Protocol):
    """Random access to unpadded sequences: what the batch assembler reads."""

    lengths: np.ndarray

    def __len__(self) -> int: ...

    def get(self, index: int) -> tuple[np.ndarray, int, int]:
        """(token ids as int64, start of segment B, stored next-sentence label: 0, 1 or -1)."""
        ...


class BatchAssembler:
    """Turns rows of sequence indices into one batch of the contract, masking on the way."""

    def __init__(
        self,
        source: SequenceSource,
        masking: MaskingSettings,
        *,
        sequence_length: int,
        packed: bool,
        sequences_per_row: int,
        mask_slots: int,
        next_sentence_prediction: bool,
        pad_id: int,
        seed: int,
    ):
        self.source = source
        self.masking = masking
        self.sequence_length = sequence_length
        self.packed = packed
        self.sequences_per_row = sequences_per_row
        self.mask_slots = mask_slots
        self.next_sentence_prediction = next_sentence_prediction
        self.pad_id = pad_id
        self.seed = seed

    def __call__(self, epoch: int, rows: np.ndarray) -> dict[str, torch.Tensor]:
        batch_size = len(rows)
        S, M, P = self.sequence_length, self.mask_slots, self.sequences_per_row
        input_ids = np.full((batch_size, S), self.pad_id, dtype=np.int64)
        token_type_ids = np.zeros((batch_size, S), dtype=np.int64)
        attention_mask = np.zeros((batch_size, S), dtype=np.int64)
        position_ids = np.zeros((batch_size, S), dtype=np.int64)
        sequence_ids = np.zeros((batch_size, S), dtype=np.int64)
        masked_positions = np.zeros((batch_size, M), dtype=np.int64)
        masked_labels = np.full((batch_size, M), IGNORE_INDEX, dtype=np.int64)
        nsp_positions = np.zeros((batch_size, P), dtype=np.int64)
        nsp_labels = np.full((batch_size, P), IGNORE_INDEX, dtype=np.int64)

        for row_number, row in enumerate(rows):
            offset = 0
            slots_used = 0
            for slot, index in enumerate(row):
                if index < 0:
                    continue
                ids, b_start, label = self.source.get(int(index))
                length = len(ids)
                if offset + length > S:
                    raise ValueError(
                        f"sequence {index} ({length} tokens) does not fit the row length {S} at offset {offset}"
                    )
                rng = np.random.default_rng([self.seed, epoch, _MASKING_STREAM, int(index)])
                masked = mask_sequence(ids, self.masking, rng)
                end = offset + length
                input_ids[row_number, offset:end] = masked.input_ids
                token_type_ids[row_number, offset + b_start:end] = 1
                attention_mask[row_number, offset:end] = 1
                position_ids[row_number, offset:end] = np.arange(length)
                sequence_ids[row_number, offset:end] = slot + 1
                count = len(masked.positions)
                if slots_used + count > M:
                    raise ValueError(
                        f"row {row_number} of the batch needs more than {M} mask slots; raise the packed mask "
                        f"slot count (packed_mask_tokens) to at least {slots_used + count}"
                    )
                masked_positions[row_number, slots_used:slots_used + count] = masked.positions + offset
                masked_labels[row_number, slots_used:slots_used + count] = masked.labels
                slots_used += count
                nsp_positions[row_number, slot] = offset
                if self.next_sentence_prediction and label >= 0:
                    nsp_labels[row_number, slot] = label
                offset = end

        batch = {
            "input_ids": input_ids,
            "token_type_ids": token_type_ids,
            "attention_mask": attention_mask,
            "position_ids": position_ids,
            "masked_lm_positions": masked_positions,
            "masked_lm_labels": masked_labels,
            "next_sentence_positions": nsp_positions,
            "next_sentence_labels": nsp_labels,
        }
        if self.packed:
            batch["sequence_ids"] = sequence_ids
        return {key: torch.from_numpy(value) for key, value in batch.items()}


class EpochPlanner:
    """Decides which rows each rank gets in each epoch, and in what order."""

    def __init__(
        self,
        lengths: np.ndarray,
        *,
        seed: int,
        shuffle: bool,
        packed: bool,
        sequence_length: int,
        max_sequences_per_pack: int,
        micro_batch_size: int,
        rank: int,
        world_size: int,
        drop_last: bool,
        fixed_rows: np.ndarray | None = None,
    ):
        self.lengths = lengths
        self.seed = seed
        self.shuffle = shuffle
        self.packed = packed
        self.rank = rank
        self.world_size = world_size
        self.micro_batch_size = micro_batch_size
        self.drop_last = drop_last
        self.fixed_rows = fixed_rows
        self.plan = None
        if fixed_rows is not None:
            self.total_rows = len(fixed_rows)
        elif packed:
            self.plan = plan_packing(lengths, sequence_length, max_sequences_per_pack)
            self.total_rows = self.plan.rows
        else:
            self.total_rows = len(lengths)
        self.rows_per_rank = self.total_rows // world_size
        self.dropped_rows = self.total_rows - self.rows_per_rank * world_size
        if drop_last:
            self.batches_per_epoch = self.rows_per_rank // micro_batch_size
        else:
            self.batches_per_epoch = math.ceil(self.rows_per_rank / micro_batch_size)
        self._cached_epoch: int | None = None
        self._cached_rows: np.ndarray | None = None

    def rows(self, epoch: int) -> np.ndarray:
        """This rank's rows for an epoch: [rows_per_rank, P] sequence indices, -1 for unused slots."""
        if self._cached_epoch != epoch:
            rng = np.random.default_rng([self.seed, epoch, _ORDER_STREAM])
            if self.fixed_rows is not None:
                rows = self.fixed_rows
                if self.shuffle:
                    rows = rows[rng.permutation(len(rows))]
            else:
                count = len(self.lengths)
                order = rng.permutation(count) if self.shuffle else np.arange(count)
                if self.plan is not None:
                    rows = assign_rows(self.plan, self.lengths, order)
                    if self.shuffle:
                        rows = rows[rng.permutation(len(rows))]
                else:
                    rows = order[:, None]
            usable = self.rows_per_rank * self.world_size
            self._cached_rows = np.ascontiguousarray(rows[:usable][self.rank::self.world_size])
            self._cached_epoch = epoch
        return self._cached_rows

    def batch_rows(self, epoch: int, batch_index: int) -> np.ndarray:
        start = batch_index * self.micro_batch_size
        return self.rows(epoch)[start:start + self.micro_batch_size]


class _BatchDataset(Dataset):
    """Map-style dataset whose index is a whole batch request (epoch, rows)."""

    def __init__(self, assembler: BatchAssembler):
        self.assembler = assembler

    def __getitem__(self, request: tuple[int, np.ndarray]) -> dict[str, torch.Tensor]:
        epoch, rows = request
        return self.assembler(epoch, rows)


class _RequestSampler:
    """Hands the DataLoader the batch requests of one iteration, in order."""

    def __init__(self, requests: Iterator[tuple[int, np.ndarray]]):
        self._requests = requests

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        return self._requests


def _keep_batch(batch):
    return batch


class PretrainingDataLoader:
    """Iterable of batches with a resumable position (see the module docstring).

    Iterating yields the rest of the current epoch, then moves to the next epoch; with
    ``repeat=True`` it continues through the following epochs without end.
    ``len()`` is the number of batches per epoch on this rank.
    """

    def __init__(
        self,
        assembler: BatchAssembler,
        planner: EpochPlanner,
        *,
        num_workers: int,
        repeat: bool,
        prefetch_factor: int | None,
        description: str,
    ):
        if num_workers < 0:
            raise ValueError(f"num_workers must be 0 or more, got {num_workers}")
        self.assembler = assembler
        self.planner = planner
        self.num_workers = num_workers
        self.repeat = repeat
        self.prefetch_factor = prefetch_factor
        self.description = description
        self.epoch = 0
        self.batches_consumed = 0

    @property
    def micro_batch_size(self) -> int:
        return self.planner.micro_batch_size

    @property
    def mask_slots(self) -> int:
        """M, the static number of masked-position slots per row."""
        return self.assembler.mask_slots

    @property
    def sequences_per_row(self) -> int:
        """P, the static number of next-sentence slots per row."""
        return self.assembler.sequences_per_row

    def __len__(self) -> int:
        return self.planner.batches_per_epoch

    def set_epoch(self, epoch: int) -> None:
        """Start the given epoch from its first batch at the next iteration."""
        if epoch < 0:
            raise ValueError(f"epoch must be 0 or more, got {epoch}")
        self.epoch = epoch
        self.batches_consumed = 0

    def state_dict(self) -> dict:
        """Position and the settings a resumed loader must share (JSON-serialisable)."""
        return {
            "epoch": self.epoch,
            "batches_consumed": self.batches_consumed,
            "batches_per_epoch": len(self),
            "micro_batch_size": self.planner.micro_batch_size,
            "world_size": self.planner.world_size,
            "seed": self.planner.seed,
            "packed": self.planner.packed,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from a saved position; settings that change the batch order must match."""
        expected = self.state_dict()
        for key in ("micro_batch_size", "world_size", "seed", "packed", "batches_per_epoch"):
            if key in state and state[key] != expected[key]:
                raise ValueError(
                    f"cannot resume the {self.description} loader: the saved state has {key}={state[key]!r} but "
                    f"this loader has {key}={expected[key]!r}; resume with the same data and settings"
                )
        epoch = int(state["epoch"])
        consumed = int(state["batches_consumed"])
        if epoch < 0 or not 0 <= consumed <= len(self):
            raise ValueError(f"invalid loader state: epoch {epoch}, batches_consumed {consumed} of {len(self)}")
        if consumed == len(self):
            epoch, consumed = epoch + 1, 0
        self.epoch = epoch
        self.batches_consumed = consumed

    def _requests(self) -> Iterator[tuple[int, int, np.ndarray]]:
        epoch, batch_index = self.epoch, self.batches_consumed
        while True:
            while batch_index < len(self):
                yield epoch, batch_index, self.planner.batch_rows(epoch, batch_index)
                batch_index += 1
            if not self.repeat or len(self) == 0:
                return
            epoch, batch_index = epoch + 1, 0

    def _advance(self, epoch: int, batch_index: int) -> None:
        if batch_index + 1 >= len(self):
            self.epoch, self.batches_consumed = epoch + 1, 0
        else:
            self.epoch, self.batches_consumed = epoch, batch_index + 1

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        requests = self._requests()
        if self.num_workers == 0:
            for epoch, batch_index, rows in requests:
                batch = self.assembler(epoch, rows)
                self._advance(epoch, batch_index)
                yield batch
            return

        # Positions of the requests handed out and not yet yielded, oldest first.
        positions: collections.deque[tuple[int, int]] = collections.deque()

        def numbered() -> Iterator[tuple[int, np.ndarray]]:
            for epoch, batch_index, rows in requests:
                positions.append((epoch, batch_index))
                yield epoch, rows

        loader = DataLoader(
            _BatchDataset(self.assembler),
            sampler=_RequestSampler(numbered()),
            batch_size=None,
            collate_fn=_keep_batch,
            num_workers=self.num_workers,
            prefetch_factor=self.prefetch_factor,
            # DataLoader draws its workers' base seed from this generator, not from torch's global
            # random state, which the trainer saves and restores for dropout on resume.
            generator=torch.Generator(),
        )
        # Batches arrive in request order whatever the number of workers.
        for batch in loader:
            epoch, batch_index = positions.popleft()
            self._advance(epoch, batch_index)
            yield batch


def _resolve_split(data_dir_or_split: str | os.PathLike, split: str | None) -> tuple[Path, str]:
    path = Path(data_dir_or_split).expanduser().resolve()
    if is_prepared_data(path):
        split = split or "train"
    elif path.name in SPLITS and is_prepared_data(path.parent):
        if split is not None and split != path.name:
            raise ValueError(f"{path} is the {path.name} split, but split={split!r} was requested")
        split, path = path.name, path.parent
    else:
        raise FileNotFoundError(
            f"{path} is not prepared pre-training data (no metadata.json); prepare it with "
            "`python -m pipelines.pretraining_data` or `prepare_pretraining_data`"
        )
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    return path, split


def _check_loader_arguments(micro_batch_size, rank, world_size, max_sequences_per_pack, packed_data):
    if not isinstance(micro_batch_size, int) or micro_batch_size < 1:
        raise ValueError(f"micro_batch_size must be a positive integer, got {micro_batch_size!r}")
    if not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive integer, got {world_size!r}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must lie in [0, {world_size}), got {rank}")
    if packed_data and (not isinstance(max_sequences_per_pack, int) or max_sequences_per_pack < 1):
        raise ValueError(f"max_sequences_per_pack must be a positive integer, got {max_sequences_per_pack!r}")


def _mask_slots(packed, sequence_length, max_sequences_per_pack, mask_tokens, mlm_probability, packed_mask_tokens):
    if not packed:
        return mask_tokens
    if packed_mask_tokens is not None:
        if packed_mask_tokens < 1:
            raise ValueError(f"packed_mask_tokens must be positive, got {packed_mask_tokens}")
        return packed_mask_tokens
    return packed_mask_slots(sequence_length, max_sequences_per_pack, mask_tokens, mlm_probability)


def create_pretraining_dataloader(
    data_dir_or_split: str | os.PathLike,
    *,
    split: str | None = None,
    micro_batch_size: int,
    sequence_length: int,
    mask_tokens: int,
    mlm_probability: float = 0.15,
    next_sentence_prediction: bool = True,
    packed_data: bool = False,
    max_sequences_per_pack: int = 3,
    whole_word_masking: bool = False,
    num_workers: int = 0,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    drop_last: bool = True,
    shuffle: bool | None = None,
    repeat: bool = False,
    packed_mask_tokens: int | None = None,
    prefetch_factor: int | None = None,
) -> PretrainingDataLoader:
    """Create the loader of one split of prepared data (see the module docstring).

    ``data_dir_or_split`` is a prepared data folder (``split`` picks "train" or
    "validation", default "train") or one of its split folders. ``sequence_length`` must
    equal the prepared sequence length. ``shuffle`` defaults to True for "train" and
    False for "validation". Packed rows get ``packed_mask_tokens`` mask slots, by default
    ``packed_mask_slots(...)``, which no row can overflow.
    """
    _check_loader_arguments(micro_batch_size, rank, world_size, max_sequences_per_pack, packed_data)
    path, split = _resolve_split(data_dir_or_split, split)
    info = read_metadata(path)
    if sequence_length != info.sequence_length:
        raise ValueError(
            f"sequence_length {sequence_length} does not match the prepared data {path}, which has sequence "
            f"length {info.sequence_length}; set sequence_length to {info.sequence_length} or prepare the data "
            f"again at {sequence_length} in another folder"
        )
    if next_sentence_prediction and not info.next_sentence_prediction:
        raise ValueError(
            f"next_sentence_prediction is on, but {path} was prepared without next-sentence pairs; switch it "
            "off or prepare the data again with next-sentence prediction"
        )
    if not next_sentence_prediction and info.next_sentence_prediction:
        logger.info("next-sentence prediction is off: the pairs of %s are used with labels -100", path)

    source = ShardedSequences(path, split)
    if len(source) == 0:
        if split == "train":
            raise ValueError(f"the train split of {path} contains no sequences; prepare it with more documents")
        # validation_fraction 0 leaves the validation split empty, so its loader yields nothing.
        logger.warning("the validation split of %s is empty (prepared with validation_fraction 0)", path)
    vocab = read_vocab_file(info.vocab_file)
    if len(vocab) != info.vocab_size:
        raise ValueError(f"{info.vocab_file} has {len(vocab)} entries, but metadata.json records {info.vocab_size}; prepare the data again")
    ids = info.special_token_ids
    masking = MaskingSettings.from_vocab(
        vocab,
        mask_tokens=mask_tokens,
        mlm_probability=mlm_probability,
        special_ids=list(ids.values()),
        mask_id=ids["mask"],
        whole_word_masking=whole_word_masking,
        subword_prefix=info.metadata["tokenizer"].get("subword_prefix", "##"),
    )
    shuffle = (split == "train") if shuffle is None else shuffle
    planner = EpochPlanner(
        source.lengths,
        seed=seed,
        shuffle=shuffle,
        packed=packed_data,
        sequence_length=sequence_length,
        max_sequences_per_pack=max_sequences_per_pack,
        micro_batch_size=micro_batch_size,
        rank=rank,
        world_size=world_size,
        drop_last=drop_last,
    )
    if planner.batches_per_epoch == 0 and len(source) > 0:
        raise ValueError(
            f"the {split} split of {path} gives {planner.total_rows} rows, fewer than one micro-batch of "
            f"{micro_batch_size} per rank for {world_size} rank(s); lower training.micro_batch_size or prepare more data"
        )
    sequences_per_row = max_sequences_per_pack if packed_data else 1
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
    efficiency = planner.plan.efficiency if planner.plan is not None else padding_efficiency(source.lengths, sequence_length)
    left_out = planner.dropped_rows
    if drop_last:
        left_out += (planner.rows_per_rank % micro_batch_size) * world_size
    logger.info(
        "%s split of %s: %d sequences in %d rows (%s, efficiency %.1f%%); %d batches of %d per epoch on rank %d of %d%s",
        split, path, len(source), planner.total_rows,
        f"packed up to {max_sequences_per_pack} per row" if packed_data else "one per row",
        100 * efficiency, planner.batches_per_epoch, micro_batch_size, rank, world_size,
        f"; {left_out} rows per epoch are left out (equal shares per rank, whole batches)" if left_out else "",
    )
    return PretrainingDataLoader(
        assembler, planner, num_workers=num_workers, repeat=repeat, prefetch_factor=prefetch_factor,
        description=f"{split} split of {path}",
    )

"""Host-side assembly of the combined batch that one PopTorch call consumes.

One call of a training model consumes device_iterations x gradient_accumulation x replicas
micro-batches, concatenated along the first dimension. PopART reads that combined batch as
[device_iterations, gradient_accumulation, replicas, micro_batch, ...] (PopART user guide,
glossary "Input data shape"). So the micro-batches of one optimizer step (one device iteration)
are contiguous rows. Within a step, the order of micro-batches does not change the gradient.

The loss weights make an IPU step compute the loss the host computes. That loss is the MLM loss
summed over the step's masked tokens divided by their number, plus the NSP loss summed over its
labelled sequences divided by theirs. The counts include every micro-batch of every replica of
every instance. PopTorch averages gradients over micro-batches and replicas, so each
micro-batch's summed loss is multiplied by accumulation x replicas / count.

Training feeds these combined batches through `poptorch.DataLoader`, which batches
micro_batch_size x device_iterations x replicas x accumulation consecutive rows of an
IterableDataset into one call's input. So `CombinedBatchRows` yields each call's combined batch
row by row, with its step's local token counts. `with_loss_weights` turns those counts into loss
weights in the training process, because only there can the other PopRun instances' counts be summed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import IterableDataset

from ..config import RunConfig
from ..trainer import Batch

IGNORE_INDEX = -100
LOSS_WEIGHT_KEYS = ("mlm_loss_weight", "nsp_loss_weight")
# Per-row local [masked tokens, labelled sequences] of the row's step, replaced by loss weights.
STEP_COUNT_KEYS = ("mlm_step_count", "nsp_step_count")


def popart_order(windows: list[list[Batch]], replicas: int, accumulation: int) -> list[Batch]:
    """Order the micro-batches of consecutive steps as PopART reads them: step, accumulation, replica.

    Each window is one step's micro-batches in `MicroBatchStream` order: replica by replica, and
    within a replica `accumulation` micro-batches in a row.
    """
    ordered = []
    for step, window in enumerate(windows):
        if len(window) != replicas * accumulation:
            raise ValueError(
                f"step {step} has {len(window)} micro-batches, expected {replicas} replicas x {accumulation} "
                f"accumulated = {replicas * accumulation}"
            )
        for index in range(accumulation):
            for replica in range(replicas):
                ordered.append(window[replica * accumulation + index])
    return ordered


def concatenate(micro_batches: list[Batch]) -> Batch:
    """Concatenate micro-batches of identical keys and shapes along the first dimension."""
    first = micro_batches[0]
    for position, batch in enumerate(micro_batches[1:], start=1):
        if batch.keys() != first.keys():
            raise ValueError(
                f"micro-batch {position} has keys {sorted(batch)}, micro-batch 0 has {sorted(first)}; PopTorch "
                f"compiles one set of inputs, so every micro-batch needs the same keys"
            )
        for key, value in batch.items():
            if value.shape != first[key].shape:
                raise ValueError(
                    f"micro-batch {position} has {key} of shape {tuple(value.shape)}, micro-batch 0 has "
                    f"{tuple(first[key].shape)}; the IPU needs fixed shapes, so the data loader must drop "
                    f"the last incomplete batch"
                )
    return {key: torch.cat([batch[key] for batch in micro_batches]) for key in first}


def token_counts(window: list[Batch]) -> np.ndarray:
    """Return [masked tokens, labelled next-sentence sequences] of one step's micro-batches."""
    masked = sum(int((batch["masked_lm_labels"] != IGNORE_INDEX).sum()) for batch in window)
    sequences = sum(int((batch["next_sentence_labels"] != IGNORE_INDEX).sum()) for batch in window)
    return np.array([masked, sequences], dtype=np.float64)


def loss_weights(global_counts: np.ndarray, accumulation: int, total_replicas: int) -> np.ndarray:
    """Return each step's [MLM, NSP] loss weights from its counts over all instances ([steps, 2])."""
    return accumulation * total_replicas / np.maximum(np.asarray(global_counts, dtype=np.float64), 1.0)


def combined_training_batch(
    windows: list[list[Batch]], weights: np.ndarray, replicas: int, accumulation: int
) -> Batch:
    """Return the combined batch of one call, with the per-row loss weights of each row's step."""
    combined = concatenate(popart_order(windows, replicas, accumulation))
    return _per_step_columns(combined, LOSS_WEIGHT_KEYS, torch.as_tensor(weights, dtype=torch.float32))


def _per_step_columns(combined: Batch, keys: tuple[str, str], per_step: torch.Tensor) -> Batch:
    """Add `keys[i]` to `combined`: column i of `per_step` ([steps, 2]) repeated on each row of its step."""
    rows = next(iter(combined.values())).shape[0]
    rows_per_step = rows // per_step.shape[0]
    for column, key in enumerate(keys):
        combined[key] = per_step[:, column].repeat_interleave(rows_per_step)
    return combined


def combined_rows_with_counts(windows: list[list[Batch]], replicas: int, accumulation: int) -> Batch:
    """Return the combined batch of one call with each row's step's local counts (`STEP_COUNT_KEYS`), no weights."""
    combined = concatenate(popart_order(windows, replicas, accumulation))
    counts = torch.as_tensor(np.stack([token_counts(window) for window in windows]), dtype=torch.float64)
    return _per_step_columns(combined, STEP_COUNT_KEYS, counts)


def with_loss_weights(
    batch: Batch, sum_over_instances: Callable[[np.ndarray], np.ndarray], *, device_iterations: int,
    accumulation: int, total_replicas: int,
) -> Batch:
    """Replace the step counts of a combined batch from `CombinedBatchRows` by the steps' loss weights.

    `sum_over_instances` sums the [steps, 2] local counts over all PopRun instances. The counts
    must be constant within each step's rows. Otherwise the loader reordered or mixed rows (for
    example several DataLoader workers each iterating the dataset), and a ValueError is raised.
    """
    missing = [key for key in STEP_COUNT_KEYS if key not in batch]
    if missing:
        raise ValueError(f"the combined batch has no {missing}; it must come from CombinedBatchRows")
    batch = dict(batch)
    counts = torch.stack([batch.pop(key).double() for key in STEP_COUNT_KEYS], dim=1)  # [rows, 2]
    rows = counts.shape[0]
    if rows % device_iterations:
        raise ValueError(f"the combined batch has {rows} rows, not a multiple of {device_iterations} device iterations")
    per_step = counts.reshape(device_iterations, rows // device_iterations, 2)
    if not torch.equal(per_step, per_step[:, :1].expand_as(per_step)):
        raise ValueError(
            "the rows of one step carry different token counts, so the DataLoader mixed rows of different steps; "
            "poptorch.DataLoader must read CombinedBatchRows with num_workers=0 and no shuffling"
        )
    weights = loss_weights(sum_over_instances(per_step[:, 0].numpy()), accumulation, total_replicas)
    return _per_step_columns(batch, LOSS_WEIGHT_KEYS, torch.as_tensor(weights, dtype=torch.float32))


def advance_loader_state(state: dict, batches: int) -> dict:
    """Return a loader `state_dict()` moved on by `batches` batches, across epochs as the loader moves.

    The position after a number of completed steps is computed from the step count rather than
    read from the loaders, whose data the DataLoader has already read ahead.
    """
    per_epoch = int(state["batches_per_epoch"])
    if per_epoch < 1 or batches < 0:
        raise ValueError(f"cannot advance a loader with {per_epoch} batches per epoch by {batches} batches")
    epoch, consumed = divmod(int(state["epoch"]) * per_epoch + int(state["batches_consumed"]) + batches, per_epoch)
    return {**state, "epoch": epoch, "batches_consumed": consumed}


@dataclass(frozen=True)
class ReplicaLoaders:
    """What rebuilds this process's per-replica training loaders at given positions, small enough to pickle.

    poptorch.DataLoader's asynchronous mode iterates the dataset in a worker process that it
    starts with `spawn`, so the dataset is pickled. The loaders themselves may reference whole
    memory-mapped corpora, which pickling would copy, so the worker rebuilds them instead.
    """

    config: RunConfig
    data_dir: Path | None  # None: generated data
    replicas: tuple[int, ...]  # global replica indices read by this process
    total_replicas: int
    states: tuple[dict, ...]  # each loader's position to start from

    def stream(self):
        from ..pretraining import MicroBatchStream, training_loader

        loaders = [training_loader(self.config, self.data_dir, replica, self.total_replicas) for replica in self.replicas]
        stream = MicroBatchStream(loaders, self.config.training.gradient_accumulation)
        stream.load_state_dict(list(self.states))
        return stream


class CombinedBatchRows(IterableDataset):
    """The rows of consecutive calls' combined batches, in the order poptorch.DataLoader batches them.

    Each call's rows are `combined_rows_with_counts` of `device_iterations` windows drawn from
    the loaders that `loaders` rebuilds, so a call receives exactly the micro-batches a host run
    reads for those steps. Iteration never ends: the loaders repeat their epochs.
    """

    def __init__(self, loaders: ReplicaLoaders, *, device_iterations: int):
        super().__init__()
        self.loaders = loaders
        self.device_iterations = device_iterations

    def __iter__(self) -> Iterator[Batch]:
        from ..pretraining import model_inputs

        stream = self.loaders.stream()
        replicas = len(self.loaders.replicas)
        while True:
            windows = [[model_inputs(batch) for batch in stream.next_window()] for _ in range(self.device_iterations)]
            combined = combined_rows_with_counts(windows, replicas, stream.accumulation)
            rows = next(iter(combined.values())).shape[0]
            for row in range(rows):
                yield {key: value[row] for key, value in combined.items()}


def neutral_micro_batch(batch: Batch) -> Batch:
    """Return a copy of `batch` with every label ignored, so it adds nothing to sums, counts or gradients.

    Used to fill the last call of an evaluation to whole device iterations instead of dropping data.
    """
    neutral = {key: value.clone() for key, value in batch.items()}
    for key in ("masked_lm_labels", "next_sentence_labels"):
        neutral[key] = torch.full_like(batch[key], IGNORE_INDEX)
    return neutral

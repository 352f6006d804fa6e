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
"""

from __future__ import annotations

import numpy as np
import torch

from ..trainer import Batch

IGNORE_INDEX = -100
LOSS_WEIGHT_KEYS = ("mlm_loss_weight", "nsp_loss_weight")


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
    rows = next(iter(combined.values())).shape[0]
    rows_per_step = rows // len(windows)
    for column, key in enumerate(LOSS_WEIGHT_KEYS):
        per_step = torch.as_tensor(weights[:, column], dtype=torch.float32)
        combined[key] = per_step.repeat_interleave(rows_per_step)
    return combined


def neutral_micro_batch(batch: Batch) -> Batch:
    """Return a copy of `batch` with every label ignored, so it adds nothing to sums, counts or gradients.

    Used to fill the last call of an evaluation to whole device iterations instead of dropping data.
    """
    neutral = {key: value.clone() for key, value in batch.items()}
    for key in ("masked_lm_labels", "next_sentence_labels"):
        neutral[key] = torch.full_like(batch[key], IGNORE_INDEX)
    return neutral
